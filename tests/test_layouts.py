"""The community's single files (Comfy-Org fp16 / fp8_scaled, Kijai fp8, the 1.3B file) load and generate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from community_files import diffusers_expert, wan_name, write_comfy

from bernini.loaders.quant import QuantLinear, dense_state_dict
from bernini.loaders.wan_keys import diffusers_to_native, native_to_diffusers

STEPS = dict(num_frames=5, height=32, width=48, num_inference_steps=3, seed=3)


def pipe_from(config: Path, high: Path | None, low: Path | None = None, **kwargs):
    from bernini import BerniniPipeline

    pipe = BerniniPipeline.from_pretrained(config, device="cpu", high_noise_ckpt=high, low_noise_ckpt=low, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def frames(pipe) -> np.ndarray:
    return pipe("a red fox in the snow", task_type="t2v", **STEPS).frames


@pytest.fixture(scope="module")
def experts(tiny_bundle) -> dict[str, dict[str, torch.Tensor]]:
    return {name: diffusers_expert(tiny_bundle / name) for name in ("transformer", "transformer_2")}


@pytest.fixture(scope="module")
def written(tiny_bundle, experts, tmp_path_factory) -> dict[str, tuple[Path, Path, dict, dict]]:
    root = tmp_path_factory.mktemp("community")
    files = {}
    for kind, prefix in (("fp16", ""), ("fp8_scaled", ""), ("kijai", "model.diffusion_model.")):
        high, low = root / f"bernini_r_high_noise_{kind}.safetensors", root / f"bernini_r_low_noise_{kind}.safetensors"
        meant_high = write_comfy(experts["transformer"], high, kind, prefix)
        meant_low = write_comfy(experts["transformer_2"], low, kind, prefix)
        files[kind] = (high, low, meant_high, meant_low)
    return files


def test_key_map_matches_the_independent_renaming(experts):
    for key in experts["transformer"]:
        assert native_to_diffusers(wan_name(key)) == key
        assert diffusers_to_native(key) == wan_name(key)
    assert native_to_diffusers("blocks.3.norm3.weight") == "blocks.3.norm2.weight"
    assert native_to_diffusers("model.diffusion_model.head.head.bias") == "proj_out.bias"
    assert native_to_diffusers("blocks.0.img_emb.x") is None


@pytest.mark.parametrize("kind", ["fp16", "fp8_scaled", "kijai"])
def test_community_files_load_the_tensors_they_mean(tiny_bundle, written, kind):
    high, low, meant_high, meant_low = written[kind]
    pipe = pipe_from(tiny_bundle, high, low)
    for expert, meant in ((pipe.transformer, meant_high), (pipe.transformer_2, meant_low)):
        loaded = dense_state_dict(expert)
        assert set(loaded) == set(meant)
        for key, value in meant.items():
            assert torch.equal(loaded[key], value), key  # fp16 exactly; fp8 exactly what the file stores
        quantized = [m for m in expert.modules() if isinstance(m, QuantLinear)]
        if kind == "fp16":
            assert not quantized
        else:  # kept in storage precision: every block linear is fp8 with its scale, nothing upcast
            assert len(quantized) == 10 * len(expert.blocks)
            assert all(m.weight.dtype == torch.float8_e4m3fn for m in quantized)


def test_fp8_files_are_within_fp8_rounding_of_the_bundle(experts, written):
    _, _, meant, _ = written["fp8_scaled"]
    for key, value in experts["transformer"].items():
        if key.startswith("blocks.") and value.dim() == 2:
            scale = value.abs().max() / 448
            error = (meant[key] - value).abs()
            normal = (value / scale).abs() >= 2.0**-6  # e4m3 normals: 3 mantissa bits, half an ulp ≤ 2^-4
            assert (error[normal] <= value.abs()[normal] * 2.0**-4 * (1 + 1e-6)).all(), key
            assert error.max() <= scale * 16, key  # the spacing is 32 in the top binade [256, 448]


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_fp16_files_generate_the_same_frames_as_the_bundle_rounded_to_fp16(tiny_bundle, written):
    high, low, _, _ = written["fp16"]
    community = frames(pipe_from(tiny_bundle, high, low))
    reference = pipe_from(tiny_bundle, None)
    with torch.no_grad():
        for expert in reference.experts:
            for param in expert.parameters():
                param.copy_(param.half().float())
    np.testing.assert_array_equal(community, frames(reference))


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
@pytest.mark.parametrize("kind", ["fp8_scaled", "kijai"])
def test_fp8_files_generate_close_to_the_bundle(tiny_pipe, tiny_bundle, written, kind):
    high, low, _, _ = written[kind]
    out = frames(pipe_from(tiny_bundle, high, low))
    reference = frames(tiny_pipe)
    assert np.isfinite(out).all()
    assert 0 < np.abs(out - reference).mean() < 0.02


def test_folder_holding_both_files(tiny_bundle, written, tmp_path):
    high, low, meant_high, meant_low = written["fp8_scaled"]
    folder = tmp_path / "both"
    folder.mkdir()
    (folder / high.name).symlink_to(high)
    (folder / low.name).symlink_to(low)
    pipe = pipe_from(tiny_bundle, folder, folder)
    assert torch.equal(dense_state_dict(pipe.transformer_2)["proj_out.weight"], meant_low["proj_out.weight"])
    assert torch.equal(dense_state_dict(pipe.transformer)["proj_out.weight"], meant_high["proj_out.weight"])


def test_checkpoint_flags_win_over_the_config_experts(tiny_bundle, written):
    high, low, meant_high, _ = written["fp16"]
    pipe = pipe_from(tiny_bundle, high, low)
    assert pipe.source.separate_checkpoints == {"transformer": str(high), "transformer_2": str(low)}
    assert torch.equal(pipe.transformer.proj_out.weight, meant_high["proj_out.weight"])


def test_single_expert_file_for_the_1_3b_layout(bundles, tmp_path):
    single = bundles["single"]
    state = diffusers_expert(single / "transformer")
    path = tmp_path / "wan2.1_bernini_1.3B_fp16.safetensors"
    meant = write_comfy(state, path, "fp16")
    pipe = pipe_from(single, path)
    assert pipe.transformer_2 is None
    loaded = dense_state_dict(pipe.transformer)
    assert all(torch.equal(loaded[k], v) for k, v in meant.items())
    assert np.isfinite(frames(pipe)).all()


def test_wrong_checkpoint_combinations_are_one_line_errors(bundles, tiny_bundle, written, one_line_error, tmp_path):
    from bernini import BerniniPipeline

    high, low, _, _ = written["fp16"]
    one_line_error(BerniniPipeline.from_pretrained, tiny_bundle, high_noise_ckpt=high, match="together")
    one_line_error(
        BerniniPipeline.from_pretrained, bundles["single"], high_noise_ckpt=high, low_noise_ckpt=low, match="single"
    )
    (tmp_path / "a.safetensors").symlink_to(high)
    (tmp_path / "b.safetensors").symlink_to(low)
    one_line_error(
        BerniniPipeline.from_pretrained,
        tiny_bundle,
        high_noise_ckpt=tmp_path,
        low_noise_ckpt=tmp_path,
        match="several weight files",
    )
