"""Weight-only quantised linears: fp8 e4m3 and int8, one float32 scale per output channel.

A :class:`QuantLinear` keeps its weight as stored (fp8 or int8, 1 byte per value) with a ``weight_scale``
buffer ``[out]``; each forward dequantises that one layer's weight to the activation dtype for the
matmul, so nothing is upcast before it is used. The same tensors are the on-disk form: ``weight`` plus
``weight_scale`` in this project's bundles, ``scale_weight`` (often one value per tensor) in the Comfy /
Kijai files.

Why not torchao: with torch 2.13 on the CPU, installing torchao makes every ``import diffusers`` print
kernel-loading warnings (diffusers imports torchao when present), which breaks the one-line error
contract of every command; the weight-only math is a multiply and a cast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import BerniniError

QUANT_MODES = ("none", "fp8", "int8")
STORAGE_DTYPES = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}
QUANT_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2, torch.int8)
SCALE_SUFFIXES = ("weight_scale", "scale_weight")  # ours, Comfy/Kijai


def check_mode(mode: str | None) -> str:
    mode = mode or "none"
    if mode not in QUANT_MODES:
        raise BerniniError(f"unknown --quantize {mode!r}; choose one of: {', '.join(QUANT_MODES)}")
    return mode


def quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """The weights ``--quantize`` converts: every linear layer inside the transformer blocks.

    Embeddings, the time projection, modulation tables, norms and the output head stay in the compute
    dtype, as in the community's fp8 files."""
    return name.startswith("blocks.") and name.endswith(".weight") and len(shape) == 2


def quantize_rows(weight: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(stored weight, per-row float32 scale): symmetric absmax per output channel."""
    if mode not in STORAGE_DTYPES:
        raise BerniniError(f"cannot quantise to {mode!r}")
    high = weight.to(torch.float32)
    top = 448.0 if mode == "fp8" else 127.0  # e4m3 max / int8 max
    scale = high.abs().amax(dim=1).clamp(min=1e-12) / top
    scaled = high / scale[:, None]
    if mode == "int8":
        return scaled.round().clamp(-127, 127).to(torch.int8), scale
    return scaled.clamp(-top, top).to(torch.float8_e4m3fn), scale


def row_scale(scale: torch.Tensor | None, rows: int) -> torch.Tensor:
    """A stored scale (none, one per tensor, or one per row) as ``[rows]`` float32."""
    if scale is None:
        return torch.ones(rows)
    scale = scale.to(torch.float32).reshape(-1)
    if scale.numel() == 1:
        return scale.expand(rows).contiguous()
    if scale.numel() != rows:
        raise BerniniError(f"a weight scale of {scale.numel()} values does not fit a weight of {rows} rows")
    return scale.contiguous()


class QuantLinear(torch.nn.Linear):
    """``nn.Linear`` whose weight stays fp8 / int8; the layer's weight is dequantised at each forward."""

    def __init__(self, in_features: int, out_features: int, bias: bool, stored: torch.Tensor, scale: torch.Tensor):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = in_features, out_features
        self.weight = torch.nn.Parameter(stored, requires_grad=False)
        self.register_buffer("weight_scale", scale)
        self.bias = None
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(out_features, device="meta"), requires_grad=False)

    @property
    def mode(self) -> str:
        return "int8" if self.weight.dtype == torch.int8 else "fp8"

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized(x.dtype), bias)

    def merge_delta(self, delta: torch.Tensor) -> None:
        """``W += delta`` (a LoRA) on the weight the layer stands for: dequantised to float32, added, and quantised
        again in the layer's format with fresh per-row scales (one rounding of the exact sum; fp8 as e4m3)."""
        merged = self.dequantized(torch.float32) + delta.to(self.weight.device, torch.float32)
        stored, scale = quantize_rows(merged, self.mode)
        self.weight = torch.nn.Parameter(stored, requires_grad=False)
        self.weight_scale = scale.to(self.weight.device)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight={self.mode}"


def install(
    model: torch.nn.Module, name: str, stored: torch.Tensor, scale: torch.Tensor | None, device="cpu"
) -> QuantLinear:
    """Replace the ``nn.Linear`` owning weight ``name`` with a :class:`QuantLinear` holding ``stored``."""
    module_name = name.rpartition(".")[0]
    parent_name, _, child = module_name.rpartition(".")
    linear = model.get_submodule(module_name)
    quantized = QuantLinear(
        linear.in_features,
        linear.out_features,
        linear.bias is not None,
        stored.to(device),
        row_scale(scale, stored.shape[0]).to(device),
    )
    if linear.bias is not None:
        quantized.bias = linear.bias
    setattr(model.get_submodule(parent_name) if parent_name else model, child, quantized)
    return quantized


def dequantize_weight(module: torch.nn.Module) -> torch.Tensor:
    """The dense float32 weight a linear (quantised or not, GGUF included, LoRA pairs beside it added) stands for."""
    if isinstance(module, QuantLinear):
        return module.dequantized(torch.float32)
    weight = module.weight
    if getattr(weight, "quant_type", None) is not None:
        from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

        dense = dequantize_gguf_tensor(weight).to(torch.float32)
        low_rank = getattr(module, "low_rank_weight", lambda: None)()  # LoRA pairs kept beside the layer
        return dense if low_rank is None else dense + low_rank.to(dense.device)
    return weight.detach().to(torch.float32)


def dense_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter as the float32 tensor it stands for (quantised weights dequantised)."""
    out = {}
    for name, param in model.named_parameters():
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        out[name] = dequantize_weight(module) if attr == "weight" else param.detach().to(torch.float32)
    return out


def storage(model: torch.nn.Module) -> dict[str, int]:
    """How many of an expert's linear layers hold each weight format: ``fp8`` / ``int8`` (QuantLinear),
    ``gguf Q8_0`` and the other GGUF types, or a dense dtype (``bf16``, ``fp32``)."""
    kinds: dict[str, int] = {}
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        quant_type = getattr(module.weight, "quant_type", None)
        if isinstance(module, QuantLinear):
            kind = module.mode
        elif quant_type is not None:
            kind = f"gguf {quant_type.name}"
        else:
            kind = str(module.weight.dtype).removeprefix("torch.").replace("bfloat16", "bf16").replace("float", "fp")
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def effective_mode(requested: str, storages: list[dict[str, int]]) -> str:
    """The ``--quantize`` mode the experts ran in: the one requested, else that of a pre-quantised checkpoint
    (the one fp8 / int8 format of every expert's quantised linears), else ``none``."""
    if requested != "none":
        return requested
    modes = {tuple(k for k in kinds if k in STORAGE_DTYPES) for kinds in storages}
    return modes.pop()[0] if len(modes) == 1 and len(next(iter(modes))) == 1 else "none"


def stored_bytes(model: torch.nn.Module) -> int:
    """Bytes the weights occupy as held (quantised data and scales included)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
