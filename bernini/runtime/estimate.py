"""A rough time estimate for one plan on the loaded pipeline, so a front end can warn before a run of hours.

The transformer dominates: per forward and block, ``2·N·P`` multiply-add FLOPs for the block's ``P``
weights over ``N`` tokens plus ``4·N²·d`` for attention, times the guidance mode's forwards per step and
the steps (``N`` counted as the memory plan counts it, :func:`bernini.runtime.memory.latent_tokens`); the device's
rate is measured with a short matmul in the pipeline's dtype. VAE and text encoder time are left out, so the
figure is a lower bound.
"""

from __future__ import annotations

import time

import torch

from ..resolved import ResolvedRequest
from ..sampling.windows import context_windows
from .memory import latent_tokens


def transformer_flops(pipe, resolved: ResolvedRequest) -> float:
    """FLOPs of the denoising loop for ``plan``'s asked geometry (source videos add their tokens); with context
    windows, every window's forwards at a window's length."""
    expert = pipe.experts[0]
    grid = pipe.latent_grid
    geometry = resolved.geometry
    _, _, t, h, w = grid.latent_shape(
        grid.snap_frames(geometry.frames), grid.snap_side(geometry.height), grid.snap_side(geometry.width)
    )
    windows = resolved.windows
    spans = context_windows(t, windows.frames if windows else None, windows.overlap if windows else 0, grid.temporal)
    length = spans[0][1] - spans[0][0]
    tokens = latent_tokens(length, h, w, tuple(expert.config.patch_size)) * (1 + len(resolved.media.video))
    block_params = sum(p.numel() for p in expert.blocks[0].parameters())
    width = expert.config.num_attention_heads * expert.config.attention_head_dim
    per_forward = len(expert.blocks) * (2 * tokens * block_params + 4 * tokens**2 * width)
    forwards = resolved.guidance.mode.forwards_per_step * resolved.num_inference_steps * len(spans)
    return float(per_forward * forwards)


def measured_flops_per_s(device: torch.device, dtype: torch.dtype, size: int = 512, repeats: int = 4) -> float:
    a = torch.randn(size, size, device=device).to(dtype)
    (a @ a).sum().item()
    start = time.perf_counter()
    for _ in range(repeats):
        b = a @ a
    b.sum().item()
    return repeats * 2 * size**3 / max(time.perf_counter() - start, 1e-9)


def estimate_seconds(pipe, resolved: ResolvedRequest, flops_per_s: float | None = None) -> float:
    rate = flops_per_s or measured_flops_per_s(pipe.device, pipe.dtype)
    return transformer_flops(pipe, resolved) / rate


def describe_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
