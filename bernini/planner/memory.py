"""The full model's memory plan (spec §5.5): peak device bytes of the planning and rendering phases, which are
never resident together, and the host bytes once everything is loaded.

Weight bytes come from the modules the loader builds, built on the meta device at the published sizes
(Qwen2.5-VL-7B truncated as :func:`bernini.planner.loading.planner_qwen` truncates it, the connector and the
ViT decoder of spec §1.3, the renderer's A14B / UMT5-XXL / Wan-VAE shapes from :mod:`bernini.runtime.memory`).
Activation terms are estimates from shapes, as in :mod:`bernini.runtime.memory`:

* a Qwen forward over ``branches`` × ``planner_tokens`` (the three branches batched, as upstream does; bernini
  runs them one by one, so this bounds it): the shared 4-D additive mask in the compute dtype, and per layer
  the residual and its norm, q/k/v/output with two fp32 RoPE temporaries (memory-efficient attention, which
  takes the additive mask, so no scores matrix), or the MLP's gate, up and product; whichever is larger;
* the vision tower over four patches per merged token of the whole sequence, the same per-layer terms;
* the ViT decoder: 3 × ``planner_tokens`` rows through its width (small);
* the VAE encoding sources during planning (weights plus the workspace of :func:`bernini.runtime.memory.vae_workspace`),
  not at the same time as a Qwen forward;
* the render phase: :func:`bernini.runtime.memory.estimate_memory` with one expert resident at a time (``model``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..runtime.memory import (
    DEVICE_OVERHEAD,
    GIB,
    HOST_OVERHEAD,
    NOMINAL_REQUEST,
    Request,
    Shapes,
    element_size,
    estimate_memory,
    model_sizes,
    vae_workspace,
    weight_bytes,
)

QWEN2_5_VL_7B: dict[str, Any] = {
    "model_type": "qwen2_5_vl",
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": False,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "in_chans": 3,
    },
}
"""Qwen2.5-VL-7B-Instruct's config (the planner's architecture; its weights come from ``bernini/``)."""
CONNECTOR: dict[str, int] = {"in_dim": 3584, "out_gen": 4096, "out_vit": 3584}
VIT_DECODER: dict[str, int] = {"target_channels": 3584, "z_channels": 3584, "width": 4096, "depth": 16}
PLANNER_TOKENS = 2048  # spec §5.5: ≈ 450 (t2v) to ≈ 1100 (r2v, 5 references) per branch; L ≤ 2k
BRANCHES = 3
GB = 1e9


@dataclass(frozen=True)
class FullShapes:
    """The full model's configs: the planner's parts, the renderer's (:class:`bernini.runtime.memory.Shapes`)."""

    qwen: dict[str, Any] = field(default_factory=lambda: json.loads(json.dumps(QWEN2_5_VL_7B)))
    connector: dict[str, int] = field(default_factory=lambda: dict(CONNECTOR))
    decoder: dict[str, int] = field(default_factory=lambda: dict(VIT_DECODER))
    renderer: Shapes = field(default_factory=Shapes)
    planner_tokens: int = PLANNER_TOKENS
    branches: int = BRANCHES


def qwen_config(config: dict[str, Any]) -> tuple[Any, Any, Any]:
    """A ``Qwen2_5_VLConfig`` from a flat or nested config dict, with its text and vision parts."""
    from transformers import Qwen2_5_VLConfig

    built = Qwen2_5_VLConfig(**json.loads(json.dumps(config)))
    return built, getattr(built, "text_config", built), built.vision_config


def qwen_meta(config: dict[str, Any], truncated: bool = True) -> torch.nn.Module:
    """Qwen2.5-VL on the meta device: as the planner loads it, or the whole checkpoint (with ``lm_head``)."""
    from accelerate import init_empty_weights
    from transformers import Qwen2_5_VLForConditionalGeneration

    from .loading import planner_qwen

    built = qwen_config(config)[0]
    if truncated:
        return planner_qwen(built)[0]
    with init_empty_weights(include_buffers=False):
        return Qwen2_5_VLForConditionalGeneration(built)


def planner_meta(shapes: FullShapes) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The connector and the ViT decoder on the meta device."""
    from accelerate import init_empty_weights

    from .connector import MLPConnector
    from .flow import VitDecoder

    with init_empty_weights(include_buffers=False):
        return MLPConnector(**shapes.connector), VitDecoder(**shapes.decoder)


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def held_bytes(module: torch.nn.Module, dtype: torch.dtype) -> int:
    """Bytes once loaded in ``dtype``, the module's fp32-kept parts in fp32 (as the loader places them)."""
    keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    return sum(weight_bytes(module, dtype, "none", keep).values())


@dataclass(frozen=True)
class PlannerSizes:
    """Parameter counts of the planner's parts, and bytes as the loader keeps them on the host (Qwen, connector and
    ViT decoder in the load dtype, which is the compute dtype: the reference computes them in it; the one
    mask-token row in fp32) and on the device."""

    qwen_params: int
    qwen_checkpoint_params: int  # the whole Qwen2.5-VL of the checkpoint, with the last layer, norm and lm_head
    connector_params: int
    decoder_params: int
    hidden: int
    qwen: int
    connector_host: int
    decoder_host: int
    mask_token_host: int
    connector_device: int
    decoder_device: int

    @property
    def host(self) -> int:
        return self.qwen + self.connector_host + self.decoder_host + self.mask_token_host

    @property
    def device(self) -> int:
        return self.qwen + self.connector_device + self.decoder_device + self.hidden * 2


def planner_sizes(shapes: FullShapes, dtype: torch.dtype = torch.bfloat16) -> PlannerSizes:
    return _planner_sizes(json.dumps(asdict(shapes), sort_keys=True, default=str), dtype)


@functools.lru_cache(maxsize=8)
def _planner_sizes(key: str, dtype: torch.dtype) -> PlannerSizes:
    raw = json.loads(key)
    shapes = FullShapes(**{**raw, "renderer": Shapes(**raw["renderer"])})
    qwen, checkpoint = qwen_meta(shapes.qwen), qwen_meta(shapes.qwen, truncated=False)
    connector, decoder = planner_meta(shapes)
    size = element_size(dtype)
    hidden = int(qwen_config(shapes.qwen)[1].hidden_size)
    return PlannerSizes(
        qwen_params=params(qwen),
        qwen_checkpoint_params=params(checkpoint),
        connector_params=params(connector),
        decoder_params=params(decoder),
        hidden=hidden,
        qwen=held_bytes(qwen, dtype),
        connector_host=params(connector) * size,
        decoder_host=params(decoder) * size,
        mask_token_host=hidden * 4,
        connector_device=params(connector) * size,
        decoder_device=params(decoder) * size,
    )


def planner_batch_bytes(branches: int, tokens: int, config: Any, dtype: torch.dtype) -> int:
    """``branches`` padded Qwen passes of ``tokens`` tokens (``config``: the Qwen's, or its text part): per token and
    layer the residual, q/k/v and the MLP's three ``intermediate`` tensors, plus the fp32 attention scores of one
    layer (``heads × tokens²``) and the additive mask."""
    text = getattr(config, "text_config", config)
    size = element_size(dtype)
    per_token = (4 * text.hidden_size + 3 * text.intermediate_size) * size
    scores = (text.num_attention_heads * 4 + size) * tokens * tokens
    return branches * (tokens * per_token + scores)


def planner_batch_fits(branches: int, tokens: int, config: Any, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether :func:`planner_batch_bytes` fits the device's free memory with as much again kept spare (always
    without a device limit)."""
    from ..runtime import memory  # the one free-memory check, looked up when asked

    free = memory.free_device_bytes(device)
    return free is None or planner_batch_bytes(branches, tokens, config, dtype) * 2 <= free


def layer_activation(rows: int, hidden: int, kv: int, ffn: int, dtype: torch.dtype) -> int:
    """One transformer layer's live bytes over ``rows`` tokens: residual + norm, then attention or the MLP."""
    size = element_size(dtype)
    base = 2 * rows * hidden * size
    attention = rows * (2 * hidden + 2 * kv) * size + 2 * rows * hidden * 4
    mlp = 3 * rows * ffn * size
    return base + max(attention, mlp)


def planner_activation(shapes: FullShapes, dtype: torch.dtype = torch.bfloat16) -> int:
    size = element_size(dtype)
    _, cfg, vision = qwen_config(shapes.qwen)
    rows, length = shapes.branches * shapes.planner_tokens, shapes.planner_tokens
    kv = cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads
    mask = shapes.branches * length * length * size
    text = mask + layer_activation(rows, cfg.hidden_size, kv, cfg.intermediate_size, dtype)
    merge = vision.spatial_merge_size**2
    patches = merge * length
    vit = layer_activation(patches, vision.hidden_size, vision.hidden_size, vision.intermediate_size, dtype)
    vit += patches * vision.hidden_size * merge * size  # the merger's input
    decoder = 3 * length * (4 * shapes.decoder["width"] + 2 * shapes.decoder["target_channels"]) * size
    return max(text, vit, decoder)


@dataclass
class FullMemoryEstimate:
    """Peak device bytes of each phase (weights resident + the largest live activation + device overhead) and
    the host bytes held after loading (weights; ``host_peak`` adds the host overhead)."""

    planner: PlannerSizes
    renderer_weights: dict[str, int]
    planner_device: int
    render_device: int
    host_weights: int
    request: Request
    shapes: FullShapes

    @property
    def host_peak(self) -> int:
        return self.host_weights + HOST_OVERHEAD

    def lines(self) -> list[str]:
        gib = lambda n: f"{n / GIB:6.1f} GiB"  # noqa: E731
        p, r = self.planner, self.renderer_weights
        req = self.request
        return [
            f"planner weights (device, compute dtype): Qwen2.5-VL {gib(p.qwen)} ({p.qwen_params / 1e9:.2f} B of "
            f"{p.qwen_checkpoint_params / 1e9:.2f} B: no last layer, norm, lm_head), ViT decoder "
            f"{gib(p.decoder_device)}, connector {gib(p.connector_device)}, VAE {gib(r['vae'])}",
            f"planner phase   device {gib(self.planner_device)}  ({self.shapes.branches} branches x "
            f"{self.shapes.planner_tokens} tokens)",
            f"render phase    device {gib(self.render_device)}  (one expert {gib(r['expert'])} resident at a time; "
            f"{req.frames}x{req.height}x{req.width}, {req.source_videos} source video(s))",
            "the two phases are never resident together: the planner leaves the device before the first expert",
            f"host after loading {gib(self.host_weights)} of weights ({self.host_weights / GB:.1f} GB): experts "
            f"2 x {gib(r['expert'])}, UMT5 {gib(r['text_encoder'])}, Qwen {gib(p.qwen)}, ViT decoder "
            f"{gib(p.decoder_host)}, connector {gib(p.connector_host)}, VAE fp32 {gib(r['vae'])}; "
            f"with {HOST_OVERHEAD / GIB:.0f} GiB runtime overhead {gib(self.host_peak)}",
        ]


def estimate_full_memory(
    request: Request = NOMINAL_REQUEST, shapes: FullShapes | None = None, dtype: torch.dtype = torch.bfloat16
) -> FullMemoryEstimate:
    shapes = shapes or FullShapes()
    planner = planner_sizes(shapes, dtype)
    sizes, _ = model_sizes(shapes.renderer, dtype, "none")
    encode = vae_workspace(request, shapes.renderer.vae, tiled=False) if request.source_videos or request.images else 0
    planner_device = planner.device + sizes.vae + max(planner_activation(shapes, dtype), encode) + DEVICE_OVERHEAD
    render = estimate_memory(request, shapes=shapes.renderer, dtype=dtype, mode="model")
    render_device = max(p.device for p in render.phases if p.name in ("high-noise", "low-noise", "expert"))
    host = sum(sizes.experts) + sizes.text_encoder + sizes.vae + planner.host
    weights = {"expert": max(sizes.experts), "text_encoder": sizes.text_encoder, "vae": sizes.vae}
    return FullMemoryEstimate(planner, weights, planner_device, render_device, host, request, shapes)
