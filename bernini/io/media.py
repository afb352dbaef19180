"""Turning input images and videos into model tensors.

The preprocessing follows the reference implementation: frames are resampled to the target frame
rate with a ``4k + 1`` frame count (:mod:`.sizes`), resized so the long edge fits ``max_size`` with both sides
multiples of 16, and resized with antialiased bicubic interpolation on 0..255 values that are
rounded back to integers before being mapped to ``[-1, 1]``.

Two deliberate differences from a bare decode: JPEG EXIF orientation and video display-matrix
rotation are applied (:mod:`.images`, :mod:`.video_read`), so inputs look the way every viewer shows them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bernini.errors import MediaError

from .images import ImageSource, channels_first, image_array, read_image, tensor_to_numpy
from .sizes import MIN_FRAMES, frame_indices, resize_dims
from .video_read import (
    FrameSampler,
    count_frames,
    decoded_frames,
    frame_rgb,
    native_fps,
    open_video,
    read_video_frames,
    with_decoded_count,
)

VideoSource = str | os.PathLike | np.ndarray | torch.Tensor | Sequence[ImageSource]
_BATCH_ELEMENTS = 1 << 25
"""Float elements resized at once (~128 MiB), so large videos never hold a float copy of every frame."""


def _to_model(frames: np.ndarray, width: int, height: int) -> torch.Tensor:
    """uint8 [N, H, W, 3] to float32 [3, N, height, width] in [-1, 1], resized like the reference."""
    frames = np.ascontiguousarray(frames)
    if not frames.flags.writeable:
        frames = frames.copy()
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    if tuple(pixels.shape[-2:]) != (height, width):
        pixels = F.interpolate(pixels, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
        pixels = pixels.round_().clamp_(0, 255)
    return pixels.div_(127.5).sub_(1.0).permute(1, 0, 2, 3)


class _ShortVideo(MediaError):
    """Fewer frames arrived than were sampled (a file whose header overstates its length)."""


def _frames_to_model(frames: Iterable[np.ndarray], count: int, max_size: int) -> torch.Tensor:
    """Stack ``count`` uint8 [H, W, 3] frames into [3, count, h, w], sized from the first frame, in batches."""
    out: torch.Tensor | None = None
    width = height = 0
    batch_size = 1
    batch: list[np.ndarray] = []
    written = 0

    def flush() -> None:
        nonlocal written
        if batch:
            out[:, written : written + len(batch)] = _to_model(np.stack(batch), width, height)
            written += len(batch)
            batch.clear()

    for frame in frames:
        if out is None:
            width, height = resize_dims(frame.shape[1], frame.shape[0], max_size)
            out = torch.empty(3, count, height, width, dtype=torch.float32)
            batch_size = max(1, _BATCH_ELEMENTS // (3 * frame.shape[0] * frame.shape[1]))
        if batch and (frame.shape != batch[0].shape or len(batch) >= batch_size):
            flush()
        batch.append(frame)
    flush()
    if out is None or written != count:
        raise _ShortVideo(f"expected {count} frames but got {written}")
    return out


def preprocess_image(source: ImageSource, max_size: int) -> torch.Tensor:
    """Model input float32 ``[3, H, W]`` in ``[-1, 1]`` for an image (see :func:`read_image` for sources)."""
    pixels = np.asarray(read_image(source))
    height, width = pixels.shape[:2]
    new_w, new_h = resize_dims(width, height, max_size)
    return _to_model(pixels[None], new_w, new_h)[:, 0].contiguous()


def _sample_file(
    path: Path, total: int, fps: float, max_frames: int, max_size: int, source_fps: float | None
) -> tuple[torch.Tensor | None, int]:
    """The model tensor, or ``None`` and the real frame count when fewer frames decode than ``total``."""
    if total < MIN_FRAMES:
        raise MediaError(f"video {path} is too short: {total} frame(s), at least {MIN_FRAMES} are needed")
    with open_video(path) as (container, stream):
        native = source_fps or native_fps(container, stream, total)
        indices = frame_indices(total, native, fps, max_frames)
        sampler = FrameSampler(decoded_frames(container, stream, path), indices)
        try:
            return _frames_to_model(sampler, len(indices), max_size), total
        except _ShortVideo:
            return None, sampler.decoded


def _file_video(path: Path, fps: float, max_frames: int, max_size: int, source_fps: float | None) -> torch.Tensor:
    """Decode only up to the last sampled frame, and convert only the sampled frames."""
    return with_decoded_count(path, lambda total: _sample_file(path, total, fps, max_frames, max_size, source_fps))


def _channels_last_video(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.ndim != 4:
        raise MediaError(f"video tensor has shape {tuple(tensor.shape)}; expected T x H x W x 3 or T x 3 x H x W")
    if channels_first(tensor.shape[1], tensor.shape[-1], prefer_first=True):
        return tensor.permute(0, 2, 3, 1)
    return tensor


def _memory_video(source: np.ndarray | torch.Tensor | Sequence[ImageSource]) -> tuple[int, Callable[[int], np.ndarray]]:
    """Frame count and a uint8 [H, W, 3] getter for an in-memory video."""
    if isinstance(source, torch.Tensor):
        tensor = _channels_last_video(source.detach().cpu())
        return tensor.shape[0], lambda i: image_array(tensor_to_numpy(tensor[i]))
    if isinstance(source, np.ndarray):
        if source.ndim != 4:
            raise MediaError(f"video array has shape {source.shape}; expected T x H x W x 3")
        return source.shape[0], lambda i: image_array(source[i])
    if isinstance(source, Sequence) and not isinstance(source, str | bytes):
        return len(source), lambda i: np.asarray(read_image(source[i]))
    raise MediaError(
        f"unsupported video input of type {type(source).__name__}; give a file path, array, tensor or list of images"
    )


def preprocess_video(
    source: VideoSource, fps: float, max_frames: int, max_size: int, source_fps: float | None = None
) -> torch.Tensor:
    """Model input float32 ``[3, T, H, W]`` in ``[-1, 1]`` for a video file or an in-memory video.

    In-memory videos (uint8/float arrays or tensors, or a list of images) are assumed to run at
    ``source_fps``, by default ``fps`` (no resampling). For files ``source_fps`` overrides the
    container's frame rate, which helps with files whose rate metadata is wrong.
    """
    if isinstance(source, str | os.PathLike):
        return _file_video(Path(source), fps, max_frames, max_size, source_fps)
    total, frame_at = _memory_video(source)
    if total < MIN_FRAMES:
        raise MediaError(f"in-memory video is too short: {total} frame(s), at least {MIN_FRAMES} are needed")
    indices = frame_indices(total, source_fps or fps, fps, max_frames)
    return _frames_to_model((frame_at(i) for i in indices), len(indices), max_size)


def video_input_size(
    source: VideoSource, fps: float, max_frames: int, max_size: int, source_fps: float | None = None
) -> tuple[int, int, int]:
    """``(frames, height, width)`` of what :func:`preprocess_video` makes of ``source``, with the same sampling and
    resizing, from a file's header and first frame only (a header that overstates the length can give fewer frames
    when the whole file decodes)."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        total = count_frames(path)
        with open_video(path) as (container, stream):
            native = source_fps or native_fps(container, stream, total)
            first = next(iter(decoded_frames(container, stream, path)), None)
            if first is None:
                raise MediaError(f"video {path} contains no frames; re-export it")
            height, width = frame_rgb(first, (first.width, first.height)).shape[:2]
        if total < MIN_FRAMES:
            raise MediaError(f"video {path} is too short: {total} frame(s), at least {MIN_FRAMES} are needed")
    else:
        total, frame_at = _memory_video(source)
        if total < MIN_FRAMES:
            raise MediaError(f"in-memory video is too short: {total} frame(s), at least {MIN_FRAMES} are needed")
        native = source_fps or fps
        height, width = frame_at(0).shape[:2]
    count = len(frame_indices(total, native, fps, max_frames))
    new_w, new_h = resize_dims(width, height, max_size)
    return count, new_h, new_w


def image_input_size(source: ImageSource, max_size: int) -> tuple[int, int]:
    """``(height, width)`` of what :func:`preprocess_image` makes of ``source``."""
    width, height = read_image(source).size
    new_w, new_h = resize_dims(width, height, max_size)
    return new_h, new_w


def video_preview_frames(frames: np.ndarray, count: int = 3) -> list[Image.Image]:
    """``count`` evenly spaced frames (first and last included) as PIL images, e.g. for a captioning model."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) == 0:
        raise MediaError(f"video frames have shape {frames.shape}; expected a non-empty T x H x W x 3 array")
    if count < 1:
        raise MediaError(f"preview frame count must be at least 1 (got {count})")
    last = len(frames) - 1
    picks = [0] if count == 1 else [round(i * last / (count - 1)) for i in range(count)]
    return [Image.fromarray(image_array(frames[i])) for i in picks]


def to_preview_frames(pixels: torch.Tensor) -> np.ndarray:
    """A preprocessed video ``[3, T, H, W]`` in [-1, 1] back to uint8 frames ``[T, H, W, 3]`` (for the enhancer)."""
    return ((pixels.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()


def probe_media(source: Any, kind: str) -> None:
    """Cheaply check that a media path opens and decodes (a video's first frames only); in-memory media pass.

    Front ends call this before loading the model so a bad file fails in a second, not after minutes.
    """
    if not isinstance(source, (str, os.PathLike)):
        return
    path = Path(source)
    if kind == "video":
        with open_video(path) as (container, stream):
            decoded = sum(1 for _, _ in zip(range(MIN_FRAMES), decoded_frames(container, stream, path), strict=False))
        if decoded == 0:
            raise MediaError(f"video {path} contains no frames; re-export it")
        if decoded < MIN_FRAMES:
            raise MediaError(
                f"video {path} has {decoded} frame(s), at least {MIN_FRAMES} are needed; "
                "for a still image use --image (or --images) and an image task"
            )
    else:
        read_image(path)


# ------------------------------------------------------------------------------------ clips to extend


def clip_header(source: VideoSource) -> tuple[int, float | None]:
    """A clip's frame count and native frame rate from its header (an in-memory clip has no rate: None)."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        total = count_frames(path)
        with open_video(path) as (container, stream):
            return total, native_fps(container, stream, total)
    return _memory_video(source)[0], None


def read_clip(source: VideoSource, max_size: int) -> np.ndarray:
    """Every frame of a clip, not resampled in time, as uint8 ``[T, H, W, 3]`` sized as source videos are (long
    side at most ``max_size``, sides multiples of 16; frames already of that size are kept byte for byte)."""
    if isinstance(source, str | os.PathLike):
        frames, _ = read_video_frames(source)
    else:
        total, frame_at = _memory_video(source)
        frames = np.stack([frame_at(i) for i in range(total)]) if total else np.zeros((0, 1, 1, 3), np.uint8)
    if len(frames) < MIN_FRAMES:
        raise MediaError(f"the clip to extend has {len(frames)} frame(s); at least {MIN_FRAMES} are needed")
    width, height = resize_dims(frames.shape[2], frames.shape[1], max_size)
    if (height, width) == frames.shape[1:3]:
        return frames
    step = max(1, _BATCH_ELEMENTS // (3 * frames.shape[1] * frames.shape[2]))
    out = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    for start in range(0, len(frames), step):
        pixels = _to_model(frames[start : start + step], width, height)
        out[start : start + step] = to_preview_frames(pixels)
    return out


def clip_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames ``[T, H, W, 3]`` (already sized) as the model's float32 ``[3, T, H, W]`` in ``[-1, 1]``."""
    return _to_model(frames, frames.shape[2], frames.shape[1])
