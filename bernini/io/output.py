"""Writing generated images, videos and their JSON sidecars.

Every file is written to a temporary sibling and renamed into place, so an interrupted run never
leaves a truncated output that looks finished. Videos are H.264 in yuv420p, encoded with the BT.709
matrix and tagged as such, so players and decoders convert the colours back the same way.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc
from PIL import Image

from bernini.adjustments import Adjustment
from bernini.errors import MediaError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".m4v"})
"""Containers that hold H.264; a multi-frame output with any other suffix becomes ``.mp4``."""
_OTHER_VIDEO_SUFFIXES = frozenset({".webm", ".avi", ".gif"})
ENCODER_THREADS = 4
"""x264 picks its thread count from the CPUs it may use, and the bitstream depends on it: a fixed count
makes the same frames the same bytes on any machine."""
_FLOAT_SLACK = 0.5
"""Float frames a little outside [0, 1] (decoder overshoot) are clipped; further out means a wrong scale."""


def _float_frames_to_uint8(values: np.ndarray) -> np.ndarray:
    if values.size and not np.isfinite(values).all():
        raise MediaError("frames contain NaN or infinite values; the generation diverged")
    if values.size and (values.min() < -_FLOAT_SLACK or values.max() > 1 + _FLOAT_SLACK):
        raise MediaError(f"float frames span [{values.min():.3g}, {values.max():.3g}]; float frames must be in [0, 1]")
    return np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)


def _array_to_uint8(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.uint8:
        return values
    if np.issubdtype(values.dtype, np.floating):
        return _float_frames_to_uint8(values.astype(np.float32, copy=False))
    if np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_:
        values = values.astype(np.int64) * (255 if values.dtype == np.bool_ else 1)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise MediaError("integer frames must be in 0..255; convert them to uint8 first")
        return values.astype(np.uint8)
    raise MediaError(f"frames have unsupported dtype {values.dtype}; use uint8 or float in [0, 1]")


def _frames_array(frames: Any) -> np.ndarray:
    if isinstance(frames, Image.Image):
        return np.asarray(frames.convert("RGB"))[None]
    if isinstance(frames, torch.Tensor):
        tensor = frames.detach().cpu()
        return (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    if isinstance(frames, Sequence) and not isinstance(frames, str | bytes):
        if not frames:
            raise MediaError("there are no frames to write")
        arrays = [to_uint8_frames(frame) for frame in frames]
        sizes = {array.shape[1:] for array in arrays}
        if len(sizes) > 1:
            raise MediaError(f"frames differ in size ({sorted(sizes)}); every frame must have the same size")
        return np.concatenate(arrays)
    return np.asarray(frames)


def to_uint8_frames(frames: Any) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` from float ``[0, 1]`` or uint8 arrays / tensors, or a list of PIL images.

    Arrays are ``[T, H, W, C]`` or ``[H, W, C]`` (a leading batch of one is dropped); tensors may also be
    channels-first. One or four channels become RGB.
    """
    values = _frames_array(frames)
    if values.ndim == 5 and values.shape[0] == 1:
        values = values[0]
    if values.ndim == 3:
        values = values[None]
    if values.ndim != 4:
        raise MediaError(f"frames have shape {values.shape}; expected T x H x W x 3 or H x W x 3")
    if values.shape[-1] not in (1, 3, 4) and values.shape[1] in (1, 3, 4) and isinstance(frames, torch.Tensor):
        values = values.transpose(0, 2, 3, 1)
    if values.shape[-1] == 1:
        values = np.repeat(values, 3, axis=-1)
    elif values.shape[-1] == 4:
        values = values[..., :3]
    elif values.shape[-1] != 3:
        raise MediaError(f"frames have shape {values.shape}; expected 3 colour channels last")
    if values.shape[0] == 0 or values.shape[1] == 0 or values.shape[2] == 0:
        raise MediaError(f"frames have shape {values.shape}; there is nothing to write")
    return np.ascontiguousarray(_array_to_uint8(values))


@functools.cache
def _file_mode() -> int:
    """Permissions a plain ``open()`` would give a new file (``mkstemp`` uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` with the same suffix; move it over ``path`` only on success."""
    target = Path(path)
    if target.is_dir():
        raise MediaError(f"output path {target} is a directory; give a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent)
    except OSError as exc:
        raise MediaError(f"cannot write {target}: {exc.strerror or exc}; choose a writable location") from exc
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, _file_mode())
        os.replace(temporary, target)
    except OSError as exc:  # disk full, quota, a folder that vanished: one line, nothing left behind
        temporary.unlink(missing_ok=True)
        if isinstance(exc, MediaError):
            raise
        reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
        raise MediaError(f"cannot write {target}: {reason}; free some space or choose another location") from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _image_format(path: Path) -> str:
    extension = path.suffix.lower()
    image_format = Image.registered_extensions().get(extension)
    if image_format is None:
        raise MediaError(f"cannot write image {path}: unknown image type {extension or '(none)'}; use .png")
    return image_format


def write_image(path: str | os.PathLike, frame: Any) -> Path:
    """Write one frame as an image whose type follows the suffix (PNG is lossless), atomically."""
    target = Path(path)
    pixels = to_uint8_frames(frame)
    if pixels.shape[0] != 1:
        raise MediaError(f"cannot write {pixels.shape[0]} frames as the image {target}; use a video path")
    image_format = _image_format(target)
    options = {"quality": 95} if image_format in ("JPEG", "WEBP") else {}
    with atomic_write(target) as temporary:
        Image.fromarray(pixels[0]).save(temporary, format=image_format, **options)
    return target


def _even_sized(frames: np.ndarray) -> np.ndarray:
    """Pad odd heights/widths by repeating the last row/column: yuv420p needs even sizes, and nothing is lost."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _frame_rate(fps: float) -> Fraction:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise MediaError(f"video frame rate must be a positive number (got {fps!r})")
    return Fraction(value).limit_denominator(1001)


def write_video(path: str | os.PathLike, frames: Any, fps: float, crf: int = 8) -> Path:
    """Write every frame as H.264 (yuv420p, BT.709, ``crf``) at ``fps``, atomically.

    Odd heights or widths are padded to even by repeating the last row or column. The same frames give the
    same bytes on any machine (:data:`ENCODER_THREADS`; no creation time is written).
    """
    target = Path(path)
    pixels = _even_sized(to_uint8_frames(frames))
    rate = _frame_rate(fps)
    faststart = {"movflags": "+faststart"} if target.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
    with atomic_write(target) as temporary:
        try:
            with av.open(str(temporary), mode="w", options=faststart) as container:
                stream = container.add_stream("libx264", rate=rate, options={"crf": str(int(crf))})
                stream.width, stream.height = pixels.shape[2], pixels.shape[1]
                stream.pix_fmt = "yuv420p"
                context = stream.codec_context
                context.thread_count = ENCODER_THREADS
                context.colorspace = Colorspace.ITU709
                context.color_primaries = ColorPrimaries.BT709
                context.color_trc = ColorTrc.BT709
                context.color_range = ColorRange.MPEG
                for index, rgb in enumerate(pixels):
                    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                        format="yuv420p",
                        dst_colorspace=Colorspace.ITU709,
                        dst_color_range=ColorRange.MPEG,
                        dst_color_trc=ColorTrc.BT709,
                        dst_color_primaries=ColorPrimaries.BT709,
                    )
                    frame.pts = index
                    container.mux(stream.encode(frame))
                container.mux(stream.encode(None))
        except OSError:  # disk full, file too large (PyAV's errno errors are OSErrors): atomic_write says so
            raise
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(f"cannot write video {target}: {' '.join(str(exc).split())}; use an .mp4 path") from exc
    return target


def frame_path(directory: str | os.PathLike, index: int) -> Path:
    return Path(directory) / f"frame_{index:05d}.png"


def write_frames(directory: str | os.PathLike, frames: Any) -> list[Path]:
    """Write every frame as a lossless ``frame_00000.png``, ``frame_00001.png``, ... in ``directory``.

    All or nothing: when one frame cannot be written, the frames already written are removed.
    """
    pixels = to_uint8_frames(frames)
    written: list[Path] = []
    try:
        for index, frame in enumerate(pixels):
            written.append(write_image(frame_path(directory, index), frame))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def _output_path(path: Path, frame_count: int) -> Path:
    """``path`` with the suffix its content needs: images for one frame, H.264 video for several."""
    suffix = path.suffix.lower()
    keep, default = (IMAGE_SUFFIXES, ".png") if frame_count == 1 else (VIDEO_SUFFIXES, ".mp4")
    if suffix in keep:
        return path
    if suffix in IMAGE_SUFFIXES | VIDEO_SUFFIXES | _OTHER_VIDEO_SUFFIXES:
        return path.with_suffix(default)
    return path.with_name(path.name + default)


DIRECTORY_OUTPUT_STEM = "output"


def output_path(path: str | os.PathLike, frame_count: int) -> tuple[Path, list[Adjustment]]:
    """Where :func:`write_output` writes ``frame_count`` frames asked for ``path``, and what changed.

    A directory (an existing one, or a path ending in a separator) gets a file named ``output`` inside it.
    """
    asked = os.fspath(path)
    named = Path(asked)
    directory = named.is_dir() or asked.endswith(("/", os.sep))
    if directory:
        named = named / DIRECTORY_OUTPUT_STEM
    target = _output_path(named, frame_count)
    if directory:
        why = f"a directory was given; the file is named {target.name}"
    elif frame_count == 1:
        why = "one frame is written as an image"
    else:
        why = f"{frame_count} frames are written as an H.264 video"
    return target, [] if target == Path(asked) else [Adjustment("output", asked, str(target), why)]


def write_output(path: str | os.PathLike, frames: Any, fps: float) -> Path:
    """Write one frame as an image or several as an MP4, fixing the suffix to match; return the path written.

    ``out.mp4`` with one frame becomes ``out.png``, ``out.png`` with several becomes ``out.mp4``, and an
    unknown or missing suffix gets ``.png`` / ``.mp4`` appended.
    """
    pixels = to_uint8_frames(frames)
    target = _output_path(Path(path), pixels.shape[0])
    if pixels.shape[0] == 1:
        return write_image(target, pixels)
    return write_video(target, pixels, fps)


def sidecar_path(output: str | os.PathLike) -> Path:
    """The metadata file written next to an output: ``out.mp4`` -> ``out.mp4.json``."""
    output = Path(output)
    return output.with_name(output.name + ".json")


def _json_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def write_sidecar(output: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` as UTF-8 JSON (indent 2, key order kept) to :func:`sidecar_path` of ``output``."""
    target = sidecar_path(output)
    text = json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False, default=_json_value) + "\n"
    with atomic_write(target) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return target


def export_to_video(frames: Any, path: str | os.PathLike, fps: float = 16) -> Path:
    """Save generated frames: an MP4 for a video, a PNG for a single frame. Returns the path written."""
    return write_output(path, frames, fps)
