"""Decoding video files with PyAV: upright RGB frames, the native frame rate, and only as far as the frames a
caller picks (a damaged tail ends a clip early; a header that overstates its length is corrected)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np

from bernini.errors import MediaError

from .files import check_file, failure_reason

logger = logging.getLogger(__name__)

DEFAULT_FPS = 24.0
_MAX_PLAUSIBLE_FPS = 1000.0


@contextmanager
def open_video(path: Path) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    check_file(path, "video")
    try:
        container = av.open(str(path), mode="r")
    except Exception as exc:  # any failure to open a user file is a bad file
        raise MediaError(f"cannot read video {path}: not a video ffmpeg can decode ({failure_reason(exc)})") from exc
    try:
        if not container.streams.video:
            raise MediaError(f"video {path} has no video stream; give a file with moving pictures")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield container, stream
    finally:
        container.close()


def native_fps(container: av.container.InputContainer, stream: av.video.stream.VideoStream, frames: int) -> float:
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


def count_frames(path: Path) -> int:
    """Frame count without decoding: the header's count, else one packet per frame."""
    with open_video(path) as (container, stream):
        if stream.frames > 0:
            return stream.frames
        try:
            return sum(1 for packet in container.demux(stream) if packet.size)
        except Exception as exc:
            raise MediaError(f"cannot read video {path}: the file is damaged ({failure_reason(exc)})") from exc


def decoded_frames(
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
            raise MediaError(f"cannot read video {path}: the file is damaged ({failure_reason(exc)})") from exc
        logger.warning("video %s: decoding stopped after %d frames (%s)", path, count, failure_reason(exc))


def frame_rgb(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 [H, W, 3] upright; ``size`` is the stored (width, height) of the first frame, kept throughout."""
    rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
    quarter_turns = round(frame.rotation / 90) % 4 if frame.rotation else 0
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb


def read_video_frames(source: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode every frame of a video file to uint8 RGB ``[T, H, W, 3]`` plus its native frame rate."""
    path = Path(source)
    frames: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    with open_video(path) as (container, stream):
        for frame in decoded_frames(container, stream, path):
            size = size or (frame.width, frame.height)
            frames.append(frame_rgb(frame, size))
        fps = native_fps(container, stream, len(frames))
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
        with open_video(path) as (container, stream):
            native = native_fps(container, stream, total)
            indices = sorted(choose(total, native))
            if not indices:
                raise MediaError(f"video {path}: no frames were chosen")
            sampler = FrameSampler(decoded_frames(container, stream, path), indices)
            frames = list(sampler)
        if len(frames) < len(indices):
            return None, sampler.decoded
        return (np.stack(frames), native, total), total

    return with_decoded_count(path, pick)


def with_decoded_count(path: Path, read: Callable[[int], tuple[Any, int]]) -> Any:
    """``read(frame_count)`` with the header's count; when fewer frames decode (it returns None and how many
    did), once more with that count."""
    total = count_frames(path)
    result, decoded = read(total)
    if result is None:
        logger.warning("video %s: the header says %d frames but %d decode; resampling", path, total, decoded)
        result, _ = read(decoded)
    if result is None:
        raise MediaError(f"cannot read video {path}: its frame count is inconsistent; re-encode it")
    return result


# ---------------------------------------------------------------------------------------- images


class FrameSampler:
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
            rgb = frame_rgb(frame, size)
            while target == index:
                yield rgb
                target = next(wanted, None)
            if target is None:
                return
