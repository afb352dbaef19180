"""How many target slots the planner fills: Qwen's ViT grid of the target placeholder (spec §2.4).

The slot count comes from the grid, never from ``num_mask_token``: ``T_g × (H_r/28) × (W_r/28)`` with
``(H_r, W_r)`` from Qwen's ``smart_resize`` at the "256p" budget and ``T_g`` from sampling the clip at
``fps // 8`` frames per second, two frames per temporal group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PATCH = 14
MERGE = 2
FACTOR = PATCH * MERGE  # 28 pixels per merged token side
MIN_PIXELS = 3136
MAX_PIXELS = 50176  # 224²
TEMPORAL_PATCH = 2


def smart_resize(
    height: int, width: int, factor: int = FACTOR, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """Sides rounded to multiples of ``factor``, then scaled (floored) into ``max_pixels`` or up to ``min_pixels``."""
    resized_h = max(factor, round(height / factor) * factor)
    resized_w = max(factor, round(width / factor) * factor)
    if resized_h * resized_w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        resized_h = max(factor, math.floor(height / beta / factor) * factor)
        resized_w = max(factor, math.floor(width / beta / factor) * factor)
    elif resized_h * resized_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        resized_h = math.ceil(height * beta / factor) * factor
        resized_w = math.ceil(width * beta / factor) * factor
    return resized_h, resized_w


def tokens_per_group(height: int, width: int) -> int:
    resized_h, resized_w = smart_resize(height, width)
    return (resized_h // FACTOR) * (resized_w // FACTOR)


def vit_frame_indices(
    total: int, source_fps: float, fps: float, num_frames: int, match_render_span: bool = True
) -> list[int]:
    """The source frames the planner's ViT sees.

    ``vit_fps = fps // 8``; ``n = max(2, floor(total / source_fps × vit_fps / 2) × 2)`` frames spread over the
    clip, then cut to ``floor(num_frames / 2) × 2``. With ``match_render_span`` (our default; upstream bug B6)
    the clip is first cut to the span the renderer's frames cover, so plan and render describe the same time.
    """
    if match_render_span and fps > 0:
        span_s = (max(num_frames, 1) - 1) / fps
        total = min(total, math.floor(span_s * source_fps + 1e-9) + 1)
    vit_fps = int(fps // 8)
    count = max(2, math.floor(total / source_fps * vit_fps / 2) * 2)
    if count == 1:
        positions = [0.0]
    else:
        positions = [i * (total - 1) / (count - 1) for i in range(count)]
    indices = [int(round(p)) for p in positions]
    return indices[: max(2, num_frames // 2 * 2)]


@dataclass(frozen=True)
class VitGrid:
    """A visual item's ViT grid ``(T_g, H_r/14, W_r/14)`` and its number of merged tokens."""

    temporal: int
    height: int
    width: int

    @property
    def tokens(self) -> int:
        return self.temporal * (self.height // MERGE) * (self.width // MERGE)

    @classmethod
    def of_image(cls, height: int, width: int) -> VitGrid:
        resized_h, resized_w = smart_resize(height, width)
        return cls(1, resized_h // PATCH, resized_w // PATCH)

    @classmethod
    def of_video(cls, frames: int, height: int, width: int) -> VitGrid:
        resized_h, resized_w = smart_resize(height, width)
        return cls(max(1, frames // TEMPORAL_PATCH), resized_h // PATCH, resized_w // PATCH)


def target_grid(
    num_frames: int,
    height: int,
    width: int,
    fps: float = 16.0,
    source: tuple[int, float, int, int] | None = None,
) -> VitGrid:
    """The target placeholder's grid: the first source video's (``(frames, fps, height, width)``) when editing,
    else a black clip of ``num_frames`` at ``height × width`` and 16 fps (an image when ``num_frames == 1``)."""
    if num_frames == 1 and source is None:
        return VitGrid.of_image(height, width)
    if source is not None:
        total, source_fps, source_h, source_w = source
        frames = len(vit_frame_indices(total, source_fps, fps, num_frames))
        return VitGrid.of_video(frames, source_h, source_w)
    frames = len(vit_frame_indices(num_frames, 16.0, fps, num_frames))
    return VitGrid.of_video(frames, height, width)
