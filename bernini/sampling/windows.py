"""Context windows for long video: the latent frames split into overlapping windows, their blend weights and
FreeNoise-style shared noise.

Everything here counts *latent* frames. Windows of ``size`` frames advance by ``size - overlap``; the last one is
aligned to the clip's end (it may share more than ``overlap`` frames with the one before). In a shared stretch the
earlier window's weight ramps linearly down and the later one's up, and the weights are normalised so that at every
latent frame they sum to 1 (exactly 1 where one window alone covers the frame). One window covering the whole clip
is the plain, unwindowed run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Span = tuple[int, int]
"""A window's latent frames ``[start, stop)``."""


def latent_length(pixel_frames: int, temporal: int = 4) -> int:
    """Latent frames of ``pixel_frames`` (4k+1) pixel frames."""
    return (pixel_frames - 1) // temporal + 1


def window_spans(total: int, size: int, overlap: int) -> list[Span]:
    """Windows of ``size`` latent frames covering ``total``, neighbours sharing at least ``overlap`` frames: as few
    windows as that allows, the first at 0, the last aligned to the end and the starts spread evenly between."""
    if size <= 0 or overlap < 0 or overlap >= size:
        raise ValueError(f"windows need 0 <= overlap < size, got size {size}, overlap {overlap}")
    if total <= size:
        return [(0, total)]
    stride = size - overlap
    gaps = -(-(total - size) // stride)  # windows - 1
    starts = [(index * (total - size) + gaps // 2) // gaps for index in range(gaps + 1)]
    return [(start, start + size) for start in starts]


def context_windows(total: int, frames: int | None, overlap: int, temporal: int = 4) -> list[Span]:
    """The windows over ``total`` latent frames for ``--window_frames`` / ``--window_overlap`` (pixel frames; None:
    one window over everything)."""
    if frames is None:
        return [(0, total)]
    return window_spans(total, latent_length(frames, temporal), overlap // temporal)


def pixel_span(span: Span, temporal: int = 4) -> tuple[int, int]:
    """A window's first pixel frame and its pixel frame count (4k+1) under the causal VAE: latent frame 0 is pixel
    frame 0, latent frame ``k`` holds pixel frames ``temporal·k - temporal + 1 … temporal·k``; a window that starts
    later is read from its first latent frame's last pixel frame, as a clip of its own length would be."""
    start, stop = span
    return temporal * start, temporal * (stop - start - 1) + 1


def _ramp(length: int) -> torch.Tensor:
    """``length`` values rising linearly through (0, 1): the centres of ``length`` equal steps."""
    return (torch.arange(length, dtype=torch.float64) + 0.5) / length


def blend_weights(spans: Sequence[Span], total: int) -> torch.Tensor:
    """``[windows, total]`` float64 weights: zero outside a window, ramps across each shared stretch, summing to 1
    over the windows at every frame."""
    raw = torch.zeros(len(spans), total, dtype=torch.float64)
    for index, (start, stop) in enumerate(spans):
        weight = torch.ones(stop - start, dtype=torch.float64)
        if index > 0:
            shared = spans[index - 1][1] - start
            if shared > 0:
                weight[:shared] = torch.minimum(weight[:shared], _ramp(shared))
        if index + 1 < len(spans):
            shared = stop - spans[index + 1][0]
            if shared > 0:
                weight[-shared:] = torch.minimum(weight[-shared:], _ramp(shared).flip(0))
        raw[index, start:stop] = weight
    return raw / raw.sum(dim=0, keepdim=True)


def shared_noise(noise: torch.Tensor, spans: Sequence[Span], seed: int) -> torch.Tensor:
    """FreeNoise's noise rescheduling: the frames after the first window are a seeded local shuffle of the frames
    one window earlier, so every window starts from noise correlated with its neighbour's. ``noise`` is
    ``[B, C, T, H, W]``; one window returns it unchanged (the same tensor)."""
    if len(spans) <= 1:
        return noise
    size = spans[0][1] - spans[0][0]
    generator = torch.Generator("cpu").manual_seed(seed)
    out = noise.clone()
    for previous, (_, stop) in zip(spans, spans[1:], strict=False):
        start, count = previous[1], stop - previous[1]
        earlier = torch.arange(start - size, start - size + count)
        order = earlier[torch.randperm(count, generator=generator)]
        out[:, :, start:stop] = out[:, :, order.to(noise.device)]
    return out


def source_span(span: Span, target: int, source: int) -> Span:
    """The frames of a source latent of ``source`` frames that a target window ``span`` (of ``target`` frames)
    covers: the same frames when the lengths agree, else mapped proportionally (at least one frame)."""
    if source == target:
        return span
    start = min(span[0] * source // target, source - 1)
    stop = max(start + 1, min(source, -(-span[1] * source // target)))
    return start, stop
