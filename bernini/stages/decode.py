"""The decoding stage: latents → frames as ``np`` ([T, H, W, 3] in [0, 1]), ``pil`` (list) or ``pt``
([T, 3, H, W]); the progress hook hears ``decode`` per call of the VAE's decoder (one per latent frame, or per
tile)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..conditions import LatentCodec
from .batch import OnProgress, RenderBatch, silent
from .components import Components, Runtime


def decode(batch: RenderBatch, components: Components, runtime: Runtime) -> RenderBatch:
    assert batch.latents is not None, "the denoising stage runs first"
    batch.output = decode_latents(components, runtime, batch.latents, batch.output_type, batch.report)
    return batch


@torch.no_grad()
def decode_latents(
    components: Components,
    runtime: Runtime,
    latents: torch.Tensor,
    output_type: str = "np",
    on_progress: OnProgress | None = None,
) -> Any:
    from diffusers.video_processor import VideoProcessor

    report = on_progress or silent
    total = int(latents.shape[2])
    calls = [0]

    def chunk_done(*_: Any) -> None:
        calls[0] += 1
        if calls[0] < total:
            report("decode", calls[0], total)

    vae = components.vae
    report("decode", 0, total)
    handle = vae.decoder.register_forward_hook(chunk_done)
    try:
        with runtime.placement.active(vae):
            pixels = LatentCodec(vae).decode(latents)
    finally:
        handle.remove()
    processor = VideoProcessor(vae_scale_factor=components.latent_grid.spatial)
    if output_type == "pt":
        video = processor.postprocess_video(pixels, output_type="pt")[0]
        report("decode", total, total)
        return video
    video = processor.postprocess_video(pixels, output_type="np")[0]
    if output_type == "pil":
        from PIL import Image

        video = [Image.fromarray((frame * 255).round().astype(np.uint8)) for frame in video]
    report("decode", total, total)
    return video
