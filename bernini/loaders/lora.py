"""LoRAs merged into an expert's weights: every published Wan 2.1/2.2 key format, a scale per file.

A file's low-rank pairs go through diffusers' own Wan LoRA key conversion
(``WanLoraLoaderMixin.lora_state_dict``: diffusers/PEFT ``transformer.…lora_A/B``, ComfyUI
``diffusion_model.…lora_down/up`` with ``alpha``, kohya/musubi ``lora_unet_…``), which folds
``alpha / rank`` into the pair. The full deltas (``.diff`` on weights, norms and the output head,
``.diff_b`` on biases, as the lightx2v distillation LoRAs carry them) are read here, since diffusers drops
the norm ones; their Wan names are renamed with diffusers' Wan checkpoint conversion. As in ComfyUI, the
scale multiplies every delta: ``W += scale · (B·A)``, ``W += scale · diff``, ``b += scale · diff_b``.

kohya/musubi files (``lora_unet_blocks_0_self_attn_q``) are renamed to the original Wan names from the
model's own modules first, so a file covering only some layers loads those (diffusers' musubi conversion
expects every layer of every block). A PEFT file's ``lora_alpha`` / ``r`` (``adapter_config.json`` beside
it, or diffusers' ``lora_adapter_metadata`` in the safetensors header) becomes the pairs' ``alpha``, so the
scale is PEFT's ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``).

Merging goes through :func:`add_delta`: a quantised linear defines ``merge_delta(delta)`` (fp8 / int8:
dequantise, add, quantise again) and may keep low-rank pairs beside itself with ``merge_low_rank(up, down)``
(GGUF); plain parameters get the delta added in fp32.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import BerniniError
from .wan_keys import diffusers_to_native

EXPERTS = ("high", "low", "both")
FULL_DELTAS = (".diff", ".diff_b")
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "base_model.model.")
KOHYA_PREFIX = "lora_unet_"
PEFT_METADATA = "lora_adapter_metadata"  # diffusers' safetensors metadata key for the LoRA config


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA file, the expert(s) it applies to and its scale."""

    path: str
    expert: str = "both"
    scale: float = 1.0
    sha256: str | None = None  # of the file as merged (set when it is loaded)

    @classmethod
    def parse(cls, value: str, expert: str = "both") -> LoraSpec:
        """``PATH`` or ``PATH:SCALE`` (a path that itself holds ``:`` keeps it unless the tail is a number)."""
        path, scale = value, 1.0
        head, sep, tail = value.rpartition(":")
        if sep and head:
            try:
                path, scale = head, float(tail)
            except ValueError:
                if not Path(value).expanduser().is_file() and Path(head).expanduser().is_file():
                    raise BerniniError(
                        f"LoRA scale {tail!r} in {value} is not a number; pass PATH or PATH:SCALE (e.g. {head}:0.8)"
                    ) from None
                path, scale = value, 1.0
        return cls(path, expert, scale).checked()

    def checked(self) -> LoraSpec:
        if self.expert not in EXPERTS:
            raise BerniniError(f"LoRA expert must be one of {', '.join(EXPERTS)}, got {self.expert!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise BerniniError(f"LoRA scale must be a finite number, got {self.scale!r}")
        path = Path(self.path).expanduser()
        if not path.is_file():
            raise BerniniError(f"LoRA file {path} not found")
        return self

    def hashed(self) -> LoraSpec:
        """This spec with the file's current sha256."""
        return replace(self, sha256=file_sha256(self.path))

    def describe(self) -> dict[str, object]:
        absolute = str(Path(self.path).expanduser().absolute())
        return {
            "path": str(self.path),
            "absolute": absolute,
            "expert": self.expert,
            "scale": self.scale,
            "sha256": self.sha256,
        }


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class LowRank:
    """A delta kept as its factors: ``(up @ down) · factor · scale`` (``[out, r] @ [r, in]``; ``factor`` is the
    file's ``alpha / rank``, ``scale`` the user's)."""

    up: torch.Tensor
    down: torch.Tensor
    factor: float = 1.0
    scale: float = 1.0

    def dense(self) -> torch.Tensor:
        return (self.up.float() @ self.down.float()) * self.factor * self.scale

    def scaled_up(self) -> torch.Tensor:
        """``up`` with both factors folded in, for a layer that keeps the pair beside it."""
        return self.up.float() * (self.factor * self.scale)

    def __mul__(self, scale: float) -> LowRank:
        return replace(self, scale=self.scale * scale)


def read_lora(path: str | Path) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors, a PEFT file's ``lora_alpha`` (from its config) added as per-pair ``alpha`` tensors."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        state_dict = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise BerniniError(f"cannot read LoRA file {path}: {str(exc).splitlines()[0]}") from None
    config = _peft_config(Path(path), metadata)
    if config is not None:
        state_dict.update(_peft_alphas(state_dict, config, path))
    return state_dict


def _peft_config(path: Path, metadata: Mapping[str, str]) -> dict | None:
    """PEFT's LoRA config of a file: ``adapter_config.json`` beside it, else diffusers' metadata in its header."""
    beside = path.expanduser().parent / "adapter_config.json"
    try:
        if beside.is_file():
            config = json.loads(beside.read_text(encoding="utf-8"))
        elif PEFT_METADATA in metadata:
            config = json.loads(metadata[PEFT_METADATA])
        else:
            return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BerniniError(f"cannot read the PEFT config of LoRA file {path}: {exc}") from None
    if not isinstance(config, dict):
        raise BerniniError(f"the PEFT config of LoRA file {path} is not a JSON object")
    # diffusers prefixes each component's settings (``transformer.lora_alpha``)
    return {key.removeprefix("transformer."): value for key, value in config.items()}


def _peft_alphas(state_dict: Mapping[str, torch.Tensor], config: dict, path: str | Path) -> dict[str, torch.Tensor]:
    """``<module>.alpha`` for each PEFT pair without one, so that ``alpha / rank`` is PEFT's scaling."""
    suffix = ".lora_A.weight"
    alpha, patterns = config.get("lora_alpha"), config.get("alpha_pattern") or {}
    if alpha is None and not patterns:
        return {}
    out = {}
    for key, down in state_dict.items():
        module = key[: -len(suffix)] if key.endswith(suffix) else None
        if module is None or f"{module}.alpha" in state_dict:
            continue
        bare = _strip_prefix(module)
        value = next((v for p, v in patterns.items() if re.fullmatch(rf"(?:.*\.)?(?:{p})", bare)), alpha)
        rank = down.shape[0]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise BerniniError(f"the PEFT config of LoRA file {path} has lora_alpha {value!r}, not a number")
        # rsLoRA scales by alpha / sqrt(r): the same as an alpha of alpha * sqrt(r) over r
        out[f"{module}.alpha"] = torch.tensor(float(value) * (math.sqrt(rank) if config.get("use_rslora") else 1.0))
    return out


def _wan_to_diffusers(names: Iterable[str]) -> dict[str, str]:
    """Wan / diffusers parameter names → diffusers names, through diffusers' Wan checkpoint conversion."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    probe = {name: torch.empty(0) for name in names}
    renamed = convert_wan_transformer_to_diffusers({k: v for k, v in probe.items()})
    by_tensor = {id(tensor): new for new, tensor in renamed.items()}
    return {name: by_tensor[id(tensor)] for name, tensor in probe.items()}


def _strip_prefix(key: str) -> str:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _kohya_to_wan(
    state_dict: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """kohya/musubi keys (``lora_unet_blocks_0_self_attn_q.lora_down.weight``) renamed to the original Wan names
    (``diffusion_model.blocks.0.self_attn.q.lora_down.weight``) of the model's modules, and the keys that name
    none of them."""
    modules = {}
    for name in params:
        native = diffusers_to_native(name.rpartition(".")[0])
        if native is not None:
            modules[KOHYA_PREFIX + native.replace(".", "_")] = native
    renamed, unknown = {}, []
    for key, value in state_dict.items():
        stem, _, rest = key.partition(".")
        if not key.startswith(KOHYA_PREFIX):
            renamed[key] = value
        elif stem in modules:
            renamed[f"diffusion_model.{modules[stem]}.{rest}"] = value
        else:
            unknown.append(key)
    return renamed, unknown


def _shape(param: torch.Tensor) -> tuple[int, ...]:
    return tuple(getattr(param, "quant_shape", param.shape))  # a GGUF weight's logical shape, not its blocks'


def dense(delta: torch.Tensor | LowRank) -> torch.Tensor:
    return delta.dense() if isinstance(delta, LowRank) else delta.float()


def lora_deltas(
    state_dict: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor | LowRank]:
    """Unscaled deltas keyed by the expert's parameter names (linear weights' pairs as :class:`LowRank`, the rest
    dense fp32); ``params`` is its ``named_parameters``."""
    state_dict, unknown = _kohya_to_wan(state_dict, params)
    full = {k: v for k, v in state_dict.items() if k.endswith(FULL_DELTAS)}
    low_rank = {k: v for k, v in state_dict.items() if k not in full}
    deltas: dict[str, torch.Tensor | LowRank] = {}

    def add(name: str, delta: torch.Tensor | LowRank, key: str) -> None:
        if name not in params:
            unknown.append(key)
            return
        shape = (delta.up.shape[0], delta.down.shape[1]) if isinstance(delta, LowRank) else tuple(delta.shape)
        if shape != _shape(params[name]):
            raise BerniniError(
                f"LoRA key {key} has shape {shape} but {name} is {_shape(params[name])}: the LoRA is for another model"
            )
        deltas[name] = delta if name not in deltas else dense(deltas[name]) + dense(delta)

    if low_rank:
        from diffusers.loaders import WanLoraLoaderMixin

        try:
            # diffusers scales some tensors in place: hand it copies, the caller's dict is merged per expert
            converted = WanLoraLoaderMixin.lora_state_dict({k: v.clone() for k, v in low_rank.items()})
        except (KeyError, ValueError, IndexError) as exc:
            raise BerniniError(f"unrecognised LoRA key layout ({type(exc).__name__}: {exc})") from None
        converted = {_strip_prefix(k): v for k, v in converted.items()}
        for key, down in converted.items():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key[: -len(".lora_A.weight")]
            up = converted.get(f"{module}.lora_B.weight")
            if up is None:
                raise BerniniError(f"LoRA key {module}.lora_A has no lora_B partner")
            factor = 1.0
            alpha = converted.get(f"{module}.alpha")
            if alpha is not None:
                factor = float(alpha) / down.shape[0]
            pair = LowRank(up.float().flatten(1), down.float().flatten(1), factor)
            target = params.get(f"{module}.weight")
            size = pair.up.shape[0] * pair.down.shape[1]
            if target is not None and len(_shape(target)) != 2 and target.numel() == size:
                add(f"{module}.weight", pair.dense().reshape(target.shape), key)  # a conv weight's, flattened
            else:
                add(f"{module}.weight", pair, key)
            bias = converted.get(f"{module}.lora_B.bias")
            if bias is not None:
                add(f"{module}.bias", bias, f"{module}.lora_B.bias")
        leftovers = [
            k for k in converted if not k.endswith((".lora_A.weight", ".lora_B.weight", ".lora_B.bias", ".alpha"))
        ]
        unknown += leftovers

    names: dict[str, str] = {}
    for key in full:
        stem = _strip_prefix(key).rsplit(".", 1)[0]
        names[key] = f"{stem}.bias" if key.endswith(".diff_b") else stem
    renamed = _wan_to_diffusers([f"{n}.weight" for n in names.values()] + list(names.values()))
    for key, name in names.items():
        if key.endswith(".diff"):
            weight = renamed[f"{name}.weight"]
            target = weight if weight in params else renamed[name]  # a module's weight or a bare parameter
        else:
            target = renamed[name]
        add(target, full[key], key)
    if unknown:
        more = f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise BerniniError(f"LoRA keys match no weight of this model: {', '.join(unknown[:3])}{more}")
    if not deltas:
        raise BerniniError("the LoRA file holds no LoRA weights")
    return deltas


def add_delta(model: torch.nn.Module, name: str, delta: torch.Tensor | LowRank) -> None:
    """``parameter += delta`` computed in fp32; a quantised linear's weight through its own ``merge_low_rank``
    (pairs kept beside it) or ``merge_delta`` (dequantise, add, quantise again)."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if attr == "weight" and isinstance(delta, LowRank) and hasattr(module, "merge_low_rank"):
        module.merge_low_rank(delta.scaled_up(), delta.down)
        return
    if attr == "weight" and hasattr(module, "merge_delta"):
        module.merge_delta(dense(delta))
        return
    param = getattr(module, attr)
    with torch.no_grad():
        merged = param.data.float() + dense(delta).to(param.device)
        param.data.copy_(merged.to(param.dtype))


def merge_lora(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], scale: float) -> int:
    """Merge ``scale`` × every delta of a LoRA state dict into ``model``; returns how many tensors changed."""
    params = dict(model.named_parameters())
    deltas = lora_deltas(state_dict, params)
    for name, delta in deltas.items():
        add_delta(model, name, delta * scale)
    return len(deltas)
