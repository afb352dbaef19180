"""The sizes inputs are resampled to: the long edge within ``max_size`` with both sides multiples of 16, and
frame counts of ``4k + 1`` at the target frame rate (as the reference implementation samples them)."""

from __future__ import annotations

import math

import numpy as np

from bernini.errors import MediaError

MIN_FRAMES = 5


def _round16(value: float) -> int:
    return max(16, round(value / 16) * 16)


def _scale_once(width: int, height: int, max_size: int) -> tuple[int, int]:
    scale = min(max_size / max(width, height), 1.0)
    return _round16(round(width * scale)), _round16(round(height * scale))


def resize_dims(width: int, height: int, max_size: int) -> tuple[int, int]:
    """Target ``(width, height)``: long edge at most ``max_size``, never upscaled, sides multiples of 16."""
    if width <= 0 or height <= 0:
        raise MediaError(f"cannot resize an empty {width}x{height} image; give a picture with pixels")
    if max_size < 16:
        raise MediaError(f"max size {max_size} is too small; use at least 16")
    new_w, new_h = _scale_once(width, height, max_size)
    if max(new_w, new_h) > max_size:
        new_w, new_h = _scale_once(new_w, new_h, max_size)
    return new_w, new_h


def frame_indices(total_frames: int, native_fps: float, fps: float, max_frames: int) -> list[int]:
    """Source frame indices to sample: resampled to ``fps``, ``4k + 1`` long, truncated to ``max_frames``.

    At the native rate the count is snapped down to ``4k + 1`` so no frame is repeated. Truncation keeps
    the first frames (the start of the clip) rather than spreading the budget over the whole clip.
    """
    if total_frames < MIN_FRAMES:
        raise MediaError(f"video is too short: {total_frames} frame(s), at least {MIN_FRAMES} are needed")
    if not (native_fps > 0 and fps > 0 and math.isfinite(native_fps) and math.isfinite(fps)):
        raise MediaError(f"frame rates must be positive (source {native_fps}, target {fps})")
    if max_frames < 1:
        raise MediaError(f"max frames must be at least 1 (got {max_frames})")
    if math.isclose(native_fps, fps, rel_tol=1e-9):
        count = (total_frames - 1) // 4 * 4 + 1
    else:
        count = math.floor(total_frames / native_fps * fps / 4) * 4 + 1
    count = max(MIN_FRAMES, count)
    indices = np.round(np.linspace(0, total_frames - 1, count)).astype(np.int64).tolist()
    return indices[: max_frames // 4 * 4 + 1]
