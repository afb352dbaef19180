"""GGUF experts (Q8_0, Q4_K with ComfyUI-GGUF's reshape rule, Q5_K / Q6_K blocks) load, stay quantised, generate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from community_files import diffusers_expert, write_gguf

from bernini.loaders.quant import dense_state_dict

STEPS = dict(num_frames=5, height=32, width=48, num_inference_steps=3, seed=7)


def load(config: Path, high=None, low=None):
    from bernini import BerniniPipeline

    pipe = BerniniPipeline.from_pretrained(config, device="cpu", high_noise_ckpt=high, low_noise_ckpt=low)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def frames(pipe) -> np.ndarray:
    return pipe("a sailing boat", task_type="t2v", **STEPS).frames


@pytest.fixture(scope="module")
def gguf_files(tiny_bundle, tmp_path_factory) -> dict[str, tuple[Path, Path, dict, dict]]:
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for kind in ("Q8_0", "Q4_K"):
        high, low = root / f"bernini_r_high_noise_{kind}.gguf", root / f"bernini_r_low_noise_{kind}.gguf"
        meant_high = write_gguf(diffusers_expert(tiny_bundle / "transformer"), high, kind)
        meant_low = write_gguf(diffusers_expert(tiny_bundle / "transformer_2"), low, kind)
        out[kind] = (high, low, meant_high, meant_low)
    return out


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_K"])
def test_gguf_files_load_the_tensors_gguf_decodes(tiny_bundle, gguf_files, kind):
    from diffusers.quantizers.gguf.utils import GGUFLinear

    high, low, meant_high, meant_low = gguf_files[kind]
    pipe = load(tiny_bundle, high, low)
    for expert, meant in ((pipe.transformer, meant_high), (pipe.transformer_2, meant_low)):
        loaded = dense_state_dict(expert)
        assert set(loaded) == set(meant)
        for key, value in meant.items():
            # diffusers dequantises in the blocks' fp16 (d × q in half precision): equal up to fp16 rounding
            torch.testing.assert_close(loaded[key], value, rtol=2**-10, atol=1e-7, msg=key)
        layers = [m for m in expert.modules() if isinstance(m, GGUFLinear)]
        if kind == "Q8_0":  # rows of 32: kept in their stored blocks, dequantised per layer
            assert len(layers) == 10 * len(expert.blocks)
            assert all(m.weight.dtype == torch.uint8 and m.weight.quant_type.name == "Q8_0" for m in layers)
        else:  # rows of 96 were flattened to 256 (orig_shape): dequantised at load
            assert not layers


@pytest.mark.parametrize("kind, relative", [("Q8_0", 1 / 127), ("Q4_K", 1 / 15)])
def test_gguf_is_within_its_rounding_of_the_bundle(tiny_bundle, gguf_files, kind, relative):
    original = diffusers_expert(tiny_bundle / "transformer")
    _, _, meant, _ = gguf_files[kind]
    for key, value in original.items():
        error = (meant[key] - value).abs().max()
        if key.startswith("blocks.") and value.dim() == 2:
            assert 0 < error <= value.abs().max() * relative * 1.01, key  # at most one step of the block's grid
        else:
            assert error == 0, key


def test_gguf_generates_close_to_the_bundle(tiny_pipe, tiny_bundle, gguf_files):
    reference = frames(tiny_pipe)
    q8 = frames(load(tiny_bundle, *gguf_files["Q8_0"][:2]))
    q4 = frames(load(tiny_bundle, *gguf_files["Q4_K"][:2]))
    assert 0 < np.abs(q8 - reference).mean() < np.abs(q4 - reference).mean() < 0.05


@pytest.mark.parametrize("kind", ["Q4_K", "Q5_K", "Q6_K", "Q8_0"])
def test_k_quant_linear_stays_quantised_and_matches_gguf(tmp_path, kind):
    import gguf
    from accelerate import init_empty_weights
    from diffusers.quantizers.gguf.utils import GGUFLinear

    from bernini.loaders.gguf_file import load_gguf_expert

    qtype = gguf.GGMLQuantizationType[kind]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(0)
    rows, cols = 8, 512
    raw = rng.integers(0, 256, size=(rows, cols // block * size), dtype=np.uint8)
    scales = np.array([0.01], dtype=np.float16).view(np.uint8)  # K-quant and Q8_0 blocks hold fp16 scales
    offsets = {"Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [size - 2], "Q8_0": [0]}[kind]
    blocks = raw.reshape(-1, size)
    for offset in offsets:
        blocks[:, offset : offset + 2] = scales
    bias = rng.standard_normal(rows).astype(np.float32)
    path = tmp_path / "toy.gguf"
    writer = gguf.GGUFWriter(str(path), arch="wan")
    writer.add_tensor("proj.weight", raw, raw_shape=raw.shape, raw_dtype=qtype)
    writer.add_tensor("proj.bias", bias)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    with init_empty_weights():
        toy = torch.nn.Module()
        toy.proj = torch.nn.Linear(cols, rows)
    load_gguf_expert(toy, path, expert="toy", dtype=torch.float32)
    assert isinstance(toy.proj, GGUFLinear) and toy.proj.weight.quant_type == qtype
    weight = torch.from_numpy(gguf.quants.dequantize(raw, qtype).reshape(rows, cols).copy())
    x = torch.randn(3, cols)
    expected = x @ weight.T + torch.from_numpy(bias)
    torch.testing.assert_close(toy.proj(x), expected, rtol=0, atol=float(expected.abs().max()) * 2e-3)


def test_convert_to_gguf_and_back(tiny_bundle, tmp_path):
    from bernini.loaders.convert import convert

    written = convert(tiny_bundle, tmp_path / "gguf", "gguf", dtype=torch.float32, gguf_type="Q8_0")
    assert [p.suffix for p in written] == [".gguf", ".gguf"]
    pipe = load(tiny_bundle, written[0], written[1])
    original = diffusers_expert(tiny_bundle / "transformer")
    loaded = dense_state_dict(pipe.transformer)
    for key, value in original.items():
        bound = value.abs().max() / 127 * 1.01 if key.startswith("blocks.") and value.dim() == 2 else 0
        assert (loaded[key] - value).abs().max() <= bound, key
    assert np.isfinite(frames(pipe)).all()


def test_broken_gguf_is_a_one_line_error(tiny_bundle, tmp_path, one_line_error):
    from bernini import BerniniPipeline

    bad = tmp_path / "bad_high.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 10)
    one_line_error(BerniniPipeline.from_pretrained, tiny_bundle, high_noise_ckpt=bad, low_noise_ckpt=bad, match="GGUF")


def test_quantize_with_a_gguf_checkpoint_is_refused_not_ignored(tiny_bundle, gguf_files, tmp_path, one_line_error):
    from bernini import BerniniPipeline
    from bernini.loaders.convert import convert

    high, low = gguf_files["Q8_0"][:2]
    match = f"--quantize int8 does not apply to the GGUF checkpoint {high.name}"
    one_line_error(
        BerniniPipeline.from_pretrained,
        tiny_bundle,
        high_noise_ckpt=high,
        low_noise_ckpt=low,
        quantize="int8",
        match=match,
    )
    one_line_error(
        convert,
        tiny_bundle,
        tmp_path / "out",
        "diffusers",
        high_noise_ckpt=high,
        low_noise_ckpt=low,
        quantize="int8",
        match=match,
    )
