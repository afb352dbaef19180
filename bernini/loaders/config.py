"""The renderer configuration: the bundle's root ``config.json`` (``model_type: bernini_renderer``)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import WeightsError
from ..jsontext import loads_json

DEFAULT_REPO_ID = "ByteDance/Bernini-R-Diffusers"
WAN22_BASE_REPO_ID = "Wan-AI/Wan2.2-T2V-A14B-Diffusers"
BERNINI_REPO_IDS = frozenset({DEFAULT_REPO_ID, "ByteDance/Bernini-R-1.3B-Diffusers"})
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
    def from_dict(cls, data: dict[str, Any], where: str = "config.json") -> RendererConfig:
        """The known keys, each checked for its type and range (one line naming the key on a bad value)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key, value in values.items():
            problem = _config_value_problem(key, value)
            if problem:
                raise WeightsError(f"{where}: {key} {problem}, got {json.dumps(value)[:60]}")
        if "switch_dit_boundary" in values:
            values["switch_dit_boundary"] = float(values["switch_dit_boundary"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, **asdict(self)}


def _config_value_problem(key: str, value: Any) -> str | None:
    if key == "wan22_base":
        return None if isinstance(value, str) and value.strip() else "must be a path or a Hugging Face repo id"
    if key in ("skip_transformer_1", "skip_transformer_2", "use_unipc", "use_src_id_rotary_emb", "interpolate_src_id"):
        return None if isinstance(value, bool) else "must be true or false"
    if key == "switch_dit_boundary":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok and 0.0 <= value <= 1.0 else "must be a number from 0 to 1"
    if key == "max_sequence_length":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok and 1 <= value <= 4096 else "must be an integer from 1 to 4096"
    if key == "max_trained_src_id":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok and 1 <= value <= 1024 else "must be an integer from 1 to 1024"
    return None


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = loads_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path} must hold a JSON object")
    return data
