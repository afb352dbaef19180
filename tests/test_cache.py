"""``--cache firstblock``: diffusers' hooks on the packed forward, one history per branch, skips recorded."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from bernini.guidance import GUIDANCE_MODES
from bernini.plan import make_plan
from bernini.request import GenerationRequest
from bernini.sampler import BranchRunner

SIZE = dict(task_type="t2v", num_frames=5, height=32, width=32, num_inference_steps=8, output_type="latent")


def test_off_identical_and_hooks_removed(tiny_pipe):
    before = tiny_pipe("a fox", **SIZE)
    cached = tiny_pipe("a fox", cache="firstblock", cache_threshold=10.0, **SIZE)
    after = tiny_pipe("a fox", **SIZE)
    assert torch.equal(before.latents, after.latents)  # a cached run leaves nothing behind
    assert not any(e.is_cache_enabled for e in tiny_pipe.experts)
    assert before.parameters["resolved"]["skipped_forwards"] == 0
    resolved = cached.parameters["resolved"]
    assert resolved["cache"] == {"kind": "firstblock", "threshold": 10.0}
    assert 0 < resolved["skipped_forwards"] < resolved["forwards"]
    assert (cached.latents - before.latents).abs().max() > 0  # skipping changes the result


def test_tiny_threshold_skips_nothing_and_matches(tiny_pipe):
    plain = tiny_pipe("a fox", **SIZE)
    cached = tiny_pipe("a fox", cache="firstblock", cache_threshold=1e-12, **SIZE)
    assert cached.parameters["resolved"]["skipped_forwards"] == 0
    assert torch.equal(cached.latents, plain.latents)


def test_skip_count_is_per_branch_and_each_branch_has_its_own_context():
    class Expert:
        is_cache_enabled = True

        def __init__(self):
            self.contexts, self.active = [], None

        @contextmanager
        def cache_context(self, name):
            self.active = name
            yield
            self.active = None

        def forward_packed(self, conditions, target, timestep, context):
            self.contexts.append(self.active)
            return target

    from bernini.conditions import Conditions
    from bernini.plan import SourceIdPolicy
    from bernini.sampler import SamplingInputs, run_batched

    expert = Expert()
    mode = GUIDANCE_MODES["rv2v"]
    conditions = Conditions(videos=[torch.zeros(1, 16, 1, 2, 2)], images=[torch.zeros(1, 16, 1, 2, 2)])
    text = {b.text: torch.zeros(1, 3, 4) for b in mode.branches}
    inputs = SamplingInputs(torch.zeros(1, 16, 1, 2, 2), conditions.combos(SourceIdPolicy()), text, mode, None, 1.0)
    BranchRunner()(expert, inputs, mode.branches, inputs.latents, torch.tensor(900))
    assert expert.contexts == ["0/u", "V/u", "VI/u", "VI/c"]
    run_batched(expert, inputs, mode.branches[2:], inputs.latents, torch.tensor(900))
    assert expert.contexts[-1] == "VI/u+VI/c"


def test_cache_flags_validated(one_line_error):
    plan = make_plan(GenerationRequest(prompt="x", cache="firstblock"))
    assert plan.cache.threshold == 0.05 and plan.request_record()["cache"] == "firstblock"
    one_line_error(make_plan, GenerationRequest(prompt="x", cache="magic"), match="unknown cache")
    one_line_error(make_plan, GenerationRequest(prompt="x", cache_threshold=0.1), match="needs a cache")
    one_line_error(make_plan, GenerationRequest(prompt="x", cache="firstblock", cache_threshold=-1), match="positive")
