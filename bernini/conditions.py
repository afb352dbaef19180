"""Conditions: media become normalised VAE latents, then the segment combos with their source ids.

Nothing here knows the renderer or diffusers: the VAE comes in as a module, and every scale factor and
channel count is read from its config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .adjustments import Adjustment, changed
from .models.segment import Segment
from .resolved import ResolvedRequest, SourceIdPolicy
from .sampling.guidance import Combo

RENDERER_COMBOS = (Combo.EMPTY, Combo.VIDEO, Combo.IMAGES, Combo.ALL)


@dataclass
class Conditions:
    """Encoded visual inputs, each its own ``[1, C, T, H, W]`` latent at its own size."""

    videos: list[torch.Tensor] = field(default_factory=list)
    image: torch.Tensor | None = None
    images: list[torch.Tensor] = field(default_factory=list)

    def combo(self, combo: Combo | str, policy: SourceIdPolicy | None = None) -> list[Segment]:
        """Segments of a combo: ``0`` none; ``V`` the first video; ``I`` the images; ``VI`` everything."""
        combo = Combo(combo)
        images = ([self.image] if self.image is not None else []) + list(self.images)
        latents = {
            Combo.EMPTY: [],
            Combo.VIDEO: self.videos[:1],
            Combo.IMAGES: images,
            Combo.ALL: list(self.videos) + images,
            Combo.VIDEOS: list(self.videos),
        }[combo]
        ids = (policy or SourceIdPolicy()).ids(len(latents))
        return [Segment(latent, source_id) for latent, source_id in zip(latents, ids, strict=True)]

    def combos(self, policy: SourceIdPolicy, extra: tuple[Combo, ...] = ()) -> dict[Combo, list[Segment]]:
        """Bernini-R's four combos (always, so the sidecar lists their ids), plus any ``extra`` a mode reads."""
        names = dict.fromkeys((*RENDERER_COMBOS, *extra))
        return {combo: self.combo(combo, policy) for combo in names}


@dataclass
class Extension:
    """A clip being continued (``--extend``): all its frames (uint8 ``[T, H, W, 3]`` at the run's size), the
    normalised latents of its last ``keep`` frames, which the run holds as its first latent frames, and what the
    sidecar records of it."""

    frames: np.ndarray
    keep: int
    latents: torch.Tensor
    record: dict[str, Any]


@dataclass(frozen=True)
class LatentGrid:
    """How pixels map to latents and latents to tokens, from the VAE and expert configs."""

    channels: int
    temporal: int  # frames per latent frame after the first
    spatial: int  # pixels per latent cell
    patch: tuple[int, int, int]  # the expert's (t, h, w) patch

    @property
    def size_multiple(self) -> int:
        """Output sides snap to this: one token covers ``spatial × patch`` pixels."""
        return self.spatial * self.patch[1]

    def snap_frames(self, frames: int) -> int:
        return frames // self.temporal * self.temporal + 1 if frames > 1 else 1

    def snap_side(self, pixels: int) -> int:
        return max(self.size_multiple, pixels // self.size_multiple * self.size_multiple)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        return (1, self.channels, (frames - 1) // self.temporal + 1, height // self.spatial, width // self.spatial)


class LatentCodec:
    """The Wan VAE with Bernini's per-channel normalisation (``(z - mean) / std``)."""

    def __init__(self, vae) -> None:
        self.vae = vae
        config = vae.config
        self.mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    @staticmethod
    def grid(vae_config, patch_size) -> LatentGrid:
        """Scale factors of the VAE config (``scale_factor_*`` where present, else its downsampling layout)."""
        temporal = getattr(vae_config, "scale_factor_temporal", None)
        spatial = getattr(vae_config, "scale_factor_spatial", None)
        if temporal is None or spatial is None:
            downsample = list(vae_config.temperal_downsample)
            temporal = 2 ** sum(bool(x) for x in downsample)
            spatial = 2 ** len(downsample)
        return LatentGrid(int(vae_config.z_dim), int(temporal), int(spatial), tuple(int(p) for p in patch_size))

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[3, T, H, W]`` in [-1, 1] → normalised latent ``[1, C, T', H', W']`` (distribution mode).

        The Wan VAE encodes causally (the first frame, then four at a time, a feature cache carried over); that
        loop runs here with only the current chunk's pixels on the device (:meth:`streams`), so a long source
        never sits on the device whole. Other VAEs, and tiled encoding, take the pixels in one call."""
        if not self.streams:
            latent = self.vae.encode(pixels.unsqueeze(0).to(self.device, self.dtype)).latent_dist.mode().float()
        else:
            latent = self._encode_chunks(pixels.unsqueeze(0)).float()
        return (latent - self.mean.to(latent.device)) / self.std.to(latent.device)

    @property
    def streams(self) -> bool:
        """Whether the Wan VAE's causal loops run here chunk by chunk (untiled, unpatchified, the loop's parts)."""
        vae = self.vae
        parts = ("clear_cache", "encoder", "quant_conv", "decoder", "post_quant_conv", "_enc_feat_map")
        return (
            not getattr(vae, "use_tiling", False)
            and getattr(vae.config, "patch_size", None) is None
            and all(hasattr(vae, name) for name in parts)
        )

    def _encode_chunks(self, pixels: torch.Tensor) -> torch.Tensor:
        """diffusers' ``AutoencoderKLWan._encode`` with each chunk moved to the device as it is encoded; the
        distribution's mode (its mean channels)."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        vae = self.vae
        vae.clear_cache()
        try:
            outs = []
            starts = [0, *range(1, pixels.shape[2], 4)]
            for start in starts:
                stop = 1 if start == 0 else start + 4
                vae._enc_conv_idx = [0]
                chunk = pixels[:, :, start:stop].to(self.device, self.dtype)
                outs.append(vae.encoder(chunk, feat_cache=vae._enc_feat_map, feat_idx=vae._enc_conv_idx))
            moments = vae.quant_conv(torch.cat(outs, 2))
        finally:
            vae.clear_cache()
        return DiagonalGaussianDistribution(moments).mode()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents → pixels ``[B, 3, T, H, W]`` in [-1, 1]."""
        z = latents.float() * self.std.to(latents.device) + self.mean.to(latents.device)
        return self.vae.decode(z.to(self.device, self.dtype), return_dict=False)[0].float()


def run_geometry(
    resolved: ResolvedRequest, grid: LatentGrid, video: tuple[int, int, int] | None, image: tuple[int, int] | None
) -> tuple[tuple[int, int, int], list[Adjustment]]:
    """The ``(frames, height, width)`` a plan renders at, and what changed from what it asked: the first video sets
    the frames (and, unless the size is fixed, the size), else the source image the size; then the latent grid snaps
    them. ``video`` is the preprocessed first video's ``(frames, height, width)``, ``image`` the source image's
    ``(height, width)`` (measured, or probed before loading: :func:`probed_geometry`)."""
    frames, height, width = resolved.geometry.frames, resolved.geometry.height, resolved.geometry.width
    source_size = video[1:] if video is not None else image
    if video is not None:
        frames = video[0]
    if source_size is not None and not resolved.geometry.fixed_size:
        height, width = source_size
    adjustments = source_geometry_adjustments(resolved, frames, height, width, source_size)
    snapped = grid.snap_frames(frames), grid.snap_side(height), grid.snap_side(width)
    multiple = grid.size_multiple
    adjustments += changed("num_frames", frames, snapped[0], f"the VAE takes {grid.temporal}k+1 frames")
    adjustments += changed("height", height, snapped[1], f"sides are multiples of {multiple} pixels")
    adjustments += changed("width", width, snapped[2], f"sides are multiples of {multiple} pixels")
    return snapped, adjustments


def probed_geometry(resolved: ResolvedRequest, grid: LatentGrid) -> tuple[tuple[int, int, int], list[Adjustment]]:
    """:func:`run_geometry` from the media's headers and first frames, before anything loads (``--dry_run``)."""
    from .io.media import image_input_size, video_input_size

    media = resolved.media
    video = None
    if media.video:
        video = video_input_size(
            media.video[0], media.fps, resolved.geometry.frames, media.max_image_size, source_fps=media.video_fps
        )
    elif resolved.extend is not None:
        size = video_input_size(resolved.extend.clip, media.fps, resolved.extend.keep, media.max_image_size)[1:]
        video = (resolved.geometry.frames, *size)
    image = image_input_size(media.image, media.max_image_size) if media.image is not None else None
    return run_geometry(resolved, grid, video, image)


def source_geometry_adjustments(
    resolved: ResolvedRequest, frames: int, height: int, width: int, source_size: tuple[int, int] | None = None
) -> list[Adjustment]:
    """What the source media changed from the geometry asked for (before snapping to the latent grid), and, on the
    full model, where its shipped settings render at another size than the source's (``source_size``)."""
    asked = resolved.geometry
    media = resolved.media
    if media.video:
        source = "the source video"
        shorter = f"{source} is shorter: it gives {frames} frames (4k+1) at {media.fps:g} fps"
        adjustments = changed("num_frames", asked.frames, frames, shorter)
    elif media.image is not None:
        source, adjustments = "the source image", []
    elif resolved.extend is not None:
        source, adjustments = "the clip being extended", []
    else:
        return []
    if asked.fixed_size and asked.shipped and source_size is not None:
        why = (
            f"the full model's shipped {resolved.task.name} settings ({resolved.planner.version}) render "
            f"{asked.width}x{asked.height}, not {source}'s size; --height 0 --width 0 keep it"
        )
        used, own = {"height": height, "width": width}, dict(zip(("height", "width"), source_size, strict=True))
        return adjustments + [a for side in asked.shipped for a in changed(side, own[side], used[side], why)]
    if asked.fixed_size or asked.height == asked.width == 0:  # the size asked for is what runs, or "the source's"
        return adjustments
    why = f"taken from {source} (at most --max_image_size {media.max_image_size})"
    return adjustments + changed("height", asked.height, height, why) + changed("width", asked.width, width, why)
