"""LoRAs in every key format against W + scale·(B·A) (and the full deltas) merged by hand, per expert."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bernini import BerniniPipeline
from bernini.loaders.lora import LoraSpec

RANK = 4
# Wan's module names → diffusers' (the test's own table, independent of bernini.loaders.lora)
LINEARS = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
FORMATS = ("diffusers", "comfyui", "kohya", "lightx2v")
KWARGS = dict(task_type="t2v", num_frames=5, height=32, width=32, num_inference_steps=2, output_type="latent")


def make_lora(expert: torch.nn.Module, fmt: str, seed: int) -> tuple[dict[str, torch.Tensor], list]:
    """A LoRA file's tensors in ``fmt`` and the hand-merge recipe: (parameter, delta before the scale)."""
    generator = torch.Generator().manual_seed(seed)
    params = dict(expert.named_parameters())
    tensors: dict[str, torch.Tensor] = {}
    recipe: list[tuple[str, torch.Tensor]] = []
    alpha = 2.0 if fmt != "diffusers" else None
    for block in range(len(expert.blocks)):
        for wan, ours in LINEARS.items():
            out_dim, in_dim = params[f"blocks.{block}.{ours}.weight"].shape
            down = torch.randn(RANK, in_dim, generator=generator) * 0.2
            up = torch.randn(out_dim, RANK, generator=generator) * 0.2
            factor = alpha / RANK if alpha else 1.0
            recipe.append((f"blocks.{block}.{ours}.weight", up @ down * factor))
            if fmt == "diffusers":
                stem, a, b = f"transformer.blocks.{block}.{ours}", "lora_A", "lora_B"
            elif fmt == "kohya":
                stem, a, b = f"lora_unet_blocks_{block}_{wan.replace('.', '_')}", "lora_down", "lora_up"
            elif fmt == "comfyui":
                stem, a, b = f"diffusion_model.blocks.{block}.{wan}", "lora_down", "lora_up"
            else:
                stem, a, b = f"diffusion_model.blocks.{block}.{wan}", "lora_A", "lora_B"
            tensors[f"{stem}.{a}.weight"], tensors[f"{stem}.{b}.weight"] = down, up
            if alpha:
                tensors[f"{stem}.alpha"] = torch.tensor(alpha)
            if fmt == "lightx2v":
                bias = torch.randn(out_dim, generator=generator) * 0.1
                tensors[f"{stem}.diff_b"] = bias
                recipe.append((f"blocks.{block}.{ours}.bias", bias))
        if fmt == "lightx2v":  # full deltas on the cross-attention norm (Wan's norm3) and the modulation
            for wan, ours in (("norm3.diff", "norm2.weight"), ("norm3.diff_b", "norm2.bias")):
                delta = torch.randn(params[f"blocks.{block}.{ours}"].shape, generator=generator) * 0.1
                tensors[f"diffusion_model.blocks.{block}.{wan}"] = delta
                recipe.append((f"blocks.{block}.{ours}", delta))
            delta = torch.randn(params[f"blocks.{block}.scale_shift_table"].shape, generator=generator) * 0.1
            tensors[f"diffusion_model.blocks.{block}.modulation.diff"] = delta
            recipe.append((f"blocks.{block}.scale_shift_table", delta))
    if fmt == "lightx2v":  # and the output head
        for wan, ours in (("head.head.diff", "proj_out.weight"), ("head.head.diff_b", "proj_out.bias")):
            delta = torch.randn(params[ours].shape, generator=generator) * 0.1
            tensors[f"diffusion_model.{wan}"] = delta
            recipe.append((ours, delta))
    return tensors, recipe


def recorded(path, expert: str, scale: float) -> dict:
    """What the sidecar records of one LoRA: the path as given and absolute, the expert, the scale, the file's hash."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    absolute = str(Path(path).absolute())
    return {"path": str(path), "absolute": absolute, "expert": expert, "scale": scale, "sha256": digest}


def hand_merge(expert: torch.nn.Module, recipe: list, scale: float) -> None:
    params = dict(expert.named_parameters())
    with torch.no_grad():
        for name, delta in recipe:
            params[name].add_(scale * delta)


@pytest.fixture(scope="module")
def plain(tiny_bundle):
    pipe = BerniniPipeline.from_pretrained(tiny_bundle, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load(tiny_bundle, **kwargs) -> BerniniPipeline:
    pipe = BerniniPipeline.from_pretrained(tiny_bundle, device="cpu", **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_equals_the_hand_merge(fmt, tiny_bundle, plain, tmp_path):
    tensors, recipe = make_lora(plain.transformer, fmt, seed=1)
    path = tmp_path / f"{fmt}.safetensors"
    save_file(tensors, str(path))
    scale = 0.7
    merged = load(tiny_bundle, loras=[LoraSpec(str(path), "both", scale)])
    by_hand = load(tiny_bundle)
    for expert in by_hand.experts:
        hand_merge(expert, recipe, scale)
    ours = merged("a fox", **KWARGS)
    reference = by_hand("a fox", **KWARGS)
    baseline = plain("a fox", **KWARGS)
    assert torch.allclose(ours.latents, reference.latents, atol=1e-5, rtol=0)
    assert (ours.latents - baseline.latents).abs().max() > 1e-3  # the LoRA does something
    assert ours.parameters["model"]["loras"] == [recorded(path, "both", scale)]


def test_high_and_low_scales_act_on_their_own_expert(tiny_bundle, plain, tmp_path):
    tensors, recipe = make_lora(plain.transformer, "lightx2v", seed=2)
    path = tmp_path / "lora.safetensors"
    save_file(tensors, str(path))
    pipe = load(tiny_bundle, loras=[LoraSpec(str(path), "high", 0.5), LoraSpec(str(path), "low", -1.5)])
    for expert, original, scale in (
        (pipe.transformer, plain.transformer, 0.5),
        (pipe.transformer_2, plain.transformer_2, -1.5),
    ):
        expected = {k: v.clone() for k, v in original.named_parameters()}
        for name, delta in recipe:
            expected[name] += scale * delta
        for name, param in expert.named_parameters():
            assert torch.allclose(param, expected[name], atol=1e-6), name
    only_high = load(tiny_bundle)
    only_high.load_lora_weights(path, expert="high", scale=0.5)
    for a, b in zip(only_high.transformer_2.parameters(), plain.transformer_2.parameters(), strict=True):
        assert torch.equal(a, b)  # the low expert is untouched
    assert not all(
        torch.equal(a, b)
        for a, b in zip(only_high.transformer.parameters(), plain.transformer.parameters(), strict=True)
    )


def test_unload_restores_the_weights(tiny_bundle, plain, tmp_path):
    tensors, _ = make_lora(plain.transformer, "comfyui", seed=3)
    path = tmp_path / "lora.safetensors"
    save_file(tensors, str(path))
    pipe = load(tiny_bundle)
    pipe.load_lora_weights(path, scale=1.0)
    pipe.unload_lora_weights()
    assert pipe.loras == []
    for a, b in zip(pipe.transformer.parameters(), plain.transformer.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_spec_parsing_and_bad_files(tmp_path, tiny_bundle, one_line_error):
    path = tmp_path / "x.safetensors"
    save_file({"diffusion_model.nothing_like_wan.lora_down.weight": torch.zeros(2, 2)}, str(path))
    assert LoraSpec.parse(f"{path}:0.25", "low") == LoraSpec(str(path), "low", 0.25)
    assert LoraSpec.parse(str(path)) == LoraSpec(str(path), "both", 1.0)
    one_line_error(LoraSpec.parse, str(tmp_path / "missing.safetensors"), match="not found")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    pipe = load(tiny_bundle)
    one_line_error(pipe.load_lora_weights, tmp_path / "junk.safetensors", match="cannot read LoRA")
    wrong = tmp_path / "wrong.safetensors"
    save_file({"diffusion_model.head.head.diff": torch.zeros(3, 3)}, str(wrong))
    one_line_error(pipe.load_lora_weights, wrong, match="another model")
    one_line_error(pipe.load_lora_weights, wrong, expert="middle", match="expert must be one of")


def test_command_line_flags_reach_the_pipeline_and_the_sidecar(tiny_bundle, plain, tmp_path):
    import json

    from bernini.frontends.cli import main

    tensors, _ = make_lora(plain.transformer, "kohya", seed=4)
    path = tmp_path / "k.safetensors"
    save_file(tensors, str(path))
    out = tmp_path / "o.mp4"
    argv = ["generate", "--config", str(tiny_bundle), "--prompt", "a fox", "--output", str(out), "--num_frames", "5"]
    argv += ["--height", "16", "--width", "16", "--num_inference_steps", "1"]
    assert main([*argv, "--lora_high", f"{path}:0.5", "--lora", str(path)]) == 0
    loras = json.loads(out.with_name(out.name + ".json").read_text())["model"]["loras"]
    assert loras == [recorded(path, "both", 1.0), recorded(path, "high", 0.5)]
    assert main([*argv, "--lora", str(tmp_path / "missing.safetensors")]) != 0


# ---------------------------------------------------------------- LoRA × every weight format
# How each format loads (from_pretrained keywords; ``files`` names the checkpoint files written below).
WEIGHT_FORMATS = {
    "fp32": {},
    "bf16": {"dtype": "bf16"},
    "fp8": {"quantize": "fp8"},
    "int8": {"quantize": "int8"},
    "fp8 file": {"files": "kijai"},  # Kijai's fp8 with one scale per tensor, stored quantised
    "gguf Q8_0": {"files": "Q8_0"},  # kept in its blocks: the LoRA pairs stay beside the layer
    "gguf Q4_K": {"files": "Q4_K"},  # rows of 96 flattened to 256: dequantised at load
}


@pytest.fixture(scope="module")
def weight_files(tiny_bundle, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    from community_files import diffusers_expert, write_comfy, write_gguf

    root = tmp_path_factory.mktemp("formats")
    out = {}
    for kind, suffix in (("kijai", "safetensors"), ("Q8_0", "gguf"), ("Q4_K", "gguf")):
        pair = []
        for expert, noise in (("transformer", "high"), ("transformer_2", "low")):
            path = root / f"{noise}_noise_{kind}.{suffix}"
            state = diffusers_expert(tiny_bundle / expert)
            write_comfy(state, path, kind) if suffix == "safetensors" else write_gguf(state, path, kind)
            pair.append(path)
        out[kind] = (pair[0], pair[1])
    return out


def load_format(tiny_bundle, weight_files, fmt: str, **kwargs) -> BerniniPipeline:
    options = dict(WEIGHT_FORMATS[fmt])
    files = options.pop("files", None)
    if files:
        options["high_noise_ckpt"], options["low_noise_ckpt"] = weight_files[files]
    return load(tiny_bundle, **options, **kwargs)


def rounding(fmt: str, exact: torch.Tensor) -> torch.Tensor:
    """Per element, how far a weight stored in ``fmt`` may be from ``exact``: half a step of the format's grid."""
    row_max = exact.abs().amax(dim=1, keepdim=True)
    if fmt == "bf16":
        return exact.abs() * 2**-8
    if fmt in ("fp8", "fp8 file"):  # e4m3 per row: 3 mantissa bits; subnormal steps of 2^-9 of the row scale
        return (exact.abs() * 2**-4 + row_max / 448 * 2**-10) * 1.01
    if fmt == "int8":  # per row: steps of row max / 127
        return row_max / 127 / 2 * 1.01 + 1e-7
    return 1e-5 + exact.abs() * 1e-6  # fp32, and GGUF: the pairs beside the layer are exact


@pytest.mark.parametrize("fmt", list(WEIGHT_FORMATS))
def test_lora_on_every_weight_format_is_within_the_formats_rounding(fmt, tiny_bundle, plain, weight_files, tmp_path):
    from bernini.loaders.quant import dense_state_dict

    tensors, recipe = make_lora(plain.transformer, "comfyui", seed=5)
    path = tmp_path / "lora.safetensors"
    save_file(tensors, str(path))
    pipe = load_format(tiny_bundle, weight_files, fmt)
    kinds = {type(m).__name__ for m in pipe.transformer.modules()}
    base = {k: v.clone() for k, v in dense_state_dict(pipe.transformer).items()}
    pipe.load_lora_weights(path, scale=0.5)
    half = dense_state_dict(pipe.transformer)
    full = dense_state_dict(load_format(tiny_bundle, weight_files, fmt, loras=[LoraSpec(str(path))]).transformer)
    for name, delta in recipe:
        for scale, merged in ((0.5, half), (1.0, full)):
            exact = base[name] + scale * delta
            bound = rounding(fmt, exact)
            error = (merged[name] - exact).abs()
            assert (error <= bound).all(), f"{fmt} {name} × {scale}: off by {float((error - bound).max())} too much"
        # the scale matters: half the delta is well above the format's rounding
        assert (full[name] - half[name]).abs().max() > 4 * rounding(fmt, base[name] + delta).max(), name
    assert {type(m).__name__ for m in pipe.transformer.modules()} == kinds  # still stored in its format

    # and the forward runs the merged weight
    layer = pipe.transformer.get_submodule("blocks.0.attn1.to_q")
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0))
    dtype = pipe.dtype
    expected = torch.nn.functional.linear(
        x.to(dtype), half["blocks.0.attn1.to_q.weight"].to(dtype), layer.bias.to(dtype)
    )
    torch.testing.assert_close(
        layer(x.to(dtype)).float(), expected.float(), rtol=0, atol=float(expected.abs().max()) * 0.02
    )


def test_a_full_delta_on_gguf_weights_is_refused_in_one_line(tiny_bundle, weight_files, tmp_path, one_line_error):
    pipe = load_format(tiny_bundle, weight_files, "gguf Q8_0")
    path = tmp_path / "diff.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.diff": torch.zeros(96, 96)}, str(path))
    one_line_error(pipe.load_lora_weights, path, match="cannot be merged into a GGUF Q8_0 weight")


def expected_params(expert: torch.nn.Module, recipe: list, scale: float) -> dict[str, torch.Tensor]:
    out = {k: v.detach().clone() for k, v in expert.named_parameters()}
    for name, delta in recipe:
        out[name] += scale * delta
    return out


def assert_merged(expert: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    for name, param in expert.named_parameters():
        torch.testing.assert_close(param, expected[name], rtol=0, atol=1e-6, msg=name)


def test_kohya_lora_covering_some_layers_loads_those_and_names_keys_that_fit_none(
    tiny_bundle, plain, tmp_path, one_line_error
):
    tensors, recipe = make_lora(plain.transformer, "kohya", seed=6)
    covered = ("lora_unet_blocks_0_self_attn_q.", "lora_unet_blocks_1_ffn_2.")  # two layers of the model
    partial = {k: v for k, v in tensors.items() if k.startswith(covered)}
    kept = [(n, d) for n, d in recipe if n in ("blocks.0.attn1.to_q.weight", "blocks.1.ffn.net.2.weight")]
    assert len(partial) == 6 and len(kept) == 2
    path = tmp_path / "partial.safetensors"
    save_file(partial, str(path))
    pipe = load(tiny_bundle, loras=[LoraSpec(str(path), "high", 0.8)])
    assert_merged(pipe.transformer, expected_params(plain.transformer, kept, 0.8))

    stray = tmp_path / "stray.safetensors"
    save_file({**partial, "lora_unet_blocks_0_self_attn_zz.lora_down.weight": torch.zeros(4, 96)}, str(stray))
    message = one_line_error(pipe.load_lora_weights, stray, match="match no weight of this model")
    assert "lora_unet_blocks_0_self_attn_zz.lora_down.weight" in message


def peft_lora(expert: torch.nn.Module, seed: int) -> tuple[dict[str, torch.Tensor], list]:
    """A PEFT/diffusers file (no alpha tensors) over two layers, and its unscaled recipe (B·A)."""
    tensors, recipe = make_lora(expert, "diffusers", seed)
    keep = ("transformer.blocks.0.attn1.to_q.", "transformer.blocks.1.attn2.to_v.")
    names = ("blocks.0.attn1.to_q.weight", "blocks.1.attn2.to_v.weight")
    return {k: v for k, v in tensors.items() if k.startswith(keep)}, [(n, d) for n, d in recipe if n in names]


def test_peft_alpha_from_adapter_config_or_metadata_sets_the_scale(tiny_bundle, plain, tmp_path):
    import json

    tensors, recipe = peft_lora(plain.transformer, seed=7)
    beside = tmp_path / "peft"
    beside.mkdir()
    save_file(tensors, str(beside / "adapter_model.safetensors"))
    config = {"r": RANK, "lora_alpha": 8, "alpha_pattern": {"blocks.1.attn2.to_v": 2}, "target_modules": ["to_q"]}
    (beside / "adapter_config.json").write_text(json.dumps(config))
    pipe = load(tiny_bundle, loras=[LoraSpec(str(beside / "adapter_model.safetensors"), "high", 0.5)])
    factors = {"blocks.0.attn1.to_q.weight": 8 / RANK, "blocks.1.attn2.to_v.weight": 2 / RANK}
    scaled = [(n, d * factors[n]) for n, d in recipe]
    assert_merged(pipe.transformer, expected_params(plain.transformer, scaled, 0.5))

    metadata = {"lora_adapter_metadata": json.dumps({"transformer.r": RANK, "transformer.lora_alpha": 12})}
    inside = tmp_path / "diffusers_lora.safetensors"
    save_file(tensors, str(inside), metadata=metadata)
    pipe = load(tiny_bundle, loras=[LoraSpec(str(inside), "high", 1.0)])
    scaled = [(n, d * 12 / RANK) for n, d in recipe]
    assert_merged(pipe.transformer, expected_params(plain.transformer, scaled, 1.0))


def test_a_scale_that_is_not_a_number_is_named(tiny_bundle, tmp_path, capsys, one_line_error):
    from bernini.frontends.cli import main

    path = tmp_path / "style.safetensors"
    save_file({"diffusion_model.head.head.diff": torch.zeros(2, 2)}, str(path))
    one_line_error(LoraSpec.parse, f"{path}:abc", match=f"LoRA scale 'abc' in {path}:abc is not a number")
    one_line_error(LoraSpec.parse, f"{path}:inf", match="finite number")
    argv = ["generate", "--config", str(tiny_bundle), "--prompt", "a fox", "--output", str(tmp_path / "o.mp4")]
    assert main([*argv, "--lora", f"{path}:abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: LoRA scale 'abc' in {path}:abc is not a number; pass PATH or PATH:SCALE (e.g. {path}:0.8)"]
    assert not (tmp_path / "o.mp4").exists()
