"""The planner as a stage of the pipeline: from a plan's prompts, its source items and the UMT5 rows to the
full model's four renderer contexts (spec §2–§4.3), with what the sidecar records of the planning.

The Qwen prompt is the cleaned raw prompt (no T5 prefix); the uncond branch reads the raw negative prompt.
The UMT5 rows are cropped to their real lengths before the planner's tokens are appended, and the contexts
are padded to 512 rows and never cut (bug B1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..sampling.guidance import Text
from ..text import clean_prompt
from .contexts import planner_contexts
from .loading import PlannerModules
from .packing import SpecialIds, VisualItem, pack_branches
from .run import PlannerSettings, run_planner


@dataclass(frozen=True)
class PlanningRequest:
    """What the planner reads of one generation."""

    task: str
    prompt: str
    negative_prompt: str
    sources: Sequence[VisualItem]
    target: VisualItem
    settings: PlannerSettings
    seed: int


@dataclass(frozen=True)
class T5Rows:
    """UMT5 outputs ``[1, 512, D]`` of the prompt (with its prefix) and of the negative prompt, and their
    real lengths (EOS included)."""

    prompt: torch.Tensor
    prompt_length: int
    negative: torch.Tensor
    negative_length: int


def run_planning(
    modules: PlannerModules,
    request: PlanningRequest,
    source_features: Sequence[torch.Tensor],
    t5: T5Rows,
    ids: SpecialIds | None = None,
    batch_fits: Callable[[int, int], bool] | None = None,
) -> tuple[dict[Text, torch.Tensor], dict[str, Any]]:
    """The contexts keyed as the full model's guidance branches read them (on the CPU), and the record."""
    tokenizer = modules.tokenizer

    def tokenize(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False).input_ids)

    branches = pack_branches(
        tokenize,
        request.task,
        clean_prompt(request.prompt),
        request.negative_prompt,
        request.sources,
        request.target,
        ids or SpecialIds(),
    )
    out = run_planner(modules, branches, source_features, request.settings, request.seed, batch_fits)
    contexts = planner_contexts(
        t5.prompt,
        t5.prompt_length,
        t5.negative,
        t5.negative_length,
        out.cond_tokens.to(t5.prompt.device),
        out.cond_targets,
        out.uncond_tokens.to(t5.prompt.device),
        out.uncond_targets,
    )
    text = {
        Text.PLAN_FULL: contexts.full.cpu(),
        Text.PLAN_TEXT: contexts.text.cpu(),
        Text.PLAN_TARGET: contexts.target.cpu(),
        Text.PLAN_NULL: contexts.null.cpu(),
    }
    settings = request.settings
    record = {
        "planning_step": settings.planning_steps,
        "vit_denoising_step": settings.vit_steps,
        "vit_txt_cfg": settings.text_scale,
        "vit_img_cfg": settings.image_scale,
        "target_slots": int(out.cond_targets.sum()),
        "reveal_counts": list(out.record.reveal_counts),
        "branch_tokens": {name: branch.length for name, branch in branches.items()},
        "source_tokens": [item.grid.tokens for item in request.sources],
        "context_rows": {str(name): int(t.shape[1]) for name, t in text.items()},
        "qwen_forwards": 3 * settings.planning_steps + 2,
        "batched_branches": settings.batch_branches,
    }
    return text, record
