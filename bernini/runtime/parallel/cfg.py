"""CFG parallelism: a step's guidance branches spread over the ranks of a CFG group.

Every rank of the group holds the same latents and inputs, so each can run any branch. Branches are
assigned by a deterministic longest-first rule on their estimated cost (all ranks compute the same
assignment without talking), each rank runs its own (with Ulysses inside its own group if enabled),
and one ``all_gather`` of equally-sized slot buffers gives every rank all predictions, bit for bit
as computed, so the guidance combine is exactly the single-rank one. Uneven counts (3 branches on
2 ranks, 2 branches on 4 ranks) simply leave some slots empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from ...models.transformer import BerniniTransformer
from ...sampling.guidance import Branch
from ...sampling.sampler import BranchRunner, SamplingInputs, run_branch

ATTENTION_BREAK_EVEN = 32768
"""Tokens at which self-attention costs about as much as the rest of an A14B forward (performance.md)."""


def branch_tokens(inputs: SamplingInputs, branch: Branch, latents: torch.Tensor, patch: Sequence[int]) -> int:
    """Packed sequence length of a branch's forward (conditions + target)."""
    p_t, p_h, p_w = patch

    def tokens(latent: torch.Tensor) -> int:
        _, _, t, h, w = latent.shape
        return (t // p_t) * (h // p_h) * (w // p_w)

    return sum(tokens(s.latent) for s in inputs.combos[branch[0]]) + tokens(latents)


def assign_branches(costs: Sequence[float], ranks: int) -> list[int]:
    """Owner rank of each branch: longest first onto the least-loaded rank (ties: lower index/rank)."""
    loads = [0.0] * ranks
    owners = [0] * len(costs)
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(ranks), key=lambda r: (loads[r], r))
        owners[index] = rank
        loads[rank] += costs[index]
    return owners


class CfgParallelRunner(BranchRunner):
    """A :class:`~bernini.sampling.sampler.BranchRunner` that splits the branches over a CFG process group."""

    def __init__(self, group: dist.ProcessGroup | None, world_size: int, rank: int) -> None:
        self.group = group
        self.world_size = world_size
        self.rank = rank

    @classmethod
    def of(cls, group: dist.ProcessGroup) -> CfgParallelRunner:
        return cls(group, dist.get_world_size(group), dist.get_rank(group))

    def owners(self, expert: BerniniTransformer, inputs: SamplingInputs, branches: Sequence[Branch], latents) -> list:
        patch = tuple(expert.config.patch_size)
        lengths = [branch_tokens(inputs, b, latents, patch) for b in branches]
        return assign_branches([n * (1 + n / ATTENTION_BREAK_EVEN) for n in lengths], self.world_size)

    def __call__(
        self, expert: BerniniTransformer, inputs: SamplingInputs, branches: Sequence[Branch], latents, t
    ) -> list[torch.Tensor]:
        owners = self.owners(expert, inputs, branches, latents)
        slots = [[i for i, o in enumerate(owners) if o == r] for r in range(self.world_size)]
        width = max(len(s) for s in slots)
        mine = [run_branch(expert, inputs, branches[i], latents, t) for i in slots[self.rank]]
        shape, device = tuple(latents.shape), mine[0].device if mine else expert.execution_device
        buffer = torch.zeros((width, *shape), dtype=torch.float32, device=device)
        for slot, prediction in enumerate(mine):
            buffer[slot] = prediction
        gathered = [torch.empty_like(buffer) for _ in range(self.world_size)]
        dist.all_gather(gathered, buffer, group=self.group)
        return [gathered[owner][slots[owner].index(i)] for i, owner in enumerate(owners)]
