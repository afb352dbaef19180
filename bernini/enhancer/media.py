"""Packing media for the enhancer request: images and video frames as base64 data URIs.

Image files keep their bytes and real MIME type when chat endpoints accept the format as-is;
everything else (arrays, PIL images, other file formats, video frames) is encoded as lossless PNG.
Of each video, the first, middle and last frames are sent. Every attached image is numbered
``[Image n]`` in the user message, and a legend tells the model what each one is.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
from PIL import Image

from .templates import Template

__all__ = ["ImageLike", "MediaProblem", "build_messages", "collect_media"]

ImageLike: TypeAlias = "str | os.PathLike[str] | Image.Image | np.ndarray"

# Formats chat endpoints accept as-is; anything else PIL can read is re-encoded as PNG.
_PASSTHROUGH_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}


class MediaProblem(Exception):
    """An input that cannot be encoded for the enhancer; becomes a fallback warning."""


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _png_bytes(image: Image.Image) -> bytes:
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "1"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _array_to_pil(array: np.ndarray, what: str) -> Image.Image:
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise MediaProblem(f"{what} must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise MediaProblem(f"{what} must be HxW, HxWx3 or HxWx4, got shape {tuple(array.shape)}")
    return Image.fromarray(np.ascontiguousarray(array))


def _encode_image(image: ImageLike, what: str) -> str:
    """A data URI for one image: files keep their bytes and real MIME type, the rest becomes PNG."""
    if isinstance(image, Image.Image):
        return _data_uri("image/png", _png_bytes(image))
    if isinstance(image, np.ndarray):
        return _data_uri("image/png", _png_bytes(_array_to_pil(image, what)))
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            with open(path, "rb") as file:
                data = file.read()
            with Image.open(io.BytesIO(data)) as opened:
                image_format = (opened.format or "").upper()
                mime = _PASSTHROUGH_MIME.get(image_format)
                # Multi-picture JPEG from phones; the first picture is JPEG.
                if mime is None and image_format == "MPO":
                    mime = "image/jpeg"
                if mime is not None:
                    return _data_uri(mime, data)
                opened.load()
                return _data_uri("image/png", _png_bytes(opened))
        except (OSError, ValueError) as exc:
            raise MediaProblem(f"cannot read {what} {path!r}: {type(exc).__name__}: {exc}") from None
    raise MediaProblem(f"{what} has unsupported type {type(image).__name__}")


def _frame_indices(frame_count: int) -> list[int]:
    """Three evenly spaced frame indices: first, middle and last (``round(i*(n-1)/2)``)."""
    return [int(round(step * (frame_count - 1) / 2)) for step in range(3)]


def _video_frame_uris(video: np.ndarray, what: str) -> list[str]:
    frames = np.asarray(video)
    if frames.ndim != 4 or frames.shape[0] < 1:
        raise MediaProblem(f"{what} must be a [T,H,W,3] frame array, got shape {tuple(frames.shape)}")
    return [
        _data_uri("image/png", _png_bytes(_array_to_pil(frames[index], what))) for index in _frame_indices(len(frames))
    ]


def _label_range(first: int, last: int) -> str:
    return f"[Image {first}]" if first == last else f"[Image {first}] to [Image {last}]"


def collect_media(
    template: Template, videos: Sequence[np.ndarray], image: ImageLike | None, images: Sequence[ImageLike]
) -> tuple[list[str], list[str], list[str]]:
    """Encode the media the template uses; returns (data URIs, legend lines, notes about ignored media)."""
    uris: list[str] = []
    legend: list[str] = []
    ignored: list[str] = []
    media = template.media

    if "frames" in media:
        for video_number, video in enumerate(videos, 1):
            name = "the source video" if len(videos) == 1 else f"video {video_number}"
            first_label = len(uris) + 1
            uris.extend(_video_frame_uris(video, f"video {video_number}"))
            legend.append(f"{_label_range(first_label, len(uris))}: start, middle and end frames of {name}")
    elif videos:
        ignored.append(f"{len(videos)} video(s)")

    group = [image] if image is not None else []
    group += list(images)
    if "refs" in media or "keyframes" in media:
        for position, item in enumerate(group):
            uris.append(_encode_image(item, f"image {position}"))
            if "refs" in media:
                legend.append(f"[Image {len(uris)}]: reference image{position}")
            else:
                legend.append(f"[Image {len(uris)}]: keyframe {position + 1} of {len(group)}")
    else:
        if image is not None:
            if "image" in media:
                uris.append(_encode_image(image, "image"))
                legend.append(f"[Image {len(uris)}]: {template.image_role}")
            else:
                ignored.append("the image")
        if images:
            ignored.append(f"{len(images)} reference image(s)")
    return uris, legend, ignored


def build_messages(template: Template, prompt: str, uris: list[str], legend: list[str]) -> list[dict[str, Any]]:
    """The chat messages: the template's system message, then the text and the numbered images."""
    if template.instruction:
        text = template.instruction
        if legend:
            text += "\n\nAttached images:\n" + "\n".join(legend)
        text += f"\n\nUser request: {prompt}"
    else:
        text = prompt
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    for image_number, uri in enumerate(uris, 1):
        parts.append({"type": "text", "text": f"\n[Image {image_number}]:"})
        parts.append({"type": "image_url", "image_url": {"url": uri}})
    return [{"role": "system", "content": template.system}, {"role": "user", "content": parts}]
