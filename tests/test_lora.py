"""LoRAs in every key format against W + scale·(B·A) (and the full deltas) merged by hand, per expert."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bernini import BerniniPipeline
from bernini.lora import LoraSpec

RANK = 4
# Wan's module names → diffusers' (the test's own table, independent of bernini.lora)
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
    return {"path": str(path), "absolute": str(Path(path).absolute()), "expert": expert, "scale": scale, "sha256": digest}


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

    from bernini.cli import main

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
