"""The planner's visual inputs (spec §2.4): every source item through Qwen2.5-VL's vision tower, and the target
placeholder's grid.

Images go through transformers' PIL ``Qwen2VLImageProcessor`` (``Qwen2VLImageProcessorPil`` from 5.x on) at
the "256p" budget (min 3136, max 50176 pixels). Qwen's video processor needs torchvision, so a video's sampled
frames go through the *same* image processor as a batch of images and their patches are regrouped: the image
processor fills both temporal slots of a patch with its one frame, and a video patch holds frames ``2t`` and
``2t + 1`` in those slots, with the same row order. Frames are decoded exactly (PyAV ``rgb24`` at native size,
spec §6.4; a file only up to its last sampled frame) and sampled by :func:`.geometry.vit_frame_indices`. Qwen's
video processor resizes with torchvision's bicubic, this one with Pillow's: the two may differ by rounding in a
resized pixel.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import BerniniError, MediaError, WeightsError
from ..io.media import ImageSource, VideoSource, read_image, read_video_frames_at
from .geometry import MAX_PIXELS, MIN_PIXELS, TEMPORAL_PATCH, VitGrid, target_grid, vit_frame_indices
from .packing import VisualItem

CHANNELS = 3


@dataclass(frozen=True)
class VisionInput:
    """One source item's vision-tower input: ``pixel_values`` ``[T_g·H_g·W_g, 3·2·14·14]`` (float32) and its grid.

    ``native`` is a video's decoded ``(frames, fps, height, width)``, which sets the target grid when editing.
    """

    pixel_values: torch.Tensor
    grid: VitGrid
    video: bool
    native: tuple[int, float, int, int] | None = None

    @property
    def grid_thw(self) -> tuple[int, int, int]:
        return (self.grid.temporal, self.grid.height, self.grid.width)

    @property
    def item(self) -> VisualItem:
        return VisualItem(self.video, self.grid)


@dataclass(frozen=True)
class PlannerVisuals:
    """A request's source inputs in conversation order (videos, then the image or the references) and its target."""

    sources: list[VisionInput]
    target: VisualItem

    @property
    def source_items(self) -> list[VisualItem]:
        return [source.item for source in self.sources]


def load_image_processor(mllm_dir: str | os.PathLike) -> Any:
    """The bundle's ``mllm/preprocessor_config.json`` as the PIL Qwen2-VL image processor at the 256p budget."""
    import transformers

    cls = getattr(transformers, "Qwen2VLImageProcessorPil", None) or transformers.Qwen2VLImageProcessor
    try:
        return cls.from_pretrained(Path(mllm_dir), min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot load the planner's image processor from {mllm_dir}: {exc}") from None


def _process(processor: Any, frames: list[Image.Image], what: str) -> tuple[torch.Tensor, VitGrid]:
    """Every frame through the image processor; the patches ``[frames, H_g·W_g, 3·2·14·14]`` and their grid."""
    try:
        out = processor(images=frames, return_tensors="pt")
    except ValueError as exc:  # e.g. an aspect ratio above 200
        raise MediaError(f"{what} cannot be prepared for the planner's vision tower: {exc}") from None
    grids = {tuple(int(v) for v in row) for row in out["image_grid_thw"].tolist()}
    width, height = frames[0].size
    expected = VitGrid.of_image(height, width)
    if grids != {(1, expected.height, expected.width)}:
        raise WeightsError(
            f"the planner's image processor gives ViT grids {sorted(grids)} for {what} ({width}x{height}), not "
            f"{(1, expected.height, expected.width)}: check patch_size / merge_size in mllm/preprocessor_config.json"
        )
    pixels = out["pixel_values"].float()
    return pixels.reshape(len(frames), expected.height * expected.width, -1), expected


def image_input(processor: Any, source: ImageSource) -> VisionInput:
    """An image (path, PIL, array or tensor): ``T_g = 1``, the frame in both temporal slots, as Qwen does."""
    patches, grid = _process(processor, [read_image(source)], "image")
    return VisionInput(patches[0], VitGrid(1, grid.height, grid.width), video=False)


def _video_frames(source: VideoSource, fps: float, video_fps: float | None) -> tuple[Sequence[Any], float]:
    """An in-memory video's frames (indexable; each one a :func:`read_image` source) and its frame rate.

    (Files are decoded only up to the last chosen frame, at native size, by :func:`video_input`.) In-memory
    videos (``[T, H, W, 3]`` / ``[T, 3, H, W]`` arrays or tensors, or a list of images) at ``video_fps`` or
    ``fps``, as :func:`bernini.io.media.preprocess_video` reads them.
    """
    if isinstance(source, np.ndarray | torch.Tensor) and source.ndim != 4:
        raise MediaError(f"video array has shape {tuple(source.shape)}; expected T x H x W x 3 or T x 3 x H x W")
    if not isinstance(source, np.ndarray | torch.Tensor | Sequence) or isinstance(source, str | bytes):
        kind = type(source).__name__
        raise MediaError(f"unsupported video input of type {kind}; give a file path, array, tensor or list of images")
    if len(source) == 0:
        raise MediaError("in-memory video has no frames")
    return source, video_fps or fps


def _from(start_s: float, count: int, source_fps: float) -> int:
    """The first native frame at ``start_s`` seconds (at most the last one)."""
    return min(round(start_s * source_fps), count - 1)


def video_input(
    processor: Any,
    source: VideoSource,
    fps: float,
    num_frames: int,
    video_fps: float | None = None,
    start_s: float = 0.0,
) -> VisionInput:
    """A video's ViT frames (``vit_frame_indices`` at the request's ``fps`` and ``num_frames``), two per temporal
    patch: rows ``t·H_g·W_g + s`` hold frames ``2t`` and ``2t + 1`` at spatial patch ``s`` (Qwen's order).

    ``start_s`` (a context window's start) makes the clip begin that many seconds in: the frames are chosen, and the
    native frame count reported, as if the video started there."""
    if not fps > 0:
        raise BerniniError(f"fps must be positive (got {fps})")
    if isinstance(source, str | os.PathLike):

        def choose(count: int, native_fps: float) -> list[int]:
            first = _from(start_s, count, video_fps or native_fps)
            return [first + i for i in vit_frame_indices(count - first, video_fps or native_fps, fps, num_frames)]

        chosen, native_fps, total = read_video_frames_at(source, choose)
        source_fps = video_fps or native_fps
        total -= _from(start_s, total, source_fps)
        pictures = [read_image(frame) for frame in chosen]
    else:
        frames, source_fps = _video_frames(source, fps, video_fps)
        first = _from(start_s, len(frames), source_fps)
        total = len(frames) - first
        pictures = [read_image(frames[first + i]) for i in vit_frame_indices(total, source_fps, fps, num_frames)]
    width, height = pictures[0].size
    if any(p.size != (width, height) for p in pictures):
        raise MediaError(f"video frames change size ({width}x{height} first); give frames of one size")
    patches, grid = _process(processor, pictures, "video frame")
    count, tokens = patches.shape[:2]
    per_slot = patches.reshape(count, tokens, CHANNELS, TEMPORAL_PATCH, -1)[:, :, :, 0]  # [frames, tokens, C, p·p]
    groups = per_slot.reshape(count // TEMPORAL_PATCH, TEMPORAL_PATCH, tokens, CHANNELS, -1)
    pixel_values = groups.permute(0, 2, 3, 1, 4).reshape(count // TEMPORAL_PATCH * tokens, -1).contiguous()
    video_grid = VitGrid(count // TEMPORAL_PATCH, grid.height, grid.width)
    return VisionInput(pixel_values, video_grid, video=True, native=(total, float(source_fps), height, width))


def vision_features(qwen: Any, items: Sequence[VisionInput]) -> list[torch.Tensor]:
    """``qwen.visual`` on each item, in the tower's dtype and device: the merged ``[T_g·(H_r/28)·(W_r/28), hidden]``.

    transformers 4.57's tower returns the merged tensor; 5.x returns an output whose ``pooler_output`` holds the
    merged features (``last_hidden_state`` is the unmerged stack).
    """
    visual = qwen.visual
    parameter = next(visual.parameters())
    features = []
    with torch.no_grad():
        for item in items:
            grid = torch.tensor([item.grid_thw], dtype=torch.long, device=parameter.device)
            out = visual(item.pixel_values.to(parameter.device, parameter.dtype), grid_thw=grid)
            features.append(out if isinstance(out, torch.Tensor) else out.pooler_output)
    return features


def planner_visuals(
    processor: Any,
    *,
    videos: Sequence[VideoSource] = (),
    image: ImageSource | None = None,
    images: Sequence[ImageSource] = (),
    fps: float = 16.0,
    num_frames: int = 81,
    height: int = 480,
    width: int = 832,
    video_fps: float | None = None,
    start_s: float = 0.0,
) -> PlannerVisuals:
    """Every source item of a request, in conversation order, and the target placeholder's item.

    The target is the first source video when there is one (its native frames, rate and size set the grid),
    else a black clip of ``num_frames`` at ``height × width`` (an image when ``num_frames == 1``). ``start_s``: the
    videos start that many seconds in (a context window's slice, ``num_frames`` long).
    """
    if image is not None and len(images) > 0:
        raise BerniniError("give either image or images to the planner, not both")
    stills = [image] if image is not None else list(images)
    sources = [video_input(processor, video, fps, num_frames, video_fps, start_s) for video in videos]
    sources += [image_input(processor, still) for still in stills]
    first = sources[0].native if videos else None
    target = VisualItem(num_frames > 1, target_grid(num_frames, height, width, fps, source=first))
    return PlannerVisuals(sources, target)
