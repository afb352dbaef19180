"""The renderer configuration: the bundle's root ``config.json`` (``model_type: bernini_renderer``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import WeightsError

DEFAULT_REPO_ID = "ByteDance/Bernini-R-Diffusers"
WAN22_BASE_REPO_ID = "Wan-AI/Wan2.2-T2V-A14B-Diffusers"
MODEL_TYPE = "bernini_renderer"


@dataclass(frozen=True)
class RendererConfig:
    """The keys of ``BerniniRendererConfig`` that inference reads, with the 14B values as defaults.

    ``use_unipc``, ``use_src_id_rotary_emb``, ``interpolate_src_id`` and ``max_trained_src_id`` are the
    defaults of the matching generation flags. ``shift`` is not read: upstream's CLI passes
    ``--flow_shift`` (5.0) over it, and so do we (docs/architecture.md lists the keys).
    """

    wan22_base: str = WAN22_BASE_REPO_ID
    skip_transformer_1: bool = False
    skip_transformer_2: bool = False
    switch_dit_boundary: float = 0.875
    max_sequence_length: int = 512
    use_unipc: bool = True
    use_src_id_rotary_emb: bool = True
    interpolate_src_id: bool = True
    max_trained_src_id: int = 5

    @property
    def boundary_timestep(self) -> float:
        return self.switch_dit_boundary * 1000.0

    @property
    def two_experts(self) -> bool:
        return not self.skip_transformer_2 and self.switch_dit_boundary > 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RendererConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, **asdict(self)}


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path} must hold a JSON object")
    return data


def renderer_config_for(root: Path) -> RendererConfig | None:
    """The renderer config of a bundle directory, derived from ``model_index.json`` for plain Wan bundles."""
    config_file = root / "config.json"
    if config_file.is_file():
        data = read_json(config_file)
        if data.get("model_type") == MODEL_TYPE:
            return RendererConfig.from_dict(data)
    index_file = root / "model_index.json"
    if index_file.is_file():
        index = read_json(index_file)
        ratio = index.get("boundary_ratio")
        has_second = isinstance(index.get("transformer_2"), list) and index["transformer_2"][0] is not None
        return RendererConfig(
            wan22_base=str(root),
            skip_transformer_2=not has_second,
            switch_dit_boundary=float(ratio) if (ratio is not None and has_second) else 0.0,
        )
    return None
