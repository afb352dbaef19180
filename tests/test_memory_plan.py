"""The memory plan from meta-device shapes: the 24 GB / 64 GB target at A14B shapes, and bytes that match a load."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bernini.loaders.quant import QuantLinear
from bernini.runtime.memory import GIB, Request, Shapes, estimate_memory, packed_tokens

V2V_480P = Request(frames=81, height=480, width=832, source_videos=1)


def test_a14b_480p_v2v_fits_24gb_device_and_64gb_host_with_fp8_block_streaming():
    estimate = estimate_memory(V2V_480P, quantize="fp8", gpu_memory=24 * GIB)
    assert estimate.decision.mode == "blocks"
    assert estimate.tokens == 2 * 21 * (480 // 16) * (832 // 16)  # target + source tokens, packed
    assert estimate.peak_device <= 24 * GIB
    assert estimate.peak_host <= 64 * GIB
    names = [p.name for p in estimate.phases]
    assert names == ["encode media", "text encoder", "high-noise", "low-noise", "decode"]
    assert "streamed block by block" in estimate.lines()[0]


def test_a14b_shapes_are_the_published_sizes():
    bf16 = estimate_memory(V2V_480P, quantize="none")
    assert 28.0e9 < bf16.sizes.experts[0] < 29.2e9  # ≈14.0 B parameters, 28.6 GB per expert in bf16
    assert 10.5e9 < bf16.sizes.text_encoder < 12.0e9  # UMT5-XXL encoder ≈ 11 GB
    fp8 = estimate_memory(V2V_480P, quantize="fp8")
    assert 0.5 < fp8.sizes.experts[0] / bf16.sizes.experts[0] < 0.53


def test_the_plan_fails_what_does_not_fit():
    bf16 = estimate_memory(V2V_480P, quantize="none", gpu_memory=24 * GIB)
    assert bf16.peak_host > 64 * GIB  # two bf16 experts and UMT5 do not fit a 64 GB host
    resident = estimate_memory(V2V_480P, quantize="fp8", gpu_memory=24 * GIB, mode="model")
    # a whole fp8 expert plus 65k-token activations leaves less than the 5 % safety margin of a 24 GiB card
    assert resident.peak_device > 0.95 * 24 * GIB
    t2v = estimate_memory(Request(81, 480, 832), quantize="fp8", mode="blocks")
    assert t2v.phases[-2].device < estimate_memory(V2V_480P, quantize="fp8", mode="blocks").phases[-2].device
    assert estimate_memory(Request(81, 480, 832), quantize="fp8", gpu_memory=24 * GIB).decision.mode == "model"


def test_budget_drives_the_decision():
    assert estimate_memory(V2V_480P, quantize="fp8", gpu_memory=141 * GIB).decision.mode == "none"
    assert estimate_memory(V2V_480P, quantize="fp8", gpu_memory=40 * GIB).decision.mode == "model"
    small = estimate_memory(V2V_480P, quantize="fp8", gpu_memory=8 * GIB)
    assert small.decision.mode == "blocks" and small.decision.text_encoder == "cpu"
    tiny_card = estimate_memory(V2V_480P, quantize="fp8", gpu_memory=int(4.5 * GIB))
    assert tiny_card.decision.tiled_decode
    assert tiny_card.phases[-1].device < small.phases[-1].device


def test_token_count_formula():
    assert packed_tokens(Request(1, 480, 832)) == 30 * 52
    assert packed_tokens(Request(81, 480, 832, images=2)) == 21 * 30 * 52 + 2 * 30 * 52


@pytest.mark.parametrize("quantize", ["none", "fp8"])
def test_meta_weight_bytes_equal_the_loaded_bytes(tiny_bundle, quantize):
    from bernini import BerniniPipeline
    from bernini.frontends.estimate import shapes_for

    shapes = shapes_for(str(tiny_bundle))
    assert isinstance(shapes, Shapes) and shapes.transformer["num_layers"] == 2
    estimate = estimate_memory(Request(5, 32, 48), shapes=shapes, dtype=torch.float32, quantize=quantize)
    pipe = BerniniPipeline.from_pretrained(tiny_bundle, device="cpu", quantize=quantize)
    for expert, planned in zip(pipe.experts, estimate.sizes.experts, strict=True):
        held = sum(p.numel() * p.element_size() for p in expert.parameters())
        held += sum(m.weight_scale.numel() * 4 for m in expert.modules() if isinstance(m, QuantLinear))
        assert planned == held
    assert estimate.sizes.text_encoder == sum(p.numel() * p.element_size() for p in pipe.text_encoder.parameters())
    assert estimate.sizes.vae == sum(p.numel() * p.element_size() for p in pipe.vae.parameters())


def test_plan_command_and_dry_run(tiny_bundle, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bernini", "plan", "--quantize", "fp8", "--gpu_memory", "24"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("placement (budget 24.0 GiB): experts streamed block by block")
    assert lines[-1].startswith("peak: device")
    output = tmp_path / "out.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "bernini", "generate", "--config", str(tiny_bundle), "--prompt", "x"]
        + ["--num_frames", "5", "--height", "32", "--width", "48", "--output", str(output), "--dry_run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "task 1/1: t2v 5x32x48" in proc.stdout and "placement" in proc.stdout
    assert not output.exists()


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def dry_run_size(argv: list[str], capsys) -> tuple[int, int, int]:
    from bernini.frontends.cli import main

    assert main([*argv, "--dry_run"]) == 0
    out = capsys.readouterr().out
    size = re.search(r"^task 1/1: \w+ (\d+)x(\d+)x(\d+)$", out, re.M)
    assert size, out
    return tuple(int(v) for v in size.groups())


def test_dry_run_sizes_a_v2v_case_from_its_video_as_the_run_does(tiny_bundle, tmp_path, monkeypatch, capsys):
    """Issue 19 item 5: the dry run printed the flags' 81x480x848; the run took 33 frames at the source's size."""
    from bernini.frontends.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["generate", "--case", str(EXAMPLES / "v2v_case1.json"), "--config", str(tiny_bundle)]
    assert dry_run_size(argv, capsys) == (33, 96, 160)  # the 160x96 clip: 2 s at 16 fps, 4k+1
    argv += ["--max_image_size", "64", "--num_frames", "11", "--num_inference_steps", "1", "--output", "o.mp4"]
    planned = dry_run_size(argv, capsys)
    assert not (tmp_path / "o.mp4").exists()
    assert main(argv) == 0
    err = capsys.readouterr().err
    estimate = json.loads((tmp_path / "o.mp4.json").read_text())["resolved"]
    assert planned == (estimate["frames"], estimate["height"], estimate["width"]) == (9, 32, 64)
    assert "note: num_frames 11 -> 9: the VAE takes 4k+1 frames" in err


def test_dry_run_on_a_full_bundle_follows_the_source(full_bundle, tmp_path, monkeypatch, capsys):
    """The full model's v2v follows the source (0 x 0): the dry run printed 81x0x0."""
    monkeypatch.chdir(tmp_path)
    argv = ["generate", "--case", str(EXAMPLES / "v2v_case1.json"), "--config", str(full_bundle)]
    assert dry_run_size(argv, capsys) == (33, 96, 160)


def test_dry_run_numbers_tasks_as_generate_does(tiny_bundle, tmp_path, monkeypatch, capsys):
    from bernini.frontends.cli import main

    monkeypatch.chdir(tmp_path)
    tasks = [{"prompt": "a fox", "num_frames": 5, "height": 32, "width": 48}, {"prompt": "x", "video": "missing.mp4"}]
    (tmp_path / "tasks.jsonl").write_text("\n".join(json.dumps(t) for t in tasks))
    assert main(["generate", "--inputs", "tasks.jsonl", "--config", str(tiny_bundle), "--dry_run"]) == 1
    captured = capsys.readouterr()
    assert "task 1/2: t2v 5x32x48" in captured.out
    assert re.search(r"^error: task 2/2: video file \S*missing.mp4 not found$", captured.err, re.M), captured.err


def test_plan_and_generate_share_the_default_size():
    from bernini.frontends.cli import build_parser
    from bernini.request import GenerationRequest

    estimate, generate = build_parser().parse_args(["plan"]), build_parser().parse_args(["generate"])
    defaults = GenerationRequest()
    assert (estimate.num_frames, estimate.height, estimate.width) == (
        defaults.num_frames,
        defaults.height,
        defaults.width,
    )
    assert (generate.num_frames, generate.height, generate.width) == (
        estimate.num_frames,
        estimate.height,
        estimate.width,
    )
