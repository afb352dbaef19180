"""``--preset lightning4`` and the no-guidance mode: the plan, and the sidecar of a real command-line run."""

from __future__ import annotations

import json

import pytest
import torch

from bernini.cli import main
from bernini.guidance import GUIDANCE_MODES, Combo, Text, Weights
from bernini.plan import make_plan
from bernini.presets import PRESETS
from bernini.request import GenerationRequest


def shifted(sigma: float, shift: float) -> float:
    return shift * sigma / (1 + (shift - 1) * sigma)


def test_preset_plan_pins_steps_scheduler_and_guidance(one_line_error):
    plan = make_plan(GenerationRequest(prompt="a fox", preset="lightning4", num_inference_steps=40))
    assert plan.num_inference_steps == 4
    assert plan.guidance.mode.name == "none"
    assert plan.scheduler.name == "flow_match_euler" and plan.scheduler.sigmas == (1.0, 0.75, 0.5, 0.25)
    assert plan.request_record()["preset"] == "lightning4"
    one_line_error(make_plan, GenerationRequest(prompt="x", preset="lightning4", guidance_mode="t2v"), match="drop")
    one_line_error(make_plan, GenerationRequest(prompt="x", preset="lightning4", use_unipc=True), match="drop")
    one_line_error(make_plan, GenerationRequest(prompt="x", preset="turbo"), match="unknown preset")


def test_no_guidance_is_one_branch_with_everything_and_the_prompt():
    mode = GUIDANCE_MODES["none"]
    assert mode.branches == ((Combo.ALL, Text.PROMPT),) and mode.forwards_per_step == 1
    prediction = torch.randn(1, 16, 2, 4, 4)
    out = mode.combine([prediction], torch.randn_like(prediction), 0.5, Weights(9.0, 9.0, 9.0), None)
    assert torch.equal(out, prediction)  # no weight touches it


@pytest.mark.parametrize("task", ["t2v", "v2v"])
def test_preset_sidecar_one_forward_per_step_and_the_distilled_timesteps(task, tiny_bundle, tmp_path):
    from bernini.output import write_video

    extra = []
    if task == "v2v":
        video = tmp_path / "in.mp4"
        write_video(video, (torch.rand(5, 16, 16, 3).numpy() * 255).astype("uint8"), fps=16)
        extra = ["--video", str(video)]
    out = tmp_path / "out.mp4"
    argv = ["generate", "--config", str(tiny_bundle), "--prompt", "a fox", "--preset", "lightning4", "--output"]
    argv += [str(out), "--num_frames", "5", "--height", "16", "--width", "16", *extra]
    assert main(argv) == 0
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    resolved = sidecar["resolved"]
    preset = PRESETS["lightning4"]
    assert resolved["preset"] == "lightning4" and resolved["guidance_mode"] == "none"
    assert resolved["forwards"] == preset.num_inference_steps == len(resolved["timesteps"])
    assert resolved["timesteps"] == [int(1000 * shifted(s, preset.flow_shift)) for s in preset.sigmas]
    assert resolved["high_noise_steps"] == 2 and resolved["low_noise_steps"] == 2  # 1000, 937 | 833, 625
    assert resolved["scheduler"] == "flow_match_euler"
    assert resolved["branches"] == [["VI", "c"]]
    assert sidecar["request"]["num_inference_steps"] == 4
