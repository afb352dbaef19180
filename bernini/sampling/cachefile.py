"""Step-cache calibration files (``--cache_calibration FILE``): small JSON, read and written without torch.

MagCache: ``{"kind": "magcache", "steps": N, "ratios": [[...], [...]]}``, one list of per-step residual
magnitude ratios per expert (high-noise expert first), each as long as the steps that expert ran.
TeaCache: ``{"kind": "teacache", "coefficients": [c4, c3, c2, c1, c0]}``, the rescale polynomial, highest
power first.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import BerniniError


def _numbers(value: Any, what: str, path: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, (int, float)) for v in value):
        raise BerniniError(f"cache calibration {path}: {what} must be a non-empty list of numbers")
    numbers = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in numbers):
        raise BerniniError(f"cache calibration {path}: {what} holds a non-finite number")
    return numbers


def read_calibration(path: str, kind: str) -> dict[str, Any]:
    """The parsed file for ``kind``: ``{"steps", "ratios"}`` (MagCache) or ``{"coefficients"}`` (TeaCache)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise BerniniError(f"cannot read cache calibration {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise BerniniError(f"cache calibration {path} is not JSON: {err}") from None
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise BerniniError(f'cache calibration {path} is not a {kind} file (its "kind" must be {kind!r})')
    if kind == "teacache":
        return {"coefficients": _numbers(data.get("coefficients"), "coefficients", path)}
    ratios = data.get("ratios")
    if not isinstance(ratios, list) or not ratios:
        raise BerniniError(f"cache calibration {path}: ratios must be a list with one list per expert")
    steps = data.get("steps")
    if not isinstance(steps, int) or steps < 1:
        raise BerniniError(f"cache calibration {path}: steps must be a positive integer")
    return {"steps": steps, "ratios": tuple(_numbers(r, "each expert's ratios", path) for r in ratios)}


def write_magcache_calibration(path: str, steps: int, ratios: list[list[float]]) -> None:
    """Write a MagCache calibration atomically (temp file + rename)."""
    target = Path(path)
    text = json.dumps({"kind": "magcache", "steps": steps, "ratios": ratios}, indent=1) + "\n"
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temp, target)
