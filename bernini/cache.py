"""Step caching: diffusers' cache hooks on the experts for one generation, and the skipped-forward count.

The hooks sit on the transformer blocks, so they serve the packed forward (``forward(conditions=...)``)
as they serve diffusers' own. The sampler runs every guidance branch in its own cache context
(:func:`bernini.sampler.cache_scope`), so each branch compares against its own history, and each expert
has its own hooks, so the high- and low-noise experts never mix theirs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from .plan import CachePlan


def cache_config(plan: CachePlan):
    """The diffusers hook configuration for a planned cache."""
    from diffusers.hooks import FirstBlockCacheConfig

    builders = {"firstblock": lambda p: FirstBlockCacheConfig(threshold=p.threshold)}
    return builders[plan.kind](plan)


class ComputedForwards:
    """Counts the samples whose forward reached the last block's FFN: a skipped forward never does."""

    def __init__(self, experts: Sequence[torch.nn.Module]) -> None:
        self.computed = 0
        self.handles = [expert.blocks[-1].ffn.register_forward_hook(self._count) for expert in experts]

    def _count(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.computed += int(args[0].shape[0])

    def skipped(self, forwards: int) -> int:
        return forwards - self.computed

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@contextmanager
def step_cache(experts: Sequence[torch.nn.Module], plan: CachePlan | None) -> Iterator[ComputedForwards | None]:
    """Enable the planned cache on every expert for the duration of one generation (None: no cache)."""
    if plan is None:
        yield None
        return
    for expert in experts:
        expert.enable_cache(cache_config(plan))
    counter = ComputedForwards(experts)
    try:
        yield counter
    finally:
        counter.remove()
        for expert in experts:
            expert.disable_cache()
