"""Progress: the pipeline's ``on_progress`` hook, the console's bars and log lines, the timings line and the
CPU size advice."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

from bernini.errors import BerniniError
from bernini.frontends.cli import main
from bernini.frontends.progress import ConsoleProgress
from bernini.io.output import write_video
from bernini.request import GenerationRequest

TINY = ["--num_inference_steps", "3", "--num_frames", "9", "--height", "32", "--width", "48", "--device", "cpu"]
TIMINGS = re.compile(
    r"^done in \d+\.\d s: load \d+\.\d, (encode \d+\.\d, )?text \d+\.\d, denoise \d+\.\d, "
    r"decode \d+\.\d, write \d+\.\d$"
)


def phases(events: list[tuple[str, int, int]]) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for phase, done, total in events:
        seen.setdefault(phase, []).append(done)
        assert 0 <= done <= total, (phase, done, total)
    return seen


def test_generate_reports_every_phase_per_unit_and_the_hook_changes_nothing(tiny_pipe, tmp_path: Path):
    clip = write_video(tmp_path / "src.mp4", np.full((9, 32, 48, 3), 0.5), 8)
    request = GenerationRequest(prompt="a fox", task_type="v2v", video=[str(clip)], num_inference_steps=3, seed=7)
    resolved = tiny_pipe.resolve(request)
    events: list[tuple[str, int, int]] = []
    with_hook = tiny_pipe.generate(resolved, on_progress=lambda *event: events.append(event), output_type="np")
    without = tiny_pipe.generate(resolved, output_type="np")
    np.testing.assert_array_equal(with_hook.frames, without.frames)
    seen = phases(events)
    assert list(seen) == ["encode", "text", "denoise", "decode"]
    assert seen["encode"] == [0, 1] and seen["text"] == [0, 1] and seen["denoise"] == [0, 1, 2, 3]
    latent_frames = with_hook.latents.shape[2]
    assert latent_frames > 2 and seen["decode"] == list(range(latent_frames + 1)), "one report per VAE chunk"


def test_loading_reports_each_module(tiny_bundle: Path):
    from bernini import BerniniPipeline

    events: list[tuple[str, int, int]] = []
    BerniniPipeline.from_pretrained(tiny_bundle, device="cpu", on_progress=lambda *event: events.append(event))
    assert events == [("load", done, 4) for done in range(5)]  # two experts, the text encoder, the VAE


def test_cli_keeps_a_line_per_phase_in_the_log_and_ends_with_the_timings(tiny_bundle: Path, tmp_path: Path, capsys):
    out = tmp_path / "fox.mp4"
    assert main(["generate", "--config", str(tiny_bundle), "--prompt", "a fox", "--output", str(out), *TINY]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines), "stderr is not a terminal: plain lines, nothing redrawn or erased"
    for line in (
        "loading: 1/4 module(s)",
        "loading: 4/4 module(s)",
        "encoding text: 1/1 prompt(s)",
        "denoising: 1/3 step(s)",
        "denoising: 2/3 step(s)",
        "denoising: 3/3 step(s)",
        "decoding: 3/3 chunk(s)",
        "writing: 1/1 file(s)",
    ):
        assert any(text.startswith(line + ", ") for text in lines), (line, lines)
    assert TIMINGS.match(lines[-1]), lines[-1]
    assert not any(line.startswith("note:") for line in lines), "a small run gets no size advice"


def test_a_terminal_gets_bars_that_stay(capsys):
    stream = io.StringIO()
    progress = ConsoleProgress(stream, tty=True)
    for done in range(4):
        progress("denoise", done, 3)
    text = stream.getvalue()
    assert "denoising: 100%" in text and "3/3" in text
    assert text.endswith("\n") and not text.rstrip("\n").endswith("\r"), "leave=True: the finished bar stays"
    assert re.match(r"^done in \d+\.\d s: denoise \d+\.\d$", progress.summary())


def test_full_default_sizes_on_the_cpu_get_an_estimate_and_the_flags_to_shrink_it(
    tiny_bundle: Path, tmp_path: Path, capsys, monkeypatch
):
    """The job itself is replaced (a full-size run would take minutes even on the tiny model): the note
    must come before it starts."""
    import bernini.runner

    started: list[str] = []

    def job(pipe, resolved, **kwargs):
        started.append(capsys.readouterr().err)
        raise BerniniError("stopped by the test before generating")

    monkeypatch.setattr(bernini.runner, "run_job", job)  # the CLI imports it when it runs
    args = ["generate", "--config", str(tiny_bundle), "--prompt", "a fox", "--output", str(tmp_path / "x.mp4")]
    assert main([*args, "--device", "cpu"]) == 1
    notes = [line for line in started[0].splitlines() if line.startswith("note:")]
    assert len(notes) == 1, started[0]
    assert re.match(
        r"^note: 81 frames at 848x480 with 40 steps on the CPU: at least \d+(\.\d)? (s|min|h) \(estimated\); "
        r"for a quick try pass --num_frames 17 --height 240 --width 416 --num_inference_steps 10$",
        notes[0],
    ), notes[0]
    started.clear()
    assert main([*args, *TINY]) == 1
    assert not [line for line in started[0].splitlines() if line.startswith("note:")]
    started.clear()
    clip = write_video(tmp_path / "small.mp4", np.full((9, 32, 48, 3), 0.5), 8)
    assert main([*args, "--device", "cpu", "--task_type", "v2v", "--video", str(clip)]) == 1
    assert not [line for line in started[0].splitlines() if line.startswith("note: 81 frames")], "sized by the source"


def test_the_estimate_scales_with_steps_forwards_and_tokens(tiny_pipe):
    """Independent of the code: the 4·N²·d attention term makes doubling the frames more than double it."""
    from bernini.runtime.estimate import transformer_flops

    def flops(**values) -> float:
        return transformer_flops(tiny_pipe, tiny_pipe.resolve(GenerationRequest(prompt="x", task_type="t2v", **values)))

    base = flops(num_frames=9, height=32, width=48, num_inference_steps=4)
    assert flops(num_frames=9, height=32, width=48, num_inference_steps=8) == pytest.approx(2 * base)
    assert flops(num_frames=9, height=32, width=96, num_inference_steps=4) > 2 * base, "twice the tokens"
    expert = tiny_pipe.experts[0]
    params = sum(p.numel() for p in expert.blocks[0].parameters())
    width = expert.config.num_attention_heads * expert.config.attention_head_dim
    grid = tiny_pipe.latent_grid
    _, p_h, p_w = expert.config.patch_size
    tokens = ((9 - 1) // grid.temporal + 1) * (32 // grid.spatial // p_h) * (48 // grid.spatial // p_w)
    forwards = tiny_pipe.resolve(GenerationRequest(prompt="x", task_type="t2v")).guidance.mode.forwards_per_step
    expected = len(expert.blocks) * (2 * tokens * params + 4 * tokens**2 * width) * forwards * 4
    assert base == pytest.approx(expected)
