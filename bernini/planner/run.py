"""Running the planner (spec §2.4, §3, §4.1): embeddings per branch, the masked-planning loop over the Qwen
passes, the connector, and the tokens the renderer's contexts are built from.

The source items' ViT features are passed in (one ``[tokens, width]`` tensor per source, in conversation
order); t2i and t2v have none, and the target's own features are never used (its slots start as the mask
token). Each branch's slot embeddings are written by the decoder in every round that reveals slots, the
same values into all three branches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .flow import sample_embeddings
from .loading import PlannerModules
from .packing import BRANCHES, PackedBranch
from .schedule import PlanningRecord, plan_slots


@dataclass(frozen=True)
class PlannerSettings:
    """``--planning_step``, ``--vit_denoising_step``, ``--vit_txt_cfg``, ``--vit_img_cfg`` (the CLI's defaults)."""

    planning_steps: int = 25
    vit_steps: int = 5
    text_scale: float = 1.2
    image_scale: float | None = 1.0
    batch_branches: bool = False  # the branches' Qwen passes as one padded batch (the same states, fewer calls)


@dataclass
class PlannerOutput:
    """The connector's ``proj_gen`` over every token of the cond and uncond branches, with their slot masks."""

    cond_tokens: torch.Tensor  # [1, L_c, out_gen]
    cond_targets: torch.Tensor  # [L_c] bool
    uncond_tokens: torch.Tensor
    uncond_targets: torch.Tensor
    predicted: torch.Tensor  # [N, width]: the planned target embeddings (cond branch)
    record: PlanningRecord


def branch_embeddings(
    modules: PlannerModules, branch: PackedBranch, source_features: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``embed_tokens`` of the branch, source positions replaced by their ViT features, slots by the mask token."""
    qwen = modules.qwen
    table = qwen.get_input_embeddings()
    ids = torch.tensor(branch.input_ids, device=table.weight.device)
    with torch.no_grad():
        embeds = table(ids).clone()
    sources = branch.source_mask.to(embeds.device)
    if sources.any():
        features = torch.cat([f.to(embeds.device, embeds.dtype) for f in source_features])
        if features.shape[0] != int(sources.sum()):
            raise ValueError(f"{features.shape[0]} source features for {int(sources.sum())} source tokens")
        embeds[sources] = features
    embeds[branch.target_mask.to(embeds.device)] = modules.mask_token.to(embeds.device, embeds.dtype)
    return embeds[None]


def hidden_states(modules: PlannerModules, branch: PackedBranch, embeds: torch.Tensor) -> torch.Tensor:
    """The output of the layer the planner reads (the second-to-last of the full stack) for one branch."""
    qwen = modules.qwen
    mask = branch.attention_mask(embeds.dtype).to(embeds.device)
    positions = branch.positions().to(embeds.device)
    with torch.no_grad():
        return qwen(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state


def batched_hidden_states(
    modules: PlannerModules, branches: Sequence[PackedBranch], embeds: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """:func:`hidden_states` of several branches in one Qwen forward, right-padded to the longest.

    Every query's mask hides the padding keys and a padding query sees only itself, so each branch's states
    are its own forward's (up to the kernels' summation order)."""
    lengths = [branch.length for branch in branches]
    longest, first = max(lengths), embeds[0]
    batch = first.new_zeros(len(branches), longest, first.shape[-1])
    lowest = torch.finfo(first.dtype).min
    masks = torch.full((len(branches), 1, longest, longest), lowest, dtype=first.dtype, device=first.device)
    positions = torch.zeros(3, len(branches), longest, dtype=torch.long, device=first.device)
    for row, (branch, states, length) in enumerate(zip(branches, embeds, lengths, strict=True)):
        batch[row, :length] = states[0]
        masks[row, 0, :length, :length] = branch.attention_mask(first.dtype)[0, 0].to(first.device)
        padding = torch.arange(length, longest, device=first.device)
        masks[row, 0, padding, padding] = 0
        positions[:, row, :length] = branch.positions()[:, 0].to(first.device)
    with torch.no_grad():
        out = modules.qwen(inputs_embeds=batch, attention_mask=masks, position_ids=positions).last_hidden_state
    return [out[row : row + 1, :length] for row, length in enumerate(lengths)]


def run_planner(
    modules: PlannerModules,
    branches: dict[str, PackedBranch],
    source_features: Sequence[torch.Tensor],
    settings: PlannerSettings,
    seed: int,
    batch_fits: Callable[[int, int], bool] | None = None,
) -> PlannerOutput:
    """Masked planning over the three branches (cond, uncond, text-only), then the two final passes.

    With ``settings.batch_branches`` a round's passes run as one batch when ``batch_fits(branches, tokens)``
    (default: always) says the padded batch fits in memory."""
    order = ("cond", "uncond", "text")  # the decoder's rows: [cond; uncond; text-only]
    if set(branches) != set(BRANCHES):
        raise ValueError(f"the planner needs the branches {BRANCHES}, got {sorted(branches)}")
    embeds = {
        name: branch_embeddings(modules, branches[name], source_features if name == "cond" else ()) for name in order
    }
    slots = {name: branches[name].target_mask.nonzero().flatten() for name in order}
    counts = {int(s.numel()) for s in slots.values()}
    if len(counts) != 1:
        raise ValueError(f"the branches disagree on the number of target slots: {sorted(counts)}")
    (slot_count,) = counts
    width = int(modules.mask_token.numel())

    def states_of(names: Sequence[str]) -> list[torch.Tensor]:
        longest = max(branches[name].length for name in names)
        if settings.batch_branches and len(names) > 1 and (batch_fits is None or batch_fits(len(names), longest)):
            return batched_hidden_states(modules, [branches[n] for n in names], [embeds[n] for n in names])
        return [hidden_states(modules, branches[name], embeds[name]) for name in names]

    def predict(_round: int) -> torch.Tensor:
        conditions = []
        for name, states in zip(order, states_of(order), strict=True):
            with torch.no_grad():
                conditions.append(modules.connector.vit_condition(states[0, slots[name]]))
        return torch.stack(conditions)

    def decode(conditions: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return sample_embeddings(
            modules.vit_decoder.net, conditions, noise, settings.vit_steps, settings.text_scale, settings.image_scale
        )

    def write(indices: torch.Tensor, values: torch.Tensor) -> None:
        for name in order:
            target = embeds[name]
            target[0, slots[name][indices.to(slots[name].device)]] = values.to(target.device, target.dtype)

    record = plan_slots(slot_count, settings.planning_steps, width, seed, predict, decode, write)
    cond_states, uncond_states = states_of(("cond", "uncond"))
    with torch.no_grad():
        cond = modules.connector.generation_context(cond_states)
        uncond = modules.connector.generation_context(uncond_states)
    return PlannerOutput(
        cond_tokens=cond,
        cond_targets=branches["cond"].target_mask,
        uncond_tokens=uncond,
        uncond_targets=branches["uncond"].target_mask,
        predicted=embeds["cond"][0, slots["cond"]].clone(),
        record=record,
    )
