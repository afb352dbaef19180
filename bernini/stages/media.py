"""The media stage: every visual input preprocessed and VAE-encoded; the first video (else the image) sets the
target geometry, snapped to the latent grid."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from ..conditions import Conditions, Extension, LatentCodec, run_geometry
from ..errors import MediaError
from ..resolved import ResolvedRequest
from .batch import RenderBatch, silent
from .components import Components, Runtime


def encode_media(batch: RenderBatch, components: Components, runtime: Runtime) -> RenderBatch:
    from ..io.media import preprocess_image, preprocess_video, to_preview_frames

    resolved = batch.resolved
    media = resolved.media
    total = len(media.video) + (media.image is not None) + len(media.images) + (resolved.extend is not None)
    report = batch.report if total else silent
    report("encode", 0, total)
    vae = components.vae
    codec = LatentCodec(vae)
    conditions = Conditions()
    video_size: tuple[int, int, int] | None = None
    image_size: tuple[int, int] | None = None
    with runtime.placement.active(vae):
        for index, item in enumerate(media.video):
            pixels = preprocess_video(
                item, media.fps, resolved.geometry.frames, media.max_image_size, source_fps=media.video_fps
            )
            batch.previews.append(to_preview_frames(pixels))
            if index == 0:
                video_size = tuple(pixels.shape[1:4])
            conditions.videos.append(codec.encode(pixels))
            report("encode", len(conditions.videos), total)
        if media.image is not None:
            pixels = preprocess_image(media.image, media.max_image_size)
            image_size = tuple(pixels.shape[1:3])
            conditions.image = codec.encode(pixels.unsqueeze(1))
            report("encode", len(conditions.videos) + 1, total)
        for item in media.images:
            conditions.images.append(codec.encode(preprocess_image(item, media.max_image_size).unsqueeze(1)))
            report("encode", total - len(media.images) + len(conditions.images), total)
        if resolved.extend is not None:
            batch.extension = encode_extension(resolved, codec)
            report("encode", total, total)
            video_size = (resolved.geometry.frames, *batch.extension.frames.shape[1:3])
    (batch.frames, batch.height, batch.width), adjustments = run_geometry(
        resolved, components.latent_grid, video_size, image_size
    )
    batch.conditions = conditions
    batch.adjustments.extend(adjustments)
    return batch


def encode_extension(resolved: ResolvedRequest, codec: LatentCodec) -> Extension:
    """The clip of ``--extend`` read whole (not resampled) at the run's size, and its last ``keep`` frames encoded
    as a video of their own: the latents the run holds as its first latent frames."""
    from ..io.media import clip_pixels, read_clip

    extend = resolved.extend
    assert extend is not None
    frames = read_clip(extend.clip, resolved.media.max_image_size)
    if len(frames) < extend.keep:  # the header promised more frames than decode
        raise MediaError(
            f"the clip to extend decodes to {len(frames)} frame(s); --extend keeps its last {extend.keep}: "
            "give a longer clip"
        )
    latents = codec.encode(clip_pixels(frames[-extend.keep :]))
    record = {
        "clip": _describe(extend.clip),
        "sha256": _digest(extend.clip, frames),
        "clip_frames": len(frames),
        "frames_kept": extend.keep,
        "new_frames": extend.new,
        "output_frames": len(frames) + extend.new,
    }
    return Extension(frames, extend.keep, latents, record)


def _describe(clip: Any) -> str:
    from ..request import describe_media

    return str(describe_media(clip))


def _digest(clip: Any, frames: np.ndarray) -> str:
    """The clip file's SHA-256, or that of the frames of an in-memory clip."""
    digest = hashlib.sha256()
    if isinstance(clip, str | os.PathLike):
        with open(clip, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    else:
        digest.update(np.ascontiguousarray(frames).tobytes())
    return digest.hexdigest()
