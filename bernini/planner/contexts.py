"""The four renderer contexts of the full model (spec §4.2–4.3): UMT5 rows, cropped to their real length,
followed by the connector's projection of the planner's tokens, padded with zero rows to 512 and never cut
(upstream cut them at 512 until 2026-06-22, dropping the plan in most video tasks: bug B1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

CONTEXT_LENGTH = 512


@dataclass(frozen=True)
class PlannerContexts:
    """``full`` = [T5(p); G_c], ``text`` = [T5(p); G_c without target slots], ``target`` = [T5(neg); target
    slots of G_c], ``null`` = [T5(neg); G_u without target slots]; each ``[1, ≥512, D]``."""

    full: torch.Tensor
    text: torch.Tensor
    target: torch.Tensor
    null: torch.Tensor


def pad_rows(rows: torch.Tensor, length: int = CONTEXT_LENGTH, truncate: bool = False) -> torch.Tensor:
    """``[1, n, D]`` with zero rows appended up to ``length``; longer stays as is unless ``truncate``."""
    count = rows.shape[1]
    if count >= length:
        return rows[:, :length] if truncate else rows
    return torch.cat([rows, rows.new_zeros(rows.shape[0], length - count, rows.shape[2])], dim=1)


def planner_contexts(
    prompt_t5: torch.Tensor,
    prompt_length: int,
    negative_t5: torch.Tensor,
    negative_length: int,
    cond_tokens: torch.Tensor,
    cond_targets: torch.Tensor,
    uncond_tokens: torch.Tensor,
    uncond_targets: torch.Tensor,
    truncate: bool = False,
) -> PlannerContexts:
    """Assemble the contexts from UMT5 outputs (``[1, 512, D]`` with their real lengths) and the connector's
    ``proj_gen`` outputs of the cond and uncond branches (``[1, L, D]``) with their target-slot masks (``[L]``)."""
    prompt = prompt_t5[:, :prompt_length]
    negative = negative_t5[:, :negative_length]
    cond_tokens = cond_tokens.to(prompt.dtype)
    uncond_tokens = uncond_tokens.to(prompt.dtype)

    def context(*parts: torch.Tensor) -> torch.Tensor:
        return pad_rows(torch.cat(parts, dim=1), truncate=truncate)

    return PlannerContexts(
        full=context(prompt, cond_tokens),
        text=context(prompt, cond_tokens[:, ~cond_targets]),
        target=context(negative, cond_tokens[:, cond_targets]),
        null=context(negative, uncond_tokens[:, ~uncond_targets]),
    )
