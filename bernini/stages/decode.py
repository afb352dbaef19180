"""The decoding stage: latents → frames as ``np`` ([T, H, W, 3] in [0, 1]), ``pil`` (list), ``pt``
([T, 3, H, W]) or ``uint8`` ([T, H, W, 3], what a job writes); the progress hook hears ``decode`` per call of the
VAE's decoder (one per latent frame, or per tile).

The Wan VAE decodes causally, one latent frame (four pixel frames) per decoder call with a feature cache. The
stage runs that loop itself and moves each chunk's frames to host memory as it comes (float32 for ``np`` and
``pt``, one byte per value for ``uint8``), so the device never holds the whole clip's pixels: its decode peak is
one chunk's activations, whatever the length (``bernini.runtime.memory`` sizes it so). Tiled decoding (chosen by
placement on a tight budget) and VAEs without that loop decode in one call as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..conditions import Extension, LatentCodec
from .batch import OnProgress, RenderBatch, silent
from .components import Components, Runtime

HOST_DTYPES = {"np": np.float32, "pt": np.float32, "pil": np.float32, "uint8": np.uint8}


def decode(batch: RenderBatch, components: Components, runtime: Runtime) -> RenderBatch:
    assert batch.latents is not None, "the denoising stage runs first"
    frames = decode_latents(components, runtime, batch.latents, batch.output_type, batch.report)
    if batch.extension is not None:
        frames = splice_clip(frames, batch.extension, batch.output_type)
    batch.output = frames
    return batch


@torch.no_grad()
def decode_latents(
    components: Components,
    runtime: Runtime,
    latents: torch.Tensor,
    output_type: str = "np",
    on_progress: OnProgress | None = None,
) -> Any:
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
            if LatentCodec(vae).streams:
                video = _to_host(LatentCodec(vae), latents, components.latent_grid.temporal, output_type)
            else:
                video = _postprocess(LatentCodec(vae).decode(latents), output_type)
    finally:
        handle.remove()
    if output_type == "pt":
        video = torch.from_numpy(video).permute(0, 3, 1, 2)
    elif output_type == "pil":
        from PIL import Image

        video = [Image.fromarray((frame * 255).round().astype(np.uint8)) for frame in video]
    report("decode", total, total)
    return video


def decoded_chunks(codec: LatentCodec, latents: torch.Tensor) -> Iterator[torch.Tensor]:
    """The Wan VAE's causal decode as in diffusers' ``AutoencoderKLWan._decode`` (one latent frame per decoder
    call, the feature cache carried over; unpatchified VAEs only), yielding each call's pixels ``[1, 3, t, H, W]``
    clamped to [-1, 1] instead of concatenating them on the device."""
    vae = codec.vae
    z = latents.float() * codec.std.to(latents.device) + codec.mean.to(latents.device)
    z = z.to(codec.device, codec.dtype)
    vae.clear_cache()
    try:
        x = vae.post_quant_conv(z)
        for index in range(x.shape[2]):
            vae._conv_idx = [0]
            out = vae.decoder(
                x[:, :, index : index + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=index == 0
            )
            yield torch.clamp(out, min=-1.0, max=1.0).float()
    finally:
        vae.clear_cache()


def _postprocess(pixels: torch.Tensor, output_type: str) -> np.ndarray:
    """Pixels ``[1, 3, t, H, W]`` in [-1, 1] → host frames ``[t, H, W, 3]``: [0, 1] float32 (diffusers'
    ``VideoProcessor`` arithmetic), or uint8 as :func:`bernini.io.output.to_uint8_frames` rounds them."""
    frames = (pixels[0].permute(1, 0, 2, 3) * 0.5 + 0.5).clamp(0, 1)
    if output_type == "uint8":
        frames = (frames * 255.0).round().to(torch.uint8)
    return frames.cpu().permute(0, 2, 3, 1).numpy()


def _to_host(codec: LatentCodec, latents: torch.Tensor, temporal: int, output_type: str) -> np.ndarray:
    """Every chunk's frames written into one host array as it is decoded."""
    count = (int(latents.shape[2]) - 1) * temporal + 1
    out: np.ndarray | None = None
    written = 0
    for chunk in decoded_chunks(codec, latents):
        frames = _postprocess(chunk, output_type)
        if out is None:
            out = np.empty((count, *frames.shape[1:]), dtype=HOST_DTYPES[output_type])
        out[written : written + len(frames)] = frames
        written += len(frames)
    assert out is not None and written == count, f"the VAE decoded {written} frames, {count} expected"
    return out


def splice_clip(frames: Any, extension: Extension, output_type: str) -> Any:
    """``--extend``: the whole clip followed by the frames rendered after its kept part; the clip's frames are its
    own pixels, not their decode (the decoded kept frames are dropped)."""
    clip, keep = extension.frames, extension.keep
    if output_type == "latent":
        return frames
    if output_type == "uint8":
        return np.concatenate([clip, frames[keep:]])
    if output_type == "np":
        return np.concatenate([clip.astype(np.float32) / 255.0, frames[keep:]])
    if output_type == "pt":
        return torch.cat([torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255.0, frames[keep:]])
    from PIL import Image

    return [Image.fromarray(frame) for frame in clip] + list(frames[keep:])
