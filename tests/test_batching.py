"""``--batch_branches``: branches of one packed layout in one forward give the unbatched latents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bernini.request import GenerationRequest
from bernini.sampling.sampler import BatchedBranchRunner, layout_key

SIZE = dict(num_frames=5, height=32, width=32, num_inference_steps=3, output_type="latent")


def media():
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    ref = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    return video, ref


@pytest.mark.parametrize(
    ("task", "mode", "batched"),
    [
        ("t2v", "t2v_apg", 1),
        ("t2v", "t2v", 1),
        ("rv2v", "rv2v", 1),
        ("v2v", "v2v_apg", 1),
        ("r2v", "r2v_apg", 1),
        ("t2v", "none", 0),
    ],
)
def test_batched_equals_unbatched(tiny_pipe, task, mode, batched):
    video, ref = media()
    inputs = {"t2v": {}, "rv2v": {"video": [video], "images": [ref]}, "v2v": {"video": [video]}}.get(task)
    if inputs is None:
        inputs = {"images": [ref]}
    plain = tiny_pipe("a fox", task_type=task, guidance_mode=mode, **inputs, **SIZE)
    fast = tiny_pipe("a fox", task_type=task, guidance_mode=mode, batch_branches=True, **inputs, **SIZE)
    assert (fast.latents - plain.latents).abs().max() <= 1e-5
    assert fast.parameters["resolved"]["batched_forwards"] == batched * SIZE["num_inference_steps"]
    assert fast.parameters["resolved"]["forwards"] == plain.parameters["resolved"]["forwards"]
    assert fast.parameters["request"]["batch_branches"] is True


def test_groups_by_layout_and_respects_memory(tiny_pipe):
    """rv2v: 0/u, V/u, VI/u, VI/c → only the last two share a layout; a full memory runs them one by one."""
    video, ref = media()
    sizes = {k: v for k, v in SIZE.items() if k != "output_type"}
    request = GenerationRequest(prompt="a fox", task_type="rv2v", video=[video], images=[ref], **sizes)
    resolved = tiny_pipe.resolve(request)
    encoded = tiny_pipe.encode_conditions(resolved)
    text = tiny_pipe.encode_prompts(resolved.t5_text, resolved.negative_prompt)
    inputs = tiny_pipe.sampling_inputs(resolved, encoded, text, None)
    keys = [layout_key(inputs, b) for b in inputs.mode.branches]
    assert keys[2] == keys[3] and len(set(keys)) == 3
    expert = tiny_pipe.transformer
    seen = []
    runner = BatchedBranchRunner(fits=lambda batch, elements: seen.append((batch, elements)) or False)
    one_by_one = runner(expert, inputs, inputs.mode.branches, inputs.latents, torch.tensor(900))
    assert runner.batched_calls == 0 and seen and seen[0][0] == 2
    together = BatchedBranchRunner()(expert, inputs, inputs.mode.branches, inputs.latents, torch.tensor(900))
    for a, b in zip(one_by_one, together, strict=True):
        assert (a - b).abs().max() <= 1e-5
    assert (together[2] - together[3]).abs().max() > 1e-4  # the batch keeps each branch's own text
