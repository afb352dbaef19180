"""LoRAs merged into an expert's weights: every published Wan 2.1/2.2 key format, a scale per file.

A file's low-rank pairs go through diffusers' own Wan LoRA key conversion
(``WanLoraLoaderMixin.lora_state_dict``: diffusers/PEFT ``transformer.…lora_A/B``, ComfyUI
``diffusion_model.…lora_down/up`` with ``alpha``, kohya/musubi ``lora_unet_…``), which folds
``alpha / rank`` into the pair. The full deltas (``.diff`` on weights, norms and the output head,
``.diff_b`` on biases, as the lightx2v distillation LoRAs carry them) are read here, since diffusers drops
the norm ones; their Wan names are renamed with diffusers' Wan checkpoint conversion. As in ComfyUI, the
scale multiplies every delta: ``W += scale · (B·A)``, ``W += scale · diff``, ``b += scale · diff_b``.

Merging goes through :func:`add_delta`: a module that stores its weight another way (a quantised linear)
plugs in by defining ``merge_delta(name, delta)``; plain parameters get the delta added in fp32.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import BerniniError

EXPERTS = ("high", "low", "both")
FULL_DELTAS = (".diff", ".diff_b")
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "base_model.model.")


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA file, the expert(s) it applies to and its scale."""

    path: str
    expert: str = "both"
    scale: float = 1.0

    @classmethod
    def parse(cls, value: str, expert: str = "both") -> LoraSpec:
        """``PATH`` or ``PATH:SCALE`` (a path that itself holds ``:`` keeps it unless the tail is a number)."""
        path, scale = value, 1.0
        head, sep, tail = value.rpartition(":")
        if sep and head:
            try:
                path, scale = head, float(tail)
            except ValueError:
                path, scale = value, 1.0
        return cls(path, expert, scale).checked()

    def checked(self) -> LoraSpec:
        if self.expert not in EXPERTS:
            raise BerniniError(f"LoRA expert must be one of {', '.join(EXPERTS)}, got {self.expert!r}")
        if not isinstance(self.scale, (int, float)) or self.scale != self.scale:
            raise BerniniError(f"LoRA scale must be a number, got {self.scale!r}")
        path = Path(self.path).expanduser()
        if not path.is_file():
            raise BerniniError(f"LoRA file {path} not found")
        return self

    def describe(self) -> dict[str, object]:
        return {"path": str(self.path), "expert": self.expert, "scale": self.scale}


def read_lora(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise BerniniError(f"cannot read LoRA file {path}: {str(exc).splitlines()[0]}") from None


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


def lora_deltas(state_dict: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Unscaled deltas (fp32) keyed by the expert's parameter names; ``params`` is its ``named_parameters``."""
    full = {k: v for k, v in state_dict.items() if k.endswith(FULL_DELTAS)}
    low_rank = {k: v for k, v in state_dict.items() if k not in full}
    deltas: dict[str, torch.Tensor] = {}
    unknown: list[str] = []

    def add(name: str, delta: torch.Tensor, key: str) -> None:
        if name not in params:
            unknown.append(key)
            return
        if tuple(delta.shape) != tuple(params[name].shape):
            raise BerniniError(
                f"LoRA key {key} has shape {tuple(delta.shape)} but {name} is {tuple(params[name].shape)}: "
                "the LoRA is for another model"
            )
        deltas[name] = deltas.get(name, 0) + delta.float()

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
            product = (up.float().flatten(1) @ down.float().flatten(1)) * factor
            target = params.get(f"{module}.weight")
            if target is not None and target.numel() == product.numel():
                product = product.reshape(target.shape)  # a conv weight's delta comes flattened
            add(f"{module}.weight", product, key)
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


def add_delta(model: torch.nn.Module, name: str, delta: torch.Tensor) -> None:
    """``parameter += delta`` computed in fp32, or the owning module's ``merge_delta`` when it has one."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    merge = getattr(module, "merge_delta", None)
    if merge is not None:
        merge(attr, delta)
        return
    param = getattr(module, attr)
    with torch.no_grad():
        merged = param.data.float() + delta.to(param.device, torch.float32)
        param.data.copy_(merged.to(param.dtype))


def merge_lora(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], scale: float) -> int:
    """Merge ``scale`` × every delta of a LoRA state dict into ``model``; returns how many tensors changed."""
    params = dict(model.named_parameters())
    deltas = lora_deltas(state_dict, params)
    for name, delta in deltas.items():
        add_delta(model, name, delta * scale)
    return len(deltas)
