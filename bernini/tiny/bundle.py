"""Tiny random bundles in the exact published layouts, for offline tests, CI and demos.

Every weight is perturbed (diffusers zero-initialises some layers), so outputs depend on every input.
Layouts:

* ``diffusers``: the Bernini-R-Diffusers bundle (root ``config.json`` + ``model_index.json`` +
  ``transformer/``, ``transformer_2/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``);
* ``separate``: a plain Wan2.2 base bundle in ``base/``, a config-only ``configs/bernini_renderer_wan22``
  pointing at it, and ``Bernini-R/bernini_renderer_{high,low}/`` shards whose keys carry the
  ``ema.diff_dec.transformer[_2].`` prefix next to different non-EMA copies;
* ``single``: the single-expert layout of the 1.3B variant (``skip_transformer_2``, boundary 0);
* ``wan22``: a plain Wan2.2-T2V-A14B diffusers bundle with no Bernini config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

LAYOUTS = ("diffusers", "separate", "single", "wan22")

TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=4,
    attention_head_dim=24,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=160,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True])
TINY_T5 = dict(
    vocab_size=384,
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=32,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
)
SHARD_SIZE = "400KB"


def _perturb(module: torch.nn.Module, generator: torch.Generator, scale: float) -> torch.nn.Module:
    with torch.no_grad():
        for param in module.parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.add_(noise.to(param.dtype) * scale)
    return module.eval()


def tiny_transformer(seed: int) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return _perturb(WanTransformer3DModel(**TINY_TRANSFORMER), generator, 0.05)


def _components(seed: int, tokenizer_dir: Path):
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    from .tokenizer import write_tiny_t5_tokenizer

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    write_tiny_t5_tokenizer(tokenizer_dir, vocab_size=TINY_T5["vocab_size"])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    text_encoder = _perturb(UMT5EncoderModel(UMT5Config(**TINY_T5)), generator, 0.02)
    vae = _perturb(AutoencoderKLWan(**TINY_VAE), generator, 0.02)
    return tokenizer, text_encoder, vae, tiny_scheduler()


def tiny_scheduler():
    """UniPC as the published bundles configure it (flow prediction, bh2, final sigma 0)."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=3.0,
        solver_order=2,
        solver_type="bh2",
        final_sigmas_type="zero",
    )


def _write_pipeline(root: Path, seed: int, two_experts: bool) -> None:
    from diffusers import WanPipeline

    scratch = root / ".tokenizer-src"
    tokenizer, text_encoder, vae, scheduler = _components(seed, scratch)
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=tiny_transformer(seed + 1),
        transformer_2=tiny_transformer(seed + 2) if two_experts else None,
        boundary_ratio=0.875 if two_experts else None,
    )
    pipe.save_pretrained(root, max_shard_size=SHARD_SIZE, safe_serialization=True)
    shutil.rmtree(scratch, ignore_errors=True)


def _renderer_config(wan22_base: str, single: bool) -> dict:
    from ..loaders.config import RendererConfig

    config = RendererConfig(
        wan22_base=wan22_base,
        skip_transformer_2=single,
        switch_dit_boundary=0.0 if single else 0.875,
    )
    return {**config.to_dict(), "shift": 3.0}  # upstream's file carries it; inference does not read it


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _write_expert_checkpoint(folder: Path, expert: str, state: dict[str, torch.Tensor], seed: int) -> None:
    """EMA tensors plus different non-EMA copies, sharded with a ``model.safetensors.index.json``."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, value in state.items():
        tensors[f"ema.diff_dec.{expert}.{key}"] = value.contiguous()
        tensors[f"diff_dec.{expert}.{key}"] = (value + torch.randn(value.shape, generator=generator)).contiguous()
    keys = sorted(tensors)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: tensors[k] for k in shard}, str(folder / name))
        weight_map.update({k: name for k in shard})
    _write_json(folder / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})


def write_tiny_bundle(directory: str | Path, layout: str = "diffusers", seed: int = 0) -> Path:
    """Write a tiny bundle and return the path to pass as ``--config``."""
    from ..errors import BerniniError

    if layout not in LAYOUTS:
        raise BerniniError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    root = Path(directory)
    blocker = next((p for p in (root, *root.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise BerniniError(f"cannot write a bundle into {root}: {blocker} is a file; choose a directory")
    root.mkdir(parents=True, exist_ok=True)
    if layout in ("diffusers", "single"):
        single = layout == "single"
        _write_pipeline(root, seed, two_experts=not single)
        repo = "ByteDance/Bernini-R-1.3B-Diffusers" if single else "ByteDance/Bernini-R-Diffusers"
        _write_json(root / "config.json", _renderer_config(repo, single))
        return root
    if layout == "wan22":
        _write_pipeline(root, seed, two_experts=True)
        return root
    base = root / "base"
    _write_pipeline(base, seed, two_experts=True)
    config_dir = root / "configs" / "bernini_renderer_wan22"
    _write_json(config_dir / "config.json", _renderer_config(str(base.resolve()), single=False))
    for expert, folder, offset in (
        ("transformer", "bernini_renderer_high", 11),
        ("transformer_2", "bernini_renderer_low", 12),
    ):
        state = tiny_transformer(seed + offset).state_dict()
        _write_expert_checkpoint(root / "Bernini-R" / folder, expert, state, seed + offset + 100)
    return config_dir
