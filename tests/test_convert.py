"""``--quantize fp8|int8`` on load and ``bernini convert`` between layouts, round trips included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from community_files import diffusers_expert, write_comfy
from safetensors.torch import load_file

from bernini.loaders.convert import convert
from bernini.loaders.quant import QuantLinear, dense_state_dict, quantize_rows

STEPS = dict(num_frames=5, height=32, width=48, num_inference_steps=3, seed=5)


def load(config: Path, high=None, low=None, **kwargs):
    from bernini import BerniniPipeline

    pipe = BerniniPipeline.from_pretrained(config, device="cpu", high_noise_ckpt=high, low_noise_ckpt=low, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def frames(pipe) -> np.ndarray:
    return pipe("a lighthouse at dusk", task_type="t2v", **STEPS).frames


@pytest.mark.parametrize("mode", ["fp8", "int8"])
def test_quantize_on_load_keeps_block_linears_quantised_per_channel(tiny_bundle, mode):
    pipe = load(tiny_bundle, quantize=mode)
    dense = diffusers_expert(tiny_bundle / "transformer")
    quantized = {n: m for n, m in pipe.transformer.named_modules() if isinstance(m, QuantLinear)}
    assert len(quantized) == 10 * len(pipe.transformer.blocks)
    assert all(n.startswith("blocks.") for n in quantized)
    storage = torch.float8_e4m3fn if mode == "fp8" else torch.int8
    top = 448.0 if mode == "fp8" else 127.0
    for name, module in quantized.items():
        weight = dense[f"{name}.weight"]
        assert module.weight.dtype == storage
        torch.testing.assert_close(module.weight_scale, weight.abs().amax(dim=1) / top)  # one scale per channel
        error = (module.dequantized(torch.float32) - weight).abs()
        assert (error <= module.weight_scale[:, None] * (16 if mode == "fp8" else 0.5) * (1 + 1e-5)).all()
    assert pipe.transformer.proj_out.weight.dtype == torch.float32  # the head stays dense
    assert pipe.source.describe()["quantize"] == mode


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_quantized_frames_stay_close_to_full_precision(tiny_pipe, tiny_bundle):
    reference = frames(tiny_pipe)
    fp8 = frames(load(tiny_bundle, quantize="fp8"))
    int8 = frames(load(tiny_bundle, quantize="int8"))
    assert 0 < np.abs(int8 - reference).mean() < np.abs(fp8 - reference).mean() < 0.02


def test_quantize_rows_matches_an_independent_formula():
    weight = torch.randn(6, 40, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 7)[:, None]
    stored, scale = quantize_rows(weight, "int8")
    expected_scale = weight.abs().max(dim=1).values / 127
    torch.testing.assert_close(scale, expected_scale)
    assert torch.equal(stored, torch.round(weight / expected_scale[:, None]).to(torch.int8))


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_pre_quantised_bundle_round_trips(tiny_bundle, tmp_path):
    on_the_fly = load(tiny_bundle, quantize="fp8")
    out = tmp_path / "fp8-bundle"
    convert(tiny_bundle, out, "diffusers", dtype=torch.float32, quantize="fp8")
    stored = load_file(str(next((out / "transformer").glob("*.safetensors"))))
    assert any(v.dtype == torch.float8_e4m3fn for v in stored.values())
    assert any(k.endswith(".weight_scale") for k in stored)
    pipe = load(out)  # no --quantize: the bundle's fp8 weights stay fp8
    for ours, theirs in ((pipe.transformer, on_the_fly.transformer), (pipe.transformer_2, on_the_fly.transformer_2)):
        a, b = dense_state_dict(ours), dense_state_dict(theirs)
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
        assert sum(isinstance(m, QuantLinear) for m in ours.modules()) == 10 * len(ours.blocks)
    np.testing.assert_array_equal(frames(pipe), frames(on_the_fly))


def test_cli_converts_bundle_to_comfy_files_and_back(tiny_bundle, tmp_path):
    comfy = tmp_path / "comfy"
    proc = subprocess.run(
        [sys.executable, "-m", "bernini", "convert", "--config", str(tiny_bundle), "--to", "comfy"]
        + ["--output", str(comfy), "--dtype", "fp16"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    high = comfy / "wan2.2_bernini_r_high_noise_fp16.safetensors"
    low = comfy / "wan2.2_bernini_r_low_noise_fp16.safetensors"
    tensors = load_file(str(high))
    assert "blocks.0.self_attn.q.weight" in tensors and "head.modulation" in tensors
    assert all(v.dtype == torch.float16 for v in tensors.values())
    back = tmp_path / "back"
    convert(tiny_bundle, back, "diffusers", high_noise_ckpt=high, low_noise_ckpt=low, dtype=torch.float32)
    pipe = load(back)
    for name in ("transformer", "transformer_2"):
        original = diffusers_expert(tiny_bundle / name)
        loaded = dense_state_dict(getattr(pipe, name))
        assert set(loaded) == set(original)
        assert all(torch.equal(loaded[k], original[k].half().float()) for k in original)


def test_comfy_fp8_scaled_round_trips_byte_exact(tiny_bundle, tmp_path):
    state = diffusers_expert(tiny_bundle / "transformer")
    state_2 = diffusers_expert(tiny_bundle / "transformer_2")
    src = tmp_path / "src"
    src.mkdir()
    high, low = src / "high_noise.safetensors", src / "low_noise.safetensors"
    write_comfy(state, high, "fp8_scaled")
    write_comfy(state_2, low, "fp8_scaled")
    bundle = tmp_path / "bundle"
    convert(tiny_bundle, bundle, "diffusers", high_noise_ckpt=high, low_noise_ckpt=low, dtype=torch.float16)
    comfy = tmp_path / "comfy"
    written = convert(bundle, comfy, "comfy", dtype=torch.float16)
    assert [p.name for p in written] == [
        "wan2.2_bernini_r_high_noise_fp8_scaled.safetensors",
        "wan2.2_bernini_r_low_noise_fp8_scaled.safetensors",
    ]
    original, again = load_file(str(high)), load_file(str(written[0]))
    assert set(again) == set(original) - {k for k in original if k.endswith("scale_input")}
    for key, value in again.items():
        assert value.dtype == original[key].dtype, key
        if value.dtype == torch.float8_e4m3fn:
            assert torch.equal(value.view(torch.uint8), original[key].view(torch.uint8)), key
        else:
            assert torch.equal(value, original[key]), key


def test_convert_refuses_a_non_empty_output(tiny_bundle, tmp_path, one_line_error):
    (tmp_path / "x").write_text("keep me")
    one_line_error(convert, tiny_bundle, tmp_path, "diffusers", match="not an empty directory")
    one_line_error(convert, tiny_bundle, tmp_path / "new", "onnx", match="unknown layout")
