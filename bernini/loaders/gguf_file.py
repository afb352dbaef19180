"""GGUF experts (Q8_0, Q6_K, Q5_K(_M), Q4_K(_M), …) through the ``gguf`` package and diffusers' GGUF layers.

The file is memory-mapped by ``gguf.GGUFReader``; quantised linear weights become diffusers
``GGUFParameter`` tensors inside ``GGUFLinear`` layers, which dequantise one layer per forward, so they
stay in their stored blocks (backed by the mapping) until used. Names are the original Wan ones of the
community files (or diffusers names). ComfyUI-GGUF's ``comfy.gguf.orig_shape.<name>`` rule (a tensor
flattened to rows of 256 so that it quantises) is undone; such tensors are dequantised at load.

A LoRA's low-rank pairs stay beside a GGUF layer (:class:`LoraGGUFLinear`: ``y = W·x + B·(A·x)``, exact for
every GGUF type; ``gguf`` cannot re-quantise the K-quants); full deltas on a GGUF weight are refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.quantizers.gguf.utils import GGUFLinear

from ..errors import BerniniError, WeightsError
from .expert_weights import few, place_weight
from .wan_keys import diffusers_to_native, is_native, native_to_diffusers

ORIG_SHAPE = "comfy.gguf.orig_shape."
WRITABLE = ("F32", "F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")


def _gguf():
    try:
        import gguf
    except ImportError:
        raise WeightsError("GGUF files need the gguf package: pip install gguf") from None
    return gguf


class LoraGGUFLinear(GGUFLinear):
    """diffusers' ``GGUFLinear`` plus the low-rank LoRA pairs merged into it (``lora_up`` × ``lora_down``, the
    scale folded into ``lora_up``), added to the quantised layer's output at each forward."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("lora_up", None, persistent=False)
        self.register_buffer("lora_down", None, persistent=False)

    def merge_low_rank(self, up: torch.Tensor, down: torch.Tensor) -> None:
        dtype = self.compute_dtype or torch.float32
        up, down = up.to(self.weight.device, dtype), down.to(self.weight.device, dtype)
        if self.lora_up is not None:
            up, down = torch.cat([self.lora_up, up], dim=1), torch.cat([self.lora_down, down], dim=0)
        self.lora_up, self.lora_down = up, down

    def merge_delta(self, delta: torch.Tensor) -> None:
        raise BerniniError(
            f"a full-rank LoRA delta (.diff) cannot be merged into a GGUF {self.weight.quant_type.name} weight; "
            "load the safetensors checkpoint for this LoRA (with --quantize fp8 or int8 to save memory)"
        )

    def low_rank_weight(self) -> torch.Tensor | None:
        """The float32 ``up @ down`` the LoRA pairs add to the weight (None without any)."""
        return None if self.lora_up is None else self.lora_up.float() @ self.lora_down.float()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        output = super().forward(inputs)
        if self.lora_up is None:
            return output
        dtype = output.dtype
        return output + F.linear(F.linear(inputs.to(dtype), self.lora_down.to(dtype)), self.lora_up.to(dtype))


def _orig_shapes(reader) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for key, field in reader.fields.items():
        if key.startswith(ORIG_SHAPE):
            shapes[key[len(ORIG_SHAPE) :]] = tuple(int(field.parts[i][0]) for i in field.data)
    return shapes


def _as_torch(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # a read-only memory map: weights are never written in place
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def load_gguf_expert(model: torch.nn.Module, path: Path, *, expert: str, dtype: torch.dtype) -> None:
    """Fill a meta-device expert from one GGUF file."""
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES, GGUFParameter

    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError, IndexError) as exc:
        raise WeightsError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    dense_types = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16}
    orig = _orig_shapes(reader)
    native = is_native([t.name for t in reader.tensors])
    model_keys = set(model.state_dict().keys())
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    seen, unexpected = set(), []
    for tensor in reader.tensors:
        name = native_to_diffusers(tensor.name) if native else tensor.name
        if name not in model_keys:
            unexpected.append(tensor.name)
            continue
        qtype = tensor.tensor_type
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        expected = shapes[name]
        if qtype not in dense_types and qtype not in SUPPORTED_GGUF_QUANT_TYPES:
            raise WeightsError(f"{path.name}: tensor {tensor.name} has GGUF type {qtype.name}, which is not supported")
        if (
            qtype in dense_types
            or tensor.name in orig
            or not (isinstance(module, torch.nn.Linear) and attr == "weight")
        ):
            if qtype == gguf.GGMLQuantizationType.BF16:
                value = _as_torch(np.asarray(tensor.data).view(np.int16)).view(torch.bfloat16).float()
            elif qtype in dense_types:
                value = _as_torch(np.asarray(tensor.data))
            else:
                value = torch.from_numpy(gguf.quants.dequantize(np.asarray(tensor.data), qtype))
            value = value.reshape(orig.get(tensor.name, expected))
            if tuple(value.shape) != expected:
                raise WeightsError(
                    f"{expert} tensor {name} in {path.name} has shape {tuple(value.shape)}, expected {expected}"
                )
            place_weight(model, name, value, dtype=dtype)
        else:
            weight = GGUFParameter(_as_torch(np.asarray(tensor.data)), quant_type=qtype)
            if tuple(weight.quant_shape) != expected:
                raise WeightsError(
                    f"{expert} tensor {name} in {path.name} has shape {tuple(weight.quant_shape)}, expected {expected}"
                )
            layer = LoraGGUFLinear(
                module.in_features, module.out_features, module.bias is not None, compute_dtype=dtype
            )
            layer.weight = weight
            layer.bias = module.bias
            parent, _, child = module_name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer)
        seen.add(name)
    missing = sorted(model_keys - seen)
    if missing:
        raise WeightsError(f"{expert} weights in {path} are missing {len(missing)} tensors: {few(missing)}")
    if unexpected:
        raise WeightsError(f"{expert} weights in {path} have {len(unexpected)} unexpected tensors: {few(unexpected)}")


def write_gguf(state: dict[str, torch.Tensor], path: Path, qtype_name: str = "Q8_0") -> None:
    """Write diffusers-named tensors as a GGUF with original Wan names: block linears in ``qtype_name``
    (what the ``gguf`` package can quantise: Q8_0, Q5_0/1, Q4_0/1, F16, BF16), the rest F32.

    K-quants (Q6_K, Q5_K_M, Q4_K_M) are read but not written: ``gguf`` has no quantiser for them."""
    gguf = _gguf()
    if qtype_name not in WRITABLE:
        raise WeightsError(f"cannot write GGUF type {qtype_name!r}; choose one of: {', '.join(WRITABLE)}")
    qtype = gguf.GGMLQuantizationType[qtype_name]
    writer = gguf.GGUFWriter(str(path), arch="wan")
    scales = {k[: -len("weight_scale")] + "weight": v for k, v in state.items() if k.endswith(".weight_scale")}
    for key, value in state.items():
        if key.endswith(".weight_scale"):
            continue
        dense = value.float() * scales[key][:, None] if key in scales else value.float()
        name = diffusers_to_native(key)
        array = dense.numpy()
        block_size = gguf.GGML_QUANT_SIZES[qtype][0]
        if key.startswith("blocks.") and dense.dim() == 2 and array.shape[-1] % block_size == 0:
            data = gguf.quants.quantize(array, qtype)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
