"""Guidance modes: which branches a step evaluates and how their predictions combine.

A branch is ``(combo, text)`` with combo one of ``"0"`` (target only), ``"V"`` (first video),
``"I"`` (images on their own id axis) and ``"VI"`` (every visual input), and text ``"c"`` (prompt)
or ``"u"`` (negative prompt). Chained CFG combines velocities; APG works in x0 space with norms and
projections per latent frame (over C, H, W) and momentum buffers that live for a whole generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Branch = tuple[str, str]

BRANCHES: dict[str, tuple[Branch, ...]] = {
    "rv2v": (("0", "u"), ("V", "u"), ("VI", "u"), ("VI", "c")),
    "v2v": (("VI", "u"), ("VI", "c")),
    "v2v_chain": (("0", "u"), ("V", "u"), ("VI", "c")),
    "t2v": (("0", "u"), ("0", "c")),
    "t2v_apg": (("0", "u"), ("0", "c")),
    "v2v_apg": (("VI", "u"), ("VI", "c")),
    "r2v_apg": (("0", "u"), ("I", "u"), ("I", "c")),
}
FRAME_DIMS = (1, 3, 4)  # C, H, W of [B, C, T, H, W]


@dataclass
class Weights:
    vid: float
    img: float
    txt: float

    def scaled(self, factor: float) -> Weights:
        return Weights(self.vid * factor, self.img * factor, self.txt * factor)


@dataclass
class APGState:
    """APG settings and the momentum buffers, one per chained condition."""

    eta: float = 0.5
    norm_threshold: tuple[float, ...] = (50.0, 50.0)
    momentum: float = 0.0
    buffers: dict[int, torch.Tensor] = field(default_factory=dict)

    def project(self, diff: torch.Tensor, reference: torch.Tensor, index: int) -> torch.Tensor:
        """P(d; r): momentum, norm cap, then keep the orthogonal part and eta times the parallel part."""
        if self.momentum:
            running = self.buffers.get(index)
            diff = diff if running is None else diff + self.momentum * running
            self.buffers[index] = diff
        threshold = self.norm_threshold[index] if index < len(self.norm_threshold) else self.norm_threshold[-1]
        if threshold > 0:
            norm = diff.norm(p=2, dim=FRAME_DIMS, keepdim=True)
            diff = diff * torch.clamp(threshold / norm, max=1.0)
        dtype = diff.dtype
        d, r = diff.double(), reference.double()
        unit = torch.nn.functional.normalize(r, dim=FRAME_DIMS)
        parallel = (d * unit).sum(dim=FRAME_DIMS, keepdim=True) * unit
        orthogonal = d - parallel
        return (orthogonal + self.eta * parallel).to(dtype)


def combine(
    mode: str,
    predictions: list[torch.Tensor],
    latents: torch.Tensor,
    sigma: float,
    weights: Weights,
    apg: APGState,
) -> torch.Tensor:
    """The guided velocity for ``mode`` from its branch predictions (in the order of ``BRANCHES[mode]``)."""
    if mode == "rv2v":
        empty, video, visual, text = predictions
        return empty + weights.vid * (video - empty) + weights.img * (visual - video) + weights.txt * (text - visual)
    if mode == "v2v_chain":
        empty, video, text = predictions
        return empty + weights.vid * (video - empty) + weights.txt * (text - video)
    if mode in ("v2v", "t2v"):
        uncond, cond = predictions
        return uncond + weights.txt * (cond - uncond)
    x0 = [latents - sigma * v for v in predictions]
    if mode in ("t2v_apg", "v2v_apg"):
        uncond, cond = x0
        guided = uncond + weights.txt * apg.project(cond - uncond, cond, 0)
    elif mode == "r2v_apg":
        empty, image, text = x0
        guided = (
            empty
            + weights.img * apg.project(image - empty, image, 0)
            + weights.txt * apg.project(text - image, text, 1)
        )
    else:
        raise ValueError(f"unknown guidance mode {mode!r}")
    return (latents - guided) / sigma
