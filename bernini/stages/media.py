"""The media stage: every visual input preprocessed and VAE-encoded; the first video (else the image) sets the
target geometry, snapped to the latent grid."""

from __future__ import annotations

from ..conditions import Conditions, LatentCodec, run_geometry
from .batch import RenderBatch, silent
from .components import Components, Runtime


def encode_media(batch: RenderBatch, components: Components, runtime: Runtime) -> RenderBatch:
    from ..io.media import preprocess_image, preprocess_video, to_preview_frames

    resolved = batch.resolved
    media = resolved.media
    total = len(media.video) + (media.image is not None) + len(media.images)
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
    (batch.frames, batch.height, batch.width), adjustments = run_geometry(
        resolved, components.latent_grid, video_size, image_size
    )
    batch.conditions = conditions
    batch.adjustments.extend(adjustments)
    return batch
