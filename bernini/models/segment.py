"""A packed sequence's parts: each latent with the source id its RoPE is told."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Segment:
    """One latent segment of a packed sequence: a clean condition or the noisy target."""

    latent: torch.Tensor  # [B, C, T, H, W]
    source_id: float = 0.0
