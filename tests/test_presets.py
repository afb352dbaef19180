"""``--preset lightning4`` and the no-guidance mode: the plan, and the sidecar of a real command-line run."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from bernini.frontends.cli import main
from bernini.request import GenerationRequest
from bernini.resolve import resolve_request
from bernini.sampling.guidance import GUIDANCE_MODES, Combo, Text, Weights
from bernini.sampling.presets import PRESETS


def shifted(sigma: float, shift: float) -> float:
    return shift * sigma / (1 + (shift - 1) * sigma)


def test_preset_plan_pins_steps_scheduler_and_guidance(one_line_error):
    resolved = resolve_request(GenerationRequest(prompt="a fox", preset="lightning4", num_inference_steps=None))
    assert resolved.num_inference_steps == 4
    assert resolved.guidance.mode.name == "none"
    assert resolved.scheduler.name == "flow_match_euler" and resolved.scheduler.sigmas == (1.0, 0.75, 0.5, 0.25)
    assert resolved.request_record()["preset"] == "lightning4"
    one_line_error(resolve_request, GenerationRequest(prompt="x", preset="lightning4", use_unipc=True), match="drop")
    one_line_error(resolve_request, GenerationRequest(prompt="x", preset="turbo"), match="unknown preset")


def test_preset_yields_to_what_the_user_gave_and_says_so():
    """Issue 19 item 4: values the user gave win over the preset, each with a note naming the preset's value."""
    request = GenerationRequest(
        prompt="a fox", preset="lightning4", num_inference_steps=6, flow_shift=3.0, guidance_mode="t2v"
    )
    resolved = resolve_request(request)
    assert resolved.num_inference_steps == 6 and resolved.guidance.mode.name == "t2v"
    assert resolved.scheduler.name == "flow_match_euler" and resolved.scheduler.flow_shift == 3.0
    assert resolved.scheduler.sigmas is None  # the 4 distilled sigmas do not fit 6 steps
    assert [(a.name, a.asked, a.used) for a in resolved.adjustments] == [
        ("guidance_mode", "none", "t2v"),
        ("num_inference_steps", 4, 6),
        ("flow_shift", 5.0, 3.0),
    ]
    assert all("preset lightning4" in a.why for a in resolved.adjustments)
    record = resolved.request_record()
    assert (record["num_inference_steps"], record["flow_shift"], record["guidance_mode"]) == (6, 3.0, "t2v")
    shift_only = resolve_request(replace(request, num_inference_steps=None, guidance_mode=None))
    assert shift_only.num_inference_steps == 4 and shift_only.scheduler.sigmas == PRESETS["lightning4"].sigmas
    assert shift_only.guidance.mode.name == "none" and shift_only.scheduler.flow_shift == 3.0


@pytest.mark.parametrize(("task", "media"), [("r2v", {"images": ["ref.png"]}), ("rv2v", {"video": ["v.mp4"]})])
def test_reference_tasks_keep_their_guidance_under_the_preset(task, media, tmp_path, monkeypatch):
    from bernini.tasks import TASKS

    monkeypatch.chdir(tmp_path)
    for name in ("ref.png", "v.mp4"):
        (tmp_path / name).write_bytes(b"x")
    extra = {"images": ["ref.png"]} if task == "rv2v" else {}
    resolved = resolve_request(GenerationRequest(prompt="a fox", preset="lightning4", task_type=task, **media, **extra))
    assert resolved.guidance.mode.name == TASKS[task].guidance_mode != "none"
    assert resolved.num_inference_steps == 4 and resolved.scheduler.sigmas == PRESETS["lightning4"].sigmas
    (note,) = resolved.adjustments
    assert (note.name, note.asked, note.used) == ("guidance_mode", "none", TASKS[task].guidance_mode)


def test_explicit_steps_and_shift_win_on_the_command_line(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "out.png"
    argv = ["generate", "--config", str(tiny_bundle), "--prompt", "a fox", "--preset", "lightning4", "--output"]
    argv += [str(out), "--task_type", "t2i", "--height", "16", "--width", "16"]
    assert main([*argv, "--num_inference_steps", "3", "--flow_shift", "3"]) == 0
    err = capsys.readouterr().err
    assert "note: num_inference_steps 4 -> 3: given explicitly, it wins over preset lightning4's" in err
    assert "note: flow_shift 5.0 -> 3.0: given explicitly, it wins over preset lightning4's" in err
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert (sidecar["request"]["num_inference_steps"], sidecar["request"]["flow_shift"]) == (3, 3.0)
    assert len(sidecar["resolved"]["timesteps"]) == 3 and sidecar["resolved"]["flow_shift"] == 3.0
    assert [a["name"] for a in sidecar["adjustments"]][:2] == ["num_inference_steps", "flow_shift"]


def test_no_guidance_is_one_branch_with_everything_and_the_prompt():
    mode = GUIDANCE_MODES["none"]
    assert mode.branches == ((Combo.ALL, Text.PROMPT),) and mode.forwards_per_step == 1
    prediction = torch.randn(1, 16, 2, 4, 4)
    out = mode.combine([prediction], torch.randn_like(prediction), 0.5, Weights(9.0, 9.0, 9.0), None)
    assert torch.equal(out, prediction)  # no weight touches it


@pytest.mark.parametrize("task", ["t2v", "v2v"])
def test_preset_sidecar_one_forward_per_step_and_the_distilled_timesteps(task, tiny_bundle, tmp_path):
    from bernini.io.output import write_video

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
