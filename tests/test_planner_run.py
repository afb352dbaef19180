"""The planner end to end on the tiny full bundle, for a text-to-x task (no source features needed)."""

from __future__ import annotations

import pytest
import torch

from bernini.planner.geometry import target_grid
from bernini.planner.loading import FullBundle, load_planner
from bernini.planner.packing import VisualItem, pack_branches
from bernini.planner.run import PlannerSettings, run_planner
from bernini.planner.schedule import reveal_counts

SETTINGS = PlannerSettings(planning_steps=3, vit_steps=2, text_scale=1.2, image_scale=1.0)


@pytest.fixture(scope="module")
def planner(full_bundle):
    return load_planner(FullBundle.open(full_bundle), torch.float32)


def branches(planner, prompt: str, negative: str = "ugly blurry"):
    tokenizer = planner.tokenizer

    def tokenize(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    target = VisualItem(True, target_grid(9, 64, 96))
    return pack_branches(tokenize, "t2v", prompt, negative, [], target)


def run(planner, prompt="a red fox runs across a snowy field", settings=SETTINGS, seed=42):
    return run_planner(planner, branches(planner, prompt), [], settings, seed)


def test_output_shapes_and_record(planner):
    out = run(planner)
    slots = int(out.cond_targets.sum())
    assert slots == target_grid(9, 64, 96).tokens == 6
    assert out.cond_tokens.shape == (1, out.cond_targets.numel(), 40)  # the connector's out_gen
    assert out.uncond_tokens.shape == (1, out.uncond_targets.numel(), 40)
    assert out.predicted.shape == (slots, 64)
    assert out.record.reveal_counts == reveal_counts(slots, 3) and sum(out.record.reveal_counts) == slots
    assert not torch.allclose(out.predicted, planner.mask_token.expand_as(out.predicted))  # every slot was written


def test_same_seed_same_plan_and_each_input_moves_it(planner):
    base = run(planner)
    again = run(planner)
    assert torch.equal(base.cond_tokens, again.cond_tokens) and torch.equal(base.predicted, again.predicted)
    assert not torch.allclose(base.predicted, run(planner, seed=7).predicted, atol=1e-5)
    assert not torch.allclose(base.predicted, run(planner, prompt="a blue cat").predicted, atol=1e-5)
    more_rounds = PlannerSettings(planning_steps=5, vit_steps=2)
    assert not torch.allclose(base.predicted, run(planner, settings=more_rounds).predicted, atol=1e-5)
    with torch.no_grad():
        planner.connector.pred_vit[4].bias.add_(0.5)
    try:
        assert not torch.allclose(base.predicted, run(planner).predicted, atol=1e-5)
    finally:
        with torch.no_grad():
            planner.connector.pred_vit[4].bias.sub_(0.5)


def test_text_to_x_has_no_visual_guidance(planner):
    """With no sources the cond and text-only branches are the same sequence, so vit_txt_cfg has no effect."""
    plain = run(planner, settings=PlannerSettings(3, 2, text_scale=1.2, image_scale=1.0))
    stronger = run(planner, settings=PlannerSettings(3, 2, text_scale=3.0, image_scale=1.0))
    assert torch.allclose(plain.predicted, stronger.predicted, atol=1e-5)


def test_decoded_slots_reach_all_three_branches(planner, monkeypatch):
    """Every round's three Qwen passes see the same slot embeddings; the final cond pass sees the plan."""
    import bernini.planner.run as run_module

    calls: list[tuple[str, torch.Tensor]] = []
    original = run_module.hidden_states

    def spy(modules, branch, embeds):
        calls.append((branch.name, embeds[0, branch.target_mask].clone()))
        return original(modules, branch, embeds)

    monkeypatch.setattr(run_module, "hidden_states", spy)
    out = run(planner)
    rounds, final = calls[:-2], calls[-2:]
    assert [name for name, _ in rounds] == ["cond", "uncond", "text"] * 3
    for index in range(0, len(rounds), 3):
        first = rounds[index][1]
        assert all(torch.equal(first, values) for _, values in rounds[index : index + 3])
    assert not torch.equal(rounds[0][1], rounds[-1][1])  # the slots changed between rounds
    assert [name for name, _ in final] == ["cond", "uncond"]
    assert torch.equal(final[0][1], out.predicted) and torch.equal(final[1][1], out.predicted)


def test_batched_branches_give_the_sequential_plan(planner):
    """The three Qwen passes as one right-padded batch (the uncond branch is the longest here, so the others are
    padded): same plan and contexts as one pass per branch, in fp32 up to summation order."""
    packed = branches(planner, "a red fox runs across a snowy field")
    assert len({b.length for b in packed.values()}) > 1
    one_by_one = run_planner(planner, packed, [], SETTINGS, 42)
    batched = run_planner(planner, packed, [], PlannerSettings(3, 2, 1.2, 1.0, batch_branches=True), 42)
    assert batched.record.reveal_counts == one_by_one.record.reveal_counts
    for name in ("predicted", "cond_tokens", "uncond_tokens"):
        assert torch.allclose(getattr(batched, name), getattr(one_by_one, name), atol=1e-5), name
