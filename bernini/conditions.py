"""Conditions: media become normalised VAE latents, then the segment combos with their source ids."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .rope import assign_source_ids
from .transformer import Segment

COMBOS = ("0", "V", "I", "VI")


@dataclass
class Conditions:
    """Encoded visual inputs, each its own ``[1, 16, T, H, W]`` latent at its own size."""

    videos: list[torch.Tensor] = field(default_factory=list)
    image: torch.Tensor | None = None
    images: list[torch.Tensor] = field(default_factory=list)

    def combo(self, name: str, use_source_ids: bool = True, interpolate: bool = True, max_trained: int = 5):
        """Segments of a combo: ``0`` none; ``V`` the first video; ``I`` the images; ``VI`` everything."""
        images = ([self.image] if self.image is not None else []) + list(self.images)
        if name == "0":
            latents: list[torch.Tensor] = []
        elif name == "V":
            latents = self.videos[:1]
        elif name == "I":
            latents = images
        elif name == "VI":
            latents = list(self.videos) + images
        else:
            raise ValueError(f"unknown combo {name!r}")
        ids = assign_source_ids(len(latents), interpolate, max_trained)
        if not use_source_ids:
            ids = [0.0] * len(latents)
        return [Segment(latent, source_id) for latent, source_id in zip(latents, ids, strict=True)]


class LatentCodec:
    """The Wan VAE with Bernini's per-channel normalisation (``(z - mean) / std``)."""

    def __init__(self, vae) -> None:
        self.vae = vae
        config = vae.config
        self.mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[3, T, H, W]`` in [-1, 1] → normalised latent ``[1, 16, T', H/8, W/8]`` (distribution mode)."""
        pixels = pixels.unsqueeze(0).to(self.device, self.dtype)
        latent = self.vae.encode(pixels).latent_dist.mode().float()
        return (latent - self.mean.to(latent.device)) / self.std.to(latent.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents → pixels ``[B, 3, T, H, W]`` in [-1, 1]."""
        z = latents.float() * self.std.to(latents.device) + self.mean.to(latents.device)
        return self.vae.decode(z.to(self.device, self.dtype), return_dict=False)[0].float()


def latent_shape(frames: int, height: int, width: int, channels: int = 16) -> tuple[int, int, int, int, int]:
    return (1, channels, (frames - 1) // 4 + 1, height // 8, width // 8)
