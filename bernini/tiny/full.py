"""A tiny full-Bernini bundle in the published ``ByteDance/Bernini-Diffusers`` layout (spec §1.1), for tests.

``config.json`` (``model_type: bernini``), ``transformer_config.json`` / ``transformer_2_config.json``,
the sharded ``bernini/`` checkpoint holding every trained module under its published prefix (fp32, as
published), ``mllm/`` (Qwen2.5-VL config, tokenizer, processor config), ``t5_text_encoder/`` (UMT5 with
*other* weights than ``bernini/``'s, which must win), ``t5_tokenizer/``, ``vae/`` and ``scheduler/``.

Sizes follow spec §6.1: Qwen hidden 64 with the real vocabulary size so the real special-token ids stay
valid; connector widths that differ from each other and from the Qwen width (out_gen 40 = the DiT's text
width and UMT5's width, out_vit 48); every parameter re-randomised, so no zero-initialised layer hides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .bundle import TINY_T5, TINY_TRANSFORMER, TINY_VAE, _perturb, tiny_scheduler

QWEN_HIDDEN = 64
OUT_GEN = 40
OUT_VIT = 48
DECODER_WIDTH = 32
DECODER_DEPTH = 2
QWEN_SPECIAL_TOKENS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}
WORDS = (
    "system user assistant you are a helpful specialized in text to image video generation editing with reference "
    "subject make it red blue the dog cat fox runs across snowy field add snowman person camera stay unchanged"
).split()
SHARD_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class FullSizes:
    """The widths of a written full bundle: spec §6.1's tiny ones by default; benches scale them up."""

    qwen_hidden: int = QWEN_HIDDEN
    qwen_intermediate: int = 128
    qwen_layers: int = 3
    qwen_heads: int = 4
    qwen_kv_heads: int = 2
    vision_hidden: int = 32
    vision_intermediate: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    out_gen: int = OUT_GEN
    out_vit: int = OUT_VIT
    decoder_width: int = DECODER_WIDTH
    decoder_depth: int = DECODER_DEPTH
    expert_heads: int = TINY_TRANSFORMER["num_attention_heads"]
    expert_head_dim: int = TINY_TRANSFORMER["attention_head_dim"]
    expert_ffn: int = TINY_TRANSFORMER["ffn_dim"]
    expert_layers: int = TINY_TRANSFORMER["num_layers"]
    t5_ff: int = TINY_T5["d_ff"]
    t5_layers: int = TINY_T5["num_layers"]
    shard_size: int = SHARD_SIZE


TINY_SIZES = FullSizes()


def qwen_config_dict(sizes: FullSizes = TINY_SIZES) -> dict:
    half = sizes.qwen_hidden // sizes.qwen_heads // 2
    mrope = [half // 4, 3 * half // 8, half - half // 4 - 3 * half // 8]  # Qwen2.5-VL's 16/24/24 of 64
    return {
        "model_type": "qwen2_5_vl",
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "vocab_size": 152064,
        "hidden_size": sizes.qwen_hidden,
        "intermediate_size": sizes.qwen_intermediate,
        "num_hidden_layers": sizes.qwen_layers,
        "num_attention_heads": sizes.qwen_heads,
        "num_key_value_heads": sizes.qwen_kv_heads,
        "rope_scaling": {"type": "mrope", "mrope_section": mrope},
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_config": {
            "depth": sizes.vision_depth,
            "hidden_size": sizes.vision_hidden,
            "intermediate_size": sizes.vision_intermediate,
            "num_heads": sizes.vision_heads,
            "out_hidden_size": sizes.qwen_hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [sizes.vision_depth - 1],
            "tokens_per_second": 2,
            "in_chans": 3,
        },
    }


def bernini_config_dict(sizes: FullSizes = TINY_SIZES) -> dict:
    """Released ``BerniniConfig`` keys (spec §1.5; all in :data:`bernini.loaders.full_config.RELEASED_KEYS`)
    at the given sizes, the connector's widths under their released names ``out_dim_for_gen`` / ``out_dim_for_vit``."""
    return {
        "model_type": "bernini",
        "num_mask_token": 16,
        "feature_type_from_stage_one": "masked_tgt_embed_with_qwen_txt_vit_tokens",
        "clip_diff_cfg": {
            "target_channels": sizes.qwen_hidden,
            "z_channels": sizes.out_vit,
            "width": sizes.decoder_width,
            "diffusion_batch_mul": 16,
            "shift": 2.0,
        },
        "connector_cfg": {
            "out_dim_for_gen": sizes.out_gen,
            "out_dim_for_vit": sizes.out_vit,
            "gen_head_type": "zerolinear",
            "zero_init_proj_gen_last": True,
        },
        "mllm_attn_implementation": "sdpa",
        "switch_dit_boundary": 0.875,
        "shift": 3.0,
        "boundary_ratio": 0.417,
        "max_sequence_length": 512,
        "t5_max_sequence_length": 512,
        "t5_combine_type": "concat_with_zero_init",
        "use_src_id_rotary_emb": True,
    }


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _randomised(module: torch.nn.Module, generator: torch.Generator, scale: float) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return {k: v.detach().float().clone() for k, v in module.state_dict().items()}


def _write_qwen_tokenizer(folder: Path) -> None:
    """A word-level tokenizer with Qwen's special tokens at their real ids (also in the model vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{word: index + 1 for index, word in enumerate(WORDS)}, **QWEN_SPECIAL_TOKENS}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(list(QWEN_SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.save_pretrained(folder)


CROSS_ATTENTION_GAIN = 8.0


def _loud_cross_attention(expert: torch.nn.Module) -> torch.nn.Module:
    """Make every block's cross-attention loud and sharp so the contexts visibly move the frames: its output is
    scaled up, and its q/k norms (the logits' scale, as q and k are RMS-normalised) sharpened so a handful of
    planner rows is not drowned by ~500 near-identical zero-padding rows. At random init a change of the plan
    moved the frames by ~1e-5."""
    with torch.no_grad():
        for block in expert.blocks:
            block.attn2.to_out[0].weight.mul_(CROSS_ATTENTION_GAIN)
            block.attn2.norm_q.weight.mul_(5.0)
            block.attn2.norm_k.weight.mul_(5.0)
    return expert


def write_tiny_full_bundle(directory: str | Path, seed: int = 0, sizes: FullSizes = TINY_SIZES) -> Path:
    """Write the tiny full bundle (or one at ``sizes``) and return its root (pass it as ``--config``)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, UMT5Config, UMT5EncoderModel

    from ..planner.connector import MLPConnector
    from ..planner.flow import VitDecoder
    from .tokenizer import write_tiny_t5_tokenizer

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    transformer_config = {
        **TINY_TRANSFORMER,
        "text_dim": sizes.out_gen,
        "num_attention_heads": sizes.expert_heads,
        "attention_head_dim": sizes.expert_head_dim,
        "ffn_dim": sizes.expert_ffn,
        "num_layers": sizes.expert_layers,
    }
    t5_config = {**TINY_T5, "d_model": sizes.out_gen, "d_ff": sizes.t5_ff, "num_layers": sizes.t5_layers}
    tensors: dict[str, torch.Tensor] = {}
    for prefix, name in (("diff_dec.transformer.", "transformer"), ("diff_dec_low.transformer_2.", "transformer_2")):
        expert = _loud_cross_attention(_perturb(WanTransformer3DModel(**transformer_config), generator, 0.05))
        _write_json(root / f"{name}_config.json", dict(expert.config))
        state = {k: v.detach().float().clone() for k, v in expert.state_dict().items()}
        tensors.update({prefix + k: v for k, v in state.items()})
        del expert, state
    qwen = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**qwen_config_dict(sizes)))
    _perturb(qwen, generator, 0.05)
    for key, value in {k: v.detach().float().clone() for k, v in qwen.state_dict().items()}.items():
        if key.startswith("model.visual."):
            tensors["mllm.visual." + key[len("model.visual.") :]] = value
        elif key.startswith("model.language_model."):
            tensors["mllm.model." + key[len("model.language_model.") :]] = value
        else:
            tensors["mllm." + key] = value
    t5 = UMT5EncoderModel(UMT5Config(**t5_config))
    t5_state = _randomised(t5, generator, 0.05)
    t5_state.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight
    tensors.update({"t5_text_encoder." + k: v for k, v in t5_state.items()})
    connector = MLPConnector(sizes.qwen_hidden, sizes.out_gen, sizes.out_vit)
    tensors.update({"connector." + k: v for k, v in _randomised(connector, generator, 0.2).items()})
    decoder = VitDecoder(sizes.qwen_hidden, sizes.out_vit, sizes.decoder_width, sizes.decoder_depth)
    tensors.update({"vit_decoder." + k: v for k, v in _randomised(decoder, generator, 0.2).items()})
    tensors["mask_tokens"] = torch.randn(1, 16, sizes.qwen_hidden, generator=generator)
    _write_shards(root / "bernini", tensors, sizes.shard_size)
    del tensors

    _write_json(root / "config.json", bernini_config_dict(sizes))
    qwen.config.save_pretrained(root / "mllm")
    _write_qwen_tokenizer(root / "mllm")
    _write_json(
        root / "mllm" / "preprocessor_config.json",
        {
            "image_processor_type": "Qwen2VLImageProcessor",
            "min_pixels": 3136,
            "max_pixels": 50176,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "merge_size": 2,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "processor_class": "Qwen2_5_VLProcessor",
        },
    )
    other_t5 = _perturb(UMT5EncoderModel(UMT5Config(**t5_config)), generator, 0.02)
    other_t5.save_pretrained(root / "t5_text_encoder", safe_serialization=True)
    write_tiny_t5_tokenizer(root / "t5_tokenizer", vocab_size=TINY_T5["vocab_size"])
    _perturb(AutoencoderKLWan(**TINY_VAE), generator, 0.02).save_pretrained(root / "vae", safe_serialization=True)
    tiny_scheduler().save_pretrained(root / "scheduler")
    return root


def _write_shards(folder: Path, tensors: dict[str, torch.Tensor], shard_size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[list[str]] = [[]]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if shards[-1] and size + nbytes > shard_size:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    weight_map = {}
    for index, keys in enumerate(shards, start=1):
        name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: tensors[k] for k in keys}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
    _write_json(folder / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
