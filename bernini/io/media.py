"""Reading input images and videos and turning them into model tensors.

The preprocessing follows the reference implementation: frames are resampled to the target frame
rate with a ``4k + 1`` frame count, resized so the long edge fits ``max_size`` with both sides
multiples of 16, and resized with antialiased bicubic interpolation on 0..255 values that are
rounded back to integers before being mapped to ``[-1, 1]``.

Two deliberate differences from a bare decode: JPEG EXIF orientation and video display-matrix
rotation are applied, so inputs look the way every viewer shows them.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from bernini.errors import MediaError

logger = logging.getLogger(__name__)

ImageSource = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor
VideoSource = str | os.PathLike | np.ndarray | torch.Tensor | Sequence[ImageSource]

MIN_FRAMES = 5
DEFAULT_FPS = 24.0
_MAX_PLAUSIBLE_FPS = 1000.0
_BATCH_ELEMENTS = 1 << 25
"""Float elements resized at once (~128 MiB), so large videos never hold a float copy of every frame."""


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


# ----------------------------------------------------------------------------------------- files


def _check_file(path: Path, kind: str) -> None:
    if not path.exists():
        raise MediaError(f"{kind} file not found: {path}; check the path")
    if path.is_dir():
        raise MediaError(f"{kind} path is a directory, not a file: {path}; give the {kind} file itself")
    if path.stat().st_size == 0:
        raise MediaError(f"{kind} file is empty (0 bytes): {path}; re-export or re-download it")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "strerror", None) or exc).split())
    return text or type(exc).__name__


@contextmanager
def _open_video(path: Path) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    _check_file(path, "video")
    try:
        container = av.open(str(path), mode="r")
    except Exception as exc:  # any failure to open a user file is a bad file
        raise MediaError(f"cannot read video {path}: not a video ffmpeg can decode ({_reason(exc)})") from exc
    try:
        if not container.streams.video:
            raise MediaError(f"video {path} has no video stream; give a file with moving pictures")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield container, stream
    finally:
        container.close()


def _native_fps(container: av.container.InputContainer, stream: av.video.stream.VideoStream, frames: int) -> float:
    """The stream's frame rate, else frames over duration (GIFs), else :data:`DEFAULT_FPS`."""
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate and 0 < float(rate) <= _MAX_PLAUSIBLE_FPS:
            return float(rate)
    seconds = 0.0
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base
    if seconds > 0 and frames > 0 and frames / seconds <= _MAX_PLAUSIBLE_FPS:
        return frames / seconds
    return DEFAULT_FPS


def _count_frames(path: Path) -> int:
    """Frame count without decoding: the header's count, else one packet per frame."""
    with _open_video(path) as (container, stream):
        if stream.frames > 0:
            return stream.frames
        try:
            return sum(1 for packet in container.demux(stream) if packet.size)
        except Exception as exc:
            raise MediaError(f"cannot read video {path}: the file is damaged ({_reason(exc)})") from exc


def _decoded_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path
) -> Iterator[av.VideoFrame]:
    """Decoded frames; a damaged tail ends the clip early instead of failing the whole file."""
    count = 0
    try:
        for frame in container.decode(stream):
            count += 1
            yield frame
    except MediaError:
        raise
    except Exception as exc:
        if count == 0:
            raise MediaError(f"cannot read video {path}: the file is damaged ({_reason(exc)})") from exc
        logger.warning("video %s: decoding stopped after %d frames (%s)", path, count, _reason(exc))


def _frame_rgb(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 [H, W, 3] upright; ``size`` is the stored (width, height) of the first frame, kept throughout."""
    rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
    quarter_turns = round(frame.rotation / 90) % 4 if frame.rotation else 0
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb


def read_video_frames(source: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode every frame of a video file to uint8 RGB ``[T, H, W, 3]`` plus its native frame rate."""
    path = Path(source)
    frames: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    with _open_video(path) as (container, stream):
        for frame in _decoded_frames(container, stream, path):
            size = size or (frame.width, frame.height)
            frames.append(_frame_rgb(frame, size))
        fps = _native_fps(container, stream, len(frames))
    if not frames:
        raise MediaError(f"video {path} contains no frames; re-export it")
    return np.stack(frames), fps


def read_video_frames_at(
    source: str | os.PathLike, choose: Callable[[int, float], Sequence[int]]
) -> tuple[np.ndarray, float, int]:
    """Decode a video file only as far as the frames ``choose(frame_count, native_fps)`` picks (sorted, repeats
    allowed) and keep only those, uint8 RGB at native size; plus the native rate and the frame count. A header
    that claims more frames than decode is corrected by counting what decodes."""
    path = Path(source)

    def pick(total: int) -> tuple[tuple[np.ndarray, float, int] | None, int]:
        if total == 0:  # nothing decoded at all: no count to try again with
            return None, 0
        with _open_video(path) as (container, stream):
            native = _native_fps(container, stream, total)
            indices = sorted(choose(total, native))
            if not indices:
                raise MediaError(f"video {path}: no frames were chosen")
            sampler = _Sampler(_decoded_frames(container, stream, path), indices)
            frames = list(sampler)
        if len(frames) < len(indices):
            return None, sampler.decoded
        return (np.stack(frames), native, total), total

    return _with_decoded_count(path, pick)


def _with_decoded_count(path: Path, read: Callable[[int], tuple[Any, int]]) -> Any:
    """``read(frame_count)`` with the header's count; when fewer frames decode (it returns None and how many
    did), once more with that count."""
    total = _count_frames(path)
    result, decoded = read(total)
    if result is None:
        logger.warning("video %s: the header says %d frames but %d decode; resampling", path, total, decoded)
        result, _ = read(decoded)
    if result is None:
        raise MediaError(f"cannot read video {path}: its frame count is inconsistent; re-encode it")
    return result


# ---------------------------------------------------------------------------------------- images


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))
    return image.convert("RGB")


def _float_to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    if values.size and not np.isfinite(values).all():
        raise MediaError(f"{what} contains NaN or infinite values")
    if values.size and (values.min() < -1e-3 or values.max() > 1 + 1e-3):
        raise MediaError(
            f"{what} has float values in [{values.min():.3g}, {values.max():.3g}]; float pixels must be in [0, 1]"
        )
    return np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)


def _to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if np.issubdtype(values.dtype, np.floating):
        return _float_to_uint8(values.astype(np.float32, copy=False), what)
    if np.issubdtype(values.dtype, np.integer):
        if values.size and (values.min() < 0 or values.max() > 255):
            raise MediaError(f"{what} has integer values outside 0..255; convert it to uint8 first")
        return values.astype(np.uint8)
    raise MediaError(f"{what} has unsupported dtype {values.dtype}; use uint8 or float in [0, 1]")


def _rgb_channels(pixels: np.ndarray, what: str) -> np.ndarray:
    """Channel-last pixels with 1, 3 or 4 channels to RGB (alpha is dropped, grey is repeated)."""
    if pixels.shape[-1] == 3:
        return pixels
    if pixels.shape[-1] == 4:
        return pixels[..., :3]
    if pixels.shape[-1] == 1:
        return np.repeat(pixels, 3, axis=-1)
    raise MediaError(f"{what} has shape {tuple(pixels.shape)}; expected 3 colour channels")


def _tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype != torch.float64:
        tensor = tensor.float()
    return tensor.numpy()


def _channels_first(first: int, last: int, prefer_first: bool) -> bool:
    """Whether a C x H x W layout is meant; ambiguous shapes follow the torch (first) or numpy (last) habit."""
    first_fits, last_fits = first in (1, 3, 4), last in (1, 3, 4)
    if first_fits and last_fits:
        return prefer_first if first == last else first == 3
    return first_fits


def _image_array(source: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 [H, W, 3] from H x W, H x W x C or C x H x W pixels; a leading batch of 1 is dropped."""
    is_tensor = isinstance(source, torch.Tensor)
    what = "image tensor" if is_tensor else "image array"
    pixels = _tensor_to_numpy(source) if is_tensor else np.asarray(source)
    if pixels.ndim == 4 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3:
        raise MediaError(f"{what} has shape {tuple(pixels.shape)}; expected H x W x 3 or 3 x H x W")
    if _channels_first(pixels.shape[0], pixels.shape[-1], prefer_first=is_tensor):
        pixels = np.moveaxis(pixels, 0, -1)
    return np.ascontiguousarray(_to_uint8(_rgb_channels(pixels, what), what))


def _open_image(path: Path) -> Image.Image:
    _check_file(path, "image")
    try:
        with Image.open(path) as image:
            image.seek(0)
            upright = ImageOps.exif_transpose(image)
            return _pil_to_rgb(upright)
    except Exception as exc:  # any failure to decode a user file is a bad file
        raise MediaError(f"cannot read image {path}: not an image Pillow can decode ({_reason(exc)})") from exc


def read_image(source: ImageSource) -> Image.Image:
    """An RGB PIL image from a path, a PIL image, a numpy array or a torch tensor (uint8 or float in [0, 1])."""
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source)
    if isinstance(source, np.ndarray | torch.Tensor):
        return Image.fromarray(_image_array(source))
    if isinstance(source, str | os.PathLike):
        return _open_image(Path(source))
    raise MediaError(
        f"unsupported image input of type {type(source).__name__}; give a file path, PIL image, array or tensor"
    )


# ---------------------------------------------------------------------------------------- tensors


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


class _Sampler:
    """Yields the RGB frames at sorted ``indices`` while decoding, and records how many frames were decoded."""

    def __init__(self, frames: Iterator[av.VideoFrame], indices: Sequence[int]) -> None:
        self.frames = frames
        self.indices = indices
        self.decoded = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        wanted = iter(self.indices)
        target = next(wanted)
        size: tuple[int, int] | None = None
        for index, frame in enumerate(self.frames):
            self.decoded = index + 1
            size = size or (frame.width, frame.height)
            if index < target:
                continue
            rgb = _frame_rgb(frame, size)
            while target == index:
                yield rgb
                target = next(wanted, None)
            if target is None:
                return


def _sample_file(
    path: Path, total: int, fps: float, max_frames: int, max_size: int, source_fps: float | None
) -> tuple[torch.Tensor | None, int]:
    """The model tensor, or ``None`` and the real frame count when fewer frames decode than ``total``."""
    if total < MIN_FRAMES:
        raise MediaError(f"video {path} is too short: {total} frame(s), at least {MIN_FRAMES} are needed")
    with _open_video(path) as (container, stream):
        native = source_fps or _native_fps(container, stream, total)
        indices = frame_indices(total, native, fps, max_frames)
        sampler = _Sampler(_decoded_frames(container, stream, path), indices)
        try:
            return _frames_to_model(sampler, len(indices), max_size), total
        except _ShortVideo:
            return None, sampler.decoded


def _file_video(path: Path, fps: float, max_frames: int, max_size: int, source_fps: float | None) -> torch.Tensor:
    """Decode only up to the last sampled frame, and convert only the sampled frames."""
    return _with_decoded_count(path, lambda total: _sample_file(path, total, fps, max_frames, max_size, source_fps))


def _channels_last_video(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.ndim != 4:
        raise MediaError(f"video tensor has shape {tuple(tensor.shape)}; expected T x H x W x 3 or T x 3 x H x W")
    if _channels_first(tensor.shape[1], tensor.shape[-1], prefer_first=True):
        return tensor.permute(0, 2, 3, 1)
    return tensor


def _memory_video(source: np.ndarray | torch.Tensor | Sequence[ImageSource]) -> tuple[int, Callable[[int], np.ndarray]]:
    """Frame count and a uint8 [H, W, 3] getter for an in-memory video."""
    if isinstance(source, torch.Tensor):
        tensor = _channels_last_video(source.detach().cpu())
        return tensor.shape[0], lambda i: _image_array(_tensor_to_numpy(tensor[i]))
    if isinstance(source, np.ndarray):
        if source.ndim != 4:
            raise MediaError(f"video array has shape {source.shape}; expected T x H x W x 3")
        return source.shape[0], lambda i: _image_array(source[i])
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
        total = _count_frames(path)
        with _open_video(path) as (container, stream):
            native = source_fps or _native_fps(container, stream, total)
            first = next(iter(_decoded_frames(container, stream, path)), None)
            if first is None:
                raise MediaError(f"video {path} contains no frames; re-export it")
            height, width = _frame_rgb(first, (first.width, first.height)).shape[:2]
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
    return [Image.fromarray(_image_array(frames[i])) for i in picks]


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
        with _open_video(path) as (container, stream):
            decoded = sum(1 for _, _ in zip(range(MIN_FRAMES), _decoded_frames(container, stream, path), strict=False))
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
        total = _count_frames(path)
        with _open_video(path) as (container, stream):
            return total, _native_fps(container, stream, total)
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
