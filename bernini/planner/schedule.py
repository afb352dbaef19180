"""Masked semantic planning (spec §3.1): the cosine reveal schedule and the loop's RNG contract.

All planner randomness comes from one ``torch.Generator('cpu')`` seeded with the request seed: first the
MaskGIT order ``randperm(N)``, then, for every round that reveals ``n > 0`` slots, in round order, the
decoder's initial noise ``randn((n, D), dtype=float32)``. A round that reveals nothing draws nothing and
decodes nothing (upstream tested the *sum* of the revealed indices, bug B2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def keep_counts(slots: int, rounds: int) -> list[int]:
    """Slots still masked after each round: ``max(1, min(masked - 1, floor(N cos(π/2 (k+1)/K))))``."""
    masked, out = slots, []
    for index in range(rounds):
        keep = max(1, min(masked - 1, math.floor(slots * math.cos(math.pi / 2 * (index + 1) / rounds))))
        out.append(keep)
        masked = keep
    return out


def reveal_counts(slots: int, rounds: int) -> list[int]:
    """Slots decoded in each round; the last round decodes everything still masked."""
    counts, masked = [], slots
    for index, keep in enumerate(keep_counts(slots, rounds)):
        revealed = masked if index == rounds - 1 else masked - keep
        counts.append(revealed)
        masked = 0 if index == rounds - 1 else keep
    return counts


@dataclass
class PlanningRecord:
    """What the sidecar keeps of a planning run."""

    slots: int
    rounds: int
    reveal_counts: list[int] = field(default_factory=list)


Predict = Callable[[int], torch.Tensor]
"""``predict(round) → [3, N, D]``: the connector's ViT conditions of every slot for (cond, uncond, text-only)."""
Decode = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``decode(conditions [3, n, D], noise [n, D]) → [n, D]``: the flow decoder for the revealed slots."""
Write = Callable[[torch.Tensor, torch.Tensor], None]
"""``write(slot indices, values [n, D])``: put decoded embeddings into all three branches."""


def plan_slots(
    slots: int, rounds: int, width: int, seed: int, predict: Predict, decode: Decode, write: Write
) -> PlanningRecord:
    """Run the masked-planning loop; the caller owns the model passes (``predict``) and the state (``write``)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    order = torch.randperm(slots, generator=generator)
    masked = torch.ones(slots, dtype=torch.bool)
    record = PlanningRecord(slots, rounds)
    for index, keep in enumerate(keep_counts(slots, rounds)):
        conditions = predict(index)
        still_masked = torch.zeros(slots, dtype=torch.bool)
        still_masked[order[:keep]] = True
        reveal = masked if index == rounds - 1 else masked & ~still_masked
        masked = still_masked
        revealed = reveal.nonzero().flatten()
        record.reveal_counts.append(int(revealed.numel()))
        if revealed.numel() == 0:
            continue
        noise = torch.randn((revealed.numel(), width), generator=generator, dtype=torch.float32)
        write(revealed, decode(conditions[:, revealed], noise))
    return record
