"""The denoising loop with a controlled fake expert: routing, omega scale, forward counts, shift."""

import pytest
import torch
from diffusers import UniPCMultistepScheduler

from bernini.conditions import Conditions
from bernini.resolved import SourceIdPolicy
from bernini.sampling.guidance import GUIDANCE_MODES, Combo, GuidanceMode, GuidanceState, Weights
from bernini.sampling.sampler import BranchRunner, Experts, SamplingInputs, sample


class RecordingRunner(BranchRunner):
    """Stands in for the expert forward (no model needed): returns fixed predictions and records calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, expert, inputs, branches, latents, t):
        self.calls.append((expert, int(t), list(branches)))
        return [torch.full_like(latents, 0.01 * (i + 1)) for i in range(len(branches))]


def make_inputs(mode, weights=None):
    weights = weights or Weights(1.25, 4.5, 4.0)
    conditions = Conditions(videos=[torch.zeros(1, 16, 1, 2, 2)], images=[torch.zeros(1, 16, 1, 2, 2)])
    return SamplingInputs(
        latents=torch.randn(1, 16, 1, 2, 2),
        combos=conditions.combos(SourceIdPolicy()),
        text={},
        mode=GUIDANCE_MODES[mode],
        weights=weights,
        omega_scale=0.8,
        state=GuidanceState(),
    )


def scheduler(shift):
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        solver_order=2,
        solver_type="bh2",
        final_sigmas_type="zero",
    )


@pytest.mark.parametrize("mode", list(GUIDANCE_MODES))
def test_forwards_per_step_and_expert_switch(mode):
    runner = RecordingRunner()
    experts = Experts(high="high", low="low", boundary=875.0)
    sample(experts, scheduler(5.0), make_inputs(mode), 40, runner=runner)
    assert len(runner.calls) == 40
    assert all(branches == list(GUIDANCE_MODES[mode].branches) for _, _, branches in runner.calls)
    highs = [t for expert, t, _ in runner.calls if expert == "high"]
    lows = [t for expert, t, _ in runner.calls if expert == "low"]
    assert len(highs) == 17 and len(lows) == 23  # spec §3.1 table for shift 5
    assert min(highs) >= 875 > max(lows)
    assert lows[0] == 870


def test_shift_three_gives_spec_step_split():
    runner = RecordingRunner()
    sample(Experts(high="high", low="low"), scheduler(3.0), make_inputs("t2v"), 40, runner=runner)
    lows = [t for expert, t, _ in runner.calls if expert == "low"]
    assert len(lows) == 28 and lows[0] == 874


def test_omega_scale_applied_once_at_switch(monkeypatch):
    seen = []
    original = GuidanceMode.combine

    def spy(self, predictions, latents, sigma, weights, state):
        seen.append(weights.txt)
        return original(self, predictions, latents, sigma, weights, state)

    monkeypatch.setattr(GuidanceMode, "combine", spy)
    switches = []
    experts = Experts(high="high", low="low", on_switch=lambda old, new: switches.append((old, new)))
    sample(experts, scheduler(5.0), make_inputs("t2v"), 40, runner=RecordingRunner())
    assert seen[:17] == [4.0] * 17
    assert seen[17:] == pytest.approx([3.2] * 23)
    assert switches == [("high", "low")]


def test_single_expert_never_switches_or_scales():
    runner = RecordingRunner()
    sample(Experts(high="only", low=None, boundary=0.0), scheduler(5.0), make_inputs("t2v"), 10, runner=runner)
    assert {expert for expert, _, _ in runner.calls} == {"only"}


def test_combos_and_ids():
    conditions = Conditions(
        videos=[torch.zeros(1), torch.ones(1)], image=torch.full((1,), 2.0), images=[torch.full((1,), 3.0)]
    )
    assert conditions.combo(Combo.EMPTY) == []
    assert [s.source_id for s in conditions.combo(Combo.VIDEO)] == [1.0]
    assert [s.latent.item() for s in conditions.combo(Combo.ALL)] == [0.0, 1.0, 2.0, 3.0]
    assert [s.source_id for s in conditions.combo(Combo.ALL)] == [1.0, 2.0, 3.0, 4.0]
    assert [s.source_id for s in conditions.combo(Combo.IMAGES)] == [1.0, 2.0]
    assert [s.source_id for s in conditions.combo(Combo.ALL, SourceIdPolicy(enabled=False))] == [0.0] * 4
    many = Conditions(images=[torch.zeros(1)] * 8)
    assert [s.source_id for s in many.combo(Combo.IMAGES)] == pytest.approx([1 + 4 * i / 7 for i in range(8)])
    assert [s.source_id for s in many.combo(Combo.IMAGES, SourceIdPolicy(interpolate=False))] == list(
        map(float, range(1, 9))
    )
    assert [s.source_id for s in many.combo(Combo.IMAGES, SourceIdPolicy(max_trained=8))] == list(
        map(float, range(1, 9))
    )


@pytest.mark.parametrize("steps", [300, 400])
def test_many_unipc_steps_walk_every_sigma_from_the_first(monkeypatch, steps):
    """Issue 19 item 8: from about 300 steps at shift 5 the first integer timesteps repeat (999, 999, ...);
    diffusers then started at step 1 and died on the last one (``this_order > 0``). Every sigma is used once, in
    order, from the first."""
    sigmas = []
    original = GuidanceMode.combine

    def spy(self, predictions, latents, sigma, weights, state):
        sigmas.append(float(sigma))
        return original(self, predictions, latents, sigma, weights, state)

    monkeypatch.setattr(GuidanceMode, "combine", spy)
    unipc, runner = scheduler(5.0), RecordingRunner()
    latents = sample(Experts(high="high", low="low", boundary=875.0), unipc, make_inputs("t2v"), steps, runner=runner)
    assert unipc.timesteps[0] == unipc.timesteps[1]  # the repeated start that tripped diffusers
    assert len(runner.calls) == steps and unipc.step_index == steps
    assert sigmas == unipc.sigmas[:steps].tolist()
    assert torch.isfinite(latents).all()
