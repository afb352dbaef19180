"""The memory plan from meta-device shapes: the 24 GB / 64 GB target at A14B shapes, and bytes that match a load."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bernini.memory_plan import GIB, Request, Shapes, packed_tokens, plan_memory
from bernini.quant import QuantLinear

V2V_480P = Request(frames=81, height=480, width=832, source_videos=1)


def test_a14b_480p_v2v_fits_24gb_device_and_64gb_host_with_fp8_block_streaming():
    plan = plan_memory(V2V_480P, quantize="fp8", gpu_memory=24 * GIB)
    assert plan.decision.mode == "blocks"
    assert plan.tokens == 2 * 21 * (480 // 16) * (832 // 16)  # target + source tokens, packed
    assert plan.peak_device <= 24 * GIB
    assert plan.peak_host <= 64 * GIB
    names = [p.name for p in plan.phases]
    assert names == ["encode media", "text encoder", "high-noise", "low-noise", "decode"]
    assert "streamed block by block" in plan.lines()[0]


def test_a14b_shapes_are_the_published_sizes():
    bf16 = plan_memory(V2V_480P, quantize="none")
    assert 28.0e9 < bf16.sizes.experts[0] < 29.2e9  # ≈14.0 B parameters, 28.6 GB per expert in bf16
    assert 10.5e9 < bf16.sizes.text_encoder < 12.0e9  # UMT5-XXL encoder ≈ 11 GB
    fp8 = plan_memory(V2V_480P, quantize="fp8")
    assert 0.5 < fp8.sizes.experts[0] / bf16.sizes.experts[0] < 0.53


def test_the_plan_fails_what_does_not_fit():
    bf16 = plan_memory(V2V_480P, quantize="none", gpu_memory=24 * GIB)
    assert bf16.peak_host > 64 * GIB  # two bf16 experts and UMT5 do not fit a 64 GB host
    resident = plan_memory(V2V_480P, quantize="fp8", gpu_memory=24 * GIB, mode="model")
    # a whole fp8 expert plus 65k-token activations leaves less than the 5 % safety margin of a 24 GiB card
    assert resident.peak_device > 0.95 * 24 * GIB
    t2v = plan_memory(Request(81, 480, 832), quantize="fp8", mode="blocks")
    assert t2v.phases[-2].device < plan_memory(V2V_480P, quantize="fp8", mode="blocks").phases[-2].device
    assert plan_memory(Request(81, 480, 832), quantize="fp8", gpu_memory=24 * GIB).decision.mode == "model"


def test_budget_drives_the_decision():
    assert plan_memory(V2V_480P, quantize="fp8", gpu_memory=141 * GIB).decision.mode == "none"
    assert plan_memory(V2V_480P, quantize="fp8", gpu_memory=40 * GIB).decision.mode == "model"
    small = plan_memory(V2V_480P, quantize="fp8", gpu_memory=8 * GIB)
    assert small.decision.mode == "blocks" and small.decision.text_encoder == "cpu"
    tiny_card = plan_memory(V2V_480P, quantize="fp8", gpu_memory=int(4.5 * GIB))
    assert tiny_card.decision.tiled_decode
    assert tiny_card.phases[-1].device < small.phases[-1].device


def test_token_count_formula():
    assert packed_tokens(Request(1, 480, 832)) == 30 * 52
    assert packed_tokens(Request(81, 480, 832, images=2)) == 21 * 30 * 52 + 2 * 30 * 52


@pytest.mark.parametrize("quantize", ["none", "fp8"])
def test_meta_weight_bytes_equal_the_loaded_bytes(tiny_bundle, quantize):
    from bernini import BerniniPipeline
    from bernini.frontends.plan import shapes_for

    shapes = shapes_for(str(tiny_bundle))
    assert isinstance(shapes, Shapes) and shapes.transformer["num_layers"] == 2
    plan = plan_memory(Request(5, 32, 48), shapes=shapes, dtype=torch.float32, quantize=quantize)
    pipe = BerniniPipeline.from_pretrained(tiny_bundle, device="cpu", quantize=quantize)
    for expert, planned in zip(pipe.experts, plan.sizes.experts, strict=True):
        held = sum(p.numel() * p.element_size() for p in expert.parameters())
        held += sum(m.weight_scale.numel() * 4 for m in expert.modules() if isinstance(m, QuantLinear))
        assert planned == held
    assert plan.sizes.text_encoder == sum(p.numel() * p.element_size() for p in pipe.text_encoder.parameters())
    assert plan.sizes.vae == sum(p.numel() * p.element_size() for p in pipe.vae.parameters())


def test_plan_command_and_dry_run(tiny_bundle, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bernini.cli", "plan", "--quantize", "fp8", "--gpu_memory", "24"],
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
        [sys.executable, "-m", "bernini.cli", "generate", "--config", str(tiny_bundle), "--prompt", "x"]
        + ["--num_frames", "5", "--height", "32", "--width", "48", "--output", str(output), "--dry_run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "task 0: t2v 5x32x48" in proc.stdout and "placement" in proc.stdout
    assert not output.exists()
