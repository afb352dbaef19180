"""The full Bernini bundle's ``config.json`` (``model_type: bernini``, spec bernini-full.md §1.5), read without torch.

The renderer keys it shares with Bernini-R's config (``switch_dit_boundary``, ``use_src_id_rotary_emb``, …)
become a :class:`~bernini.loaders.config.RendererConfig`; which release it is (v1 or v2) picks the shipped per-task
settings (:mod:`bernini.sampling.full_presets`); ``connector_cfg`` and ``clip_diff_cfg`` size the connector and the
ViT decoder (:func:`planner_widths`). Every key read here is one the released config holds
(:data:`RELEASED_KEYS`) or one of :data:`UNRELEASED_KEYS`, read only when present.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import WeightsError
from ..sampling.full_presets import VERSIONS
from .config import RendererConfig

MODEL_TYPE = "bernini"

RELEASED_KEYS = frozenset(
    {
        "model_type",
        "num_mask_token",
        "feature_type_from_stage_one",
        "clip_diff_cfg",
        "clip_diff_cfg.target_channels",
        "clip_diff_cfg.z_channels",
        "clip_diff_cfg.width",
        "clip_diff_cfg.diffusion_batch_mul",
        "clip_diff_cfg.shift",
        "connector_cfg",
        "connector_cfg.out_dim_for_gen",
        "connector_cfg.out_dim_for_vit",
        "connector_cfg.gen_head_type",
        "connector_cfg.zero_init_proj_gen_last",
        "mllm_attn_implementation",
        "switch_dit_boundary",
        "shift",
        "boundary_ratio",
        "max_sequence_length",
        "t5_max_sequence_length",
        "t5_combine_type",
        "use_src_id_rotary_emb",
        "mask_ratio_infer_cfg",
        "mask_ratio_infer_cfg.generator_type",
        "logit_mean",
        "logit_std",
        "mode_scale",
        "target_fps",
        "cotrain",
        "scratch",
        "scratch_mllm",
    }
)
"""The released ``config.json``'s keys as the spec documents them (bernini-full.md §1.1, §1.5; bernini-r.md §1.1
for ``connector_cfg.out_dim_for_gen``), nested ones dotted."""

UNRELEASED_KEYS = {
    "use_unipc": "Bernini-R's config key; absent from the release, so the CLI default (on) applies",
    "interpolate_src_id": "Bernini-R's config key; the release leaves it to the CLI (default on)",
    "max_trained_src_id": "Bernini-R's config key; the release leaves it to the CLI (default 5)",
    "bernini_version": "ours: names the release (v1 / v2); absent, the location decides",
}
"""Keys read when present that the released config does not have, and what applies without them."""

OLD_CONNECTOR_KEYS = ("out_gen", "out_vit")
"""The connector widths' names in bundles written by bernini before it read the released keys."""


def renderer_config_from(data: Mapping[str, Any], path: Path, root: Path) -> RendererConfig:
    if data.get("model_type") != MODEL_TYPE:
        raise WeightsError(f"{path} is not a full Bernini config (model_type is not 'bernini')")
    keys = ("switch_dit_boundary", "use_unipc", "use_src_id_rotary_emb", "interpolate_src_id", "max_trained_src_id")
    renderer = RendererConfig.from_dict({k: data[k] for k in keys if k in data}, str(path))
    length = data.get("t5_max_sequence_length", 512)
    if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= 4096:
        raise WeightsError(f"{path}: t5_max_sequence_length must be an integer from 1 to 4096, got {length!r}")
    return replace(renderer, max_sequence_length=length, wan22_base=str(root))


def check_version(override: str) -> str:
    if override not in VERSIONS:
        raise WeightsError(f"bernini_version must be one of {', '.join(VERSIONS)}, got {override!r}")
    return override


def planner_widths(data: Mapping[str, Any], hidden: int, path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """The connector's and the ViT decoder's widths from ``connector_cfg`` / ``clip_diff_cfg`` (``hidden``: the
    planner Qwen's width): ``{in_dim, out_gen, out_vit}`` and ``{target_channels, z_channels, width}``.

    A ``connector_cfg`` with the old ``out_gen`` / ``out_vit`` names is refused: bernini wrote those (tiny bundles)
    with ``pred_vit`` layers ``in_dim`` wide, which the released connector's shapes do not match."""
    connector, decoder = data.get("connector_cfg", {}), data.get("clip_diff_cfg", {})
    for name, section in (("connector_cfg", connector), ("clip_diff_cfg", decoder)):
        if not isinstance(section, Mapping):
            raise WeightsError(f"{path}: {name} must be an object, got {section!r}")
    old = [k for k in OLD_CONNECTOR_KEYS if k in connector]
    if old:
        raise WeightsError(
            f"{path}: connector_cfg names its widths {' / '.join(old)}, as bundles from older bernini did; the "
            "released keys are out_dim_for_gen / out_dim_for_vit: write the bundle again (bernini tiny-bundle --layout "
            "full)"
        )
    widths = {
        "out_gen": ("connector_cfg", "out_dim_for_gen", connector.get("out_dim_for_gen", 4096)),
        "out_vit": ("connector_cfg", "out_dim_for_vit", connector.get("out_dim_for_vit", hidden)),
        "target_channels": ("clip_diff_cfg", "target_channels", decoder.get("target_channels", hidden)),
        "z_channels": ("clip_diff_cfg", "z_channels", decoder.get("z_channels", hidden)),
        "width": ("clip_diff_cfg", "width", decoder.get("width", 4096)),
    }
    for section, key, value in widths.values():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise WeightsError(f"{path}: {section}.{key} must be a positive integer, got {value!r}")
    value = {name: entry[2] for name, entry in widths.items()}
    return (
        {"in_dim": hidden, "out_gen": value["out_gen"], "out_vit": value["out_vit"]},
        {k: value[k] for k in ("target_channels", "z_channels", "width")},
    )
