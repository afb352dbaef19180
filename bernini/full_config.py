"""The full Bernini bundle's ``config.json`` (``model_type: bernini``, spec bernini-full.md §1.5), read without torch.

The renderer keys it shares with Bernini-R's config (``switch_dit_boundary``, ``use_src_id_rotary_emb``, …)
become a :class:`~bernini.config.RendererConfig`; which release it is (v1 or v2) picks the shipped per-task
settings (:mod:`bernini.planner.presets`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from .config import RendererConfig, read_json
from .errors import WeightsError
from .planner.presets import VERSIONS, detect_version

MODEL_TYPE = "bernini"


def is_full_bundle(root: Path) -> bool:
    config = Path(root) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def full_renderer_config(root: Path) -> RendererConfig:
    """The renderer keys of a full bundle's config (``shift`` is not read: ``--flow_shift`` is, as upstream)."""
    path = Path(root) / "config.json"
    data = read_json(path)
    if data.get("model_type") != MODEL_TYPE:
        raise WeightsError(f"{path} is not a full Bernini config (model_type is not 'bernini')")
    keys = ("switch_dit_boundary", "use_unipc", "use_src_id_rotary_emb", "interpolate_src_id", "max_trained_src_id")
    renderer = RendererConfig.from_dict({k: data[k] for k in keys if k in data}, str(path))
    length = data.get("t5_max_sequence_length", 512)
    if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= 4096:
        raise WeightsError(f"{path}: t5_max_sequence_length must be an integer from 1 to 4096, got {length!r}")
    return replace(renderer, max_sequence_length=length, wan22_base=str(root))


def full_version(root: Path, location: str, override: str | None = None) -> str:
    if override is not None:
        if override not in VERSIONS:
            raise WeightsError(f"bernini_version must be one of {', '.join(VERSIONS)}, got {override!r}")
        return override
    return detect_version(read_json(Path(root) / "config.json"), location)
