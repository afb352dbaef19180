"""Which stored tensor fills which parameter, for every safetensors layout of an expert.

* diffusers names (a bundle's ``transformer/``, this project's pre-quantised bundles with ``weight_scale``);
* upstream's separate checkpoints: ``[ema.]diff_dec.transformer[_2].`` / ``transformer[_2].`` / bare, EMA
  preferred;
* the original Wan names of the community's single files (Comfy-Org fp16 / ``fp8_scaled`` with the
  ``scaled_fp8`` marker and ``.scale_weight`` tensors, Kijai's fp8 ``scaled`` files, the 1.3B file), with
  or without Comfy's ``model.diffusion_model.`` prefix (:mod:`bernini.loaders.wan_keys`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .quant import SCALE_SUFFIXES
from .safetensors_stream import TensorEntry
from .wan_keys import is_native, native_to_diffusers

EXPERT_PREFIXES = {
    "transformer": ("diff_dec.transformer.", "transformer.", ""),
    "transformer_2": ("diff_dec.transformer_2.", "transformer_2.", ""),
}
IGNORED_KEYS = ("norm_added_q",)
MARKERS = ("scaled_fp8",)  # Comfy's marker: an empty tensor whose dtype names the fp8 format
IGNORED_SUFFIXES = (".scale_input",)  # Comfy's activation scales for fp8 matmuls; weight-only use ignores them


@dataclass(frozen=True)
class Stored:
    """One parameter's stored tensor and, for fp8 / int8 weights, its scale."""

    entry: TensorEntry
    scale: TensorEntry | None = None


@dataclass
class LayoutMatch:
    mapping: dict[str, Stored]
    unexpected: list[str]
    layout: str  # "diffusers", "separate", "native"


def _scale_target(key: str) -> str | None:
    for suffix in SCALE_SUFFIXES:
        if key.endswith("." + suffix):
            return key[: -len(suffix)] + "weight"
    return None


def _split_scales(entries: dict[str, TensorEntry]) -> tuple[dict[str, TensorEntry], dict[str, TensorEntry], list[str]]:
    """(weights, scales keyed by the weight they scale, ignored keys)."""
    weights, scales, ignored = {}, {}, []
    for key, entry in entries.items():
        target = _scale_target(key)
        if target is not None:
            scales[target] = entry
        elif key.split(".")[-1] in MARKERS or key.endswith(IGNORED_SUFFIXES):
            ignored.append(key)
        else:
            weights[key] = entry
    return weights, scales, ignored


def _with_scales(named: dict[str, tuple[str, TensorEntry]], scales: dict[str, TensorEntry]) -> dict[str, Stored]:
    """``named`` maps model key → (stored key, entry); each stored key may have a scale."""
    return {name: Stored(entry, scales.get(stored_key)) for name, (stored_key, entry) in named.items()}


def _plain(weights: dict[str, TensorEntry], model_keys: set[str]) -> tuple[dict[str, tuple[str, TensorEntry]], list]:
    named = {k: (k, e) for k, e in weights.items() if k in model_keys}
    unexpected = [k for k in weights if k not in model_keys and not any(i in k for i in IGNORED_KEYS)]
    return named, unexpected


def _native(weights: dict[str, TensorEntry], model_keys: set[str]) -> tuple[dict[str, tuple[str, TensorEntry]], list]:
    named, unexpected = {}, []
    for key, entry in weights.items():
        name = native_to_diffusers(key)
        if name in model_keys:
            named[name] = (key, entry)
        else:
            unexpected.append(key)
    return named, unexpected


def _separate(
    weights: dict[str, TensorEntry], model_keys: set[str], expert: str
) -> tuple[dict[str, tuple[str, TensorEntry]], list]:
    prefixes = EXPERT_PREFIXES[expert]
    other = "transformer_2" if expert == "transformer" else "transformer"
    other_prefixes = tuple(p for p in EXPERT_PREFIXES[other] if p)
    best: dict[str, tuple[tuple[int, int], str, TensorEntry]] = {}
    unexpected = []
    for key, entry in weights.items():
        ema = key.startswith("ema.")
        rest = key[4:] if ema else key
        matched = False
        for rank, prefix in enumerate(prefixes):
            if rest.startswith(prefix) and rest[len(prefix) :] in model_keys:
                bare = rest[len(prefix) :]
                priority = (0 if ema else 1, rank)
                if bare not in best or priority < best[bare][0]:
                    best[bare] = (priority, key, entry)
                matched = True
                break
        if not matched and not rest.startswith(other_prefixes) and not any(i in key for i in IGNORED_KEYS):
            unexpected.append(key)
    return {k: (v[1], v[2]) for k, v in best.items()}, unexpected


def match_layout(entries: dict[str, TensorEntry], model_keys: set[str], expert: str, separate: bool) -> LayoutMatch:
    """Map a checkpoint's entries onto an expert's parameter names, whatever its layout."""
    weights, scales, _ = _split_scales(entries)
    if is_native(set(weights)):
        named, unexpected = _native(weights, model_keys)
        layout = "native"
    elif separate:
        named, unexpected = _separate(weights, model_keys, expert)
        layout = "separate"
    else:
        named, unexpected = _plain(weights, model_keys)
        layout = "diffusers"
    orphans = [k for k in scales if k not in {stored for stored, _ in named.values()}]
    unexpected += [f"{k[: -len('weight')]}scale" for k in orphans]
    return LayoutMatch(_with_scales(named, scales), unexpected, layout)


def map_checkpoint_keys(
    entries: dict[str, TensorEntry], model_keys: set[str], expert: str
) -> tuple[dict[str, TensorEntry], list[str]]:
    """Upstream's separate-checkpoint mapping (prefixes, EMA preferred): model key → entry, unexpected keys."""
    named, unexpected = _separate(entries, model_keys, expert)
    return {k: e for k, (_, e) in named.items()}, unexpected
