"""The memory plan: expected peak device and host bytes per phase, before anything loads.

Weight bytes come from the real modules built on the meta device (the bundle's configs, or the published
A14B / UMT5-XXL / Wan-VAE shapes), with the chosen storage (``--quantize`` or the checkpoint's fp8);
activation bytes from the request's packed sequence length. The activation and VAE-workspace terms are
estimates from shapes (stated below), not measurements; ``docs/performance.md`` says how to check them.

* an expert forward, per block: the bf16 residual, two fp32 norm temporaries, then the larger of
  attention (q, k, v, output and two fp32 RoPE temporaries; memory-efficient attention, no N² matrix) and
  the FFN (input plus two ``[N, ffn]`` tensors); plus the upcast of the largest quantised linear;
* the VAE at full resolution: six live ``[4 frames, C, H, W]`` fp32 maps (causal-cache convolutions) and
  one chunk's pixels twice (its output and its postprocessed copy): the Wan VAE encodes and decodes causally,
  chunk by chunk, and each decoded chunk goes to host memory as it comes (``bernini.stages.decode``), so the
  device never holds the whole clip's pixels; tiled decoding scales the maps to a 256² tile (and concatenates
  the video on the device, as diffusers' tiled decode does);
* context windows (``--window_frames``): an expert forward packs one window (its target frames and the same
  frames of every source), not the whole clip; the whole clip's latent state stays on the device beside it
  (:data:`LATENT_COPIES` fp32 copies: the latents, the blended velocity, the scheduler's history) with the
  sources' latents in the compute dtype;
* on the host: the decoded frames of the whole clip, one byte per value (what a job writes), and the whole
  clip's latents, beside the preprocessed sources (fp32);
* a fixed runtime overhead per device (CUDA context, allocator slack) and per host (interpreter, libraries).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..loaders import quant
from .placement import ModelSizes, PlacementDecision, choose_placement

GIB = 1024**3
LATENT_COPIES = 6
"""fp32 copies of the whole latent the denoising loop keeps on the device: the latents, the velocity, the guidance
temporaries and UniPC's history (order 2: two model outputs and the previous sample)."""
CHUNK_FRAMES = 4
DEVICE_OVERHEAD = 1 * GIB
HOST_OVERHEAD = 3 * GIB
TILE = 256

A14B_TRANSFORMER: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=40,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=13824,
    num_layers=40,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
UMT5_XXL: dict[str, Any] = dict(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
)
WAN_VAE: dict[str, Any] = {}  # AutoencoderKLWan's defaults are the Wan2.1 VAE that Wan2.2-A14B uses


@dataclass(frozen=True)
class Shapes:
    """Configs of the modules to account for (``experts`` copies of the transformer)."""

    transformer: dict[str, Any] = field(default_factory=lambda: dict(A14B_TRANSFORMER))
    text_encoder: dict[str, Any] = field(default_factory=lambda: dict(UMT5_XXL))
    vae: dict[str, Any] = field(default_factory=lambda: dict(WAN_VAE))
    experts: int = 2
    text_length: int = 512


@dataclass(frozen=True)
class Request:
    """What the plan needs of a request: the target geometry and the conditions packed beside it."""

    frames: int
    height: int
    width: int
    source_videos: int = 0
    images: int = 0
    window_frames: int | None = None  # --window_frames: an expert forward packs this many frames, not all

    @property
    def forward_frames(self) -> int:
        """The frames one expert forward packs: one window's, or the whole clip's."""
        return min(self.frames, self.window_frames) if self.window_frames else self.frames


@dataclass(frozen=True)
class Phase:
    name: str
    device: int
    host: int


@dataclass
class MemoryEstimate:
    decision: PlacementDecision
    sizes: ModelSizes
    tokens: int
    phases: list[Phase]

    @property
    def peak_device(self) -> int:
        return max(p.device for p in self.phases)

    @property
    def peak_host(self) -> int:
        return max(p.host for p in self.phases)

    def lines(self) -> list[str]:
        gib = lambda n: f"{n / GIB:.1f} GiB"  # noqa: E731
        out = [
            self.decision.describe(),
            f"weights: experts {' + '.join(gib(e) for e in self.sizes.experts)}, text encoder "
            f"{gib(self.sizes.text_encoder)}, VAE {gib(self.sizes.vae)}; packed sequence {self.tokens} tokens",
        ]
        out += [f"  {p.name:13s} device {gib(p.device):>9s}   host {gib(p.host):>9s}" for p in self.phases]
        out.append(f"peak: device {gib(self.peak_device)}, host {gib(self.peak_host)}")
        return out


def element_size(dtype: torch.dtype) -> int:
    """Bytes per element of a floating ``dtype``."""
    return torch.finfo(dtype).bits // 8


def free_device_bytes(device: torch.device | None = None) -> int | None:
    """Free memory of a CUDA ``device`` (None: the current one, if any); None where there is no device limit."""
    if device is None:
        return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None


def device_budget(gpu_memory: float | None, device: torch.device | None = None) -> int | None:
    """The budget placement works under: ``gpu_memory`` GiB when given, else the device's free memory."""
    if gpu_memory is not None:
        return int(gpu_memory * GIB)
    return free_device_bytes(device)


def weight_bytes(module: torch.nn.Module, dtype: torch.dtype, quantize: str, keep_fp32=()) -> dict[str, int]:
    """Bytes per top-level child (``blocks.N`` separately) of a meta-device module once loaded."""
    out: dict[str, int] = {}
    size = element_size(dtype)
    for name, param in module.named_parameters():
        parts = name.split(".")
        group = ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]
        if quantize != "none" and quant.quantizable(name, tuple(param.shape)):
            nbytes = param.numel() + param.shape[0] * 4
        elif any(p in parts for p in keep_fp32):
            nbytes = param.numel() * 4
        else:
            nbytes = param.numel() * size
        out[group] = out.get(group, 0) + nbytes
    return out


def meta_modules(shapes: Shapes):
    """The transformer, UMT5 encoder and VAE built on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    from ..models.transformer import BerniniTransformer

    with init_empty_weights():
        transformer = BerniniTransformer.from_config(shapes.transformer)
        text = UMT5EncoderModel(UMT5Config(**shapes.text_encoder))
        vae = AutoencoderKLWan.from_config(shapes.vae)
    text.tie_weights()  # the encoder's embedding is the shared one, held once
    return transformer, text, vae


def model_sizes(shapes: Shapes, dtype: torch.dtype, quantize: str) -> tuple[ModelSizes, int]:
    """Weight bytes from the meta modules, and the bytes of the largest linear's upcast weight."""
    return _model_sizes(json.dumps(asdict(shapes), sort_keys=True, default=str), dtype, quantize)


@functools.lru_cache(maxsize=16)
def _model_sizes(key: str, dtype: torch.dtype, quantize: str) -> tuple[ModelSizes, int]:
    shapes = Shapes(**json.loads(key))
    transformer, text, vae = meta_modules(shapes)
    per = weight_bytes(transformer, dtype, quantize, tuple(transformer._keep_in_fp32_modules or ()))
    blocks = [v for k, v in per.items() if k.startswith("blocks.")]
    expert = sum(per.values())
    largest_linear = max(m.weight.numel() for m in transformer.modules() if isinstance(m, torch.nn.Linear))
    sizes = ModelSizes(
        experts=[expert] * shapes.experts,
        expert_blocks=max(blocks),
        expert_other=expert - sum(blocks),
        text_encoder=sum(weight_bytes(text, dtype, "none").values()),
        vae=sum(weight_bytes(vae, torch.float32, "none").values()),
    )
    return sizes, (upcast_bytes(largest_linear, dtype) if quantize != "none" else 0)


def latent_tokens(frames: int, height: int, width: int, patch: tuple[int, int, int]) -> int:
    """Tokens of a latent ``frames × height × width`` grid patchified by ``patch``."""
    return (frames // patch[0]) * (height // patch[1]) * (width // patch[2])


def packed_tokens(request: Request, patch: tuple[int, int, int] = (1, 2, 2), vae_t: int = 4, vae_s: int = 8) -> int:
    """Tokens of one expert forward: the target (one window of it) and each source's same frames, the images."""
    latent_frames = (request.forward_frames - 1) // vae_t + 1
    height, width = request.height // vae_s, request.width // vae_s
    per_frame = latent_tokens(1, height, width, (1, *patch[1:]))
    target = latent_tokens(latent_frames, height, width, patch)
    return target * (1 + request.source_videos) + request.images * per_frame


def expert_tokens(latent_elements: int, config: Any) -> int:
    """Tokens of ``latent_elements`` latent values through an expert of ``config`` (its patch and channels)."""
    return latent_elements // (config.in_channels * math.prod(config.patch_size))


def expert_activation(tokens: int, dim: int, ffn: int, dtype: torch.dtype) -> int:
    size = element_size(dtype)
    nd = tokens * dim
    base = nd * size + 2 * nd * 4
    attention = 5 * nd * size + 2 * nd * 4
    feed_forward = nd * size + 2 * tokens * ffn * size
    return base + max(attention, feed_forward)


def upcast_bytes(linear_params: int, dtype: torch.dtype) -> int:
    """A quantised linear's weight dequantised for its matmul (and its temporary), in ``dtype``."""
    return 2 * linear_params * element_size(dtype)


def branch_batch_bytes(batch: int, tokens: int, config: Any, dtype: torch.dtype) -> int:
    """The rough extra bytes of ``batch`` stacked branches of ``tokens`` tokens through an expert: two FFN-wide
    activations and four attention-wide ones per token (the widest a block holds)."""
    width = 2 * config.ffn_dim + 4 * config.num_attention_heads * config.attention_head_dim
    return batch * tokens * width * element_size(dtype)


def branch_batch_fits(batch: int, latent_elements: int, config: Any, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether ``batch`` stacked branches of ``latent_elements`` latent values fit in the device's free memory
    (always without a device limit)."""
    free = free_device_bytes(device)
    return free is None or branch_batch_bytes(batch, expert_tokens(latent_elements, config), config, dtype) < free


def vae_workspace(request: Request, vae_config: dict[str, Any], tiled: bool) -> int:
    base = vae_config.get("base_dim", 96) * (vae_config.get("dim_mult") or [1])[0]
    area = min(request.height, TILE) * min(request.width, TILE) if tiled else request.height * request.width
    frames = request.frames if tiled else min(request.frames, CHUNK_FRAMES)
    video = 3 * frames * request.height * request.width * 4
    return 6 * 4 * base * area * 4 + 2 * video


def latent_bytes(request: Request, channels: int = 16, vae_t: int = 4, vae_s: int = 8) -> int:
    """fp32 bytes of the whole clip's latent."""
    frames = (request.frames - 1) // vae_t + 1
    return channels * frames * (request.height // vae_s) * (request.width // vae_s) * 4


def frames_bytes(request: Request) -> int:
    """The whole clip's decoded frames on the host, uint8 RGB."""
    return 3 * request.frames * request.height * request.width


def text_activation(shapes: Shapes) -> int:
    cfg, length = shapes.text_encoder, shapes.text_length
    return 2 * length * (cfg["d_model"] * 4 * 4 + cfg["d_ff"] * 2 * 2) + 2 * cfg["num_heads"] * length * length * 4


@dataclass(frozen=True)
class Activations:
    """The live bytes placement provisions beside the weights: an expert forward over the packed ``tokens``, the
    VAE's whole-frame and tiled workspaces, and a UMT5 forward."""

    tokens: int
    expert: int
    decode: int
    decode_tiled: int
    text: int


def activations(
    request: Request,
    transformer: dict[str, Any],
    vae: dict[str, Any],
    dtype: torch.dtype,
    upcast: int = 0,
    text: Shapes | None = None,
) -> Activations:
    """What :func:`fit` provisions for ``request`` with an expert of config ``transformer`` (``upcast``: the
    dequantised linear of a quantised expert) and UMT5 of ``text`` (default: UMT5-XXL)."""
    tokens = packed_tokens(request, tuple(transformer.get("patch_size", (1, 2, 2))))
    dim = transformer["num_attention_heads"] * transformer["attention_head_dim"]
    expert = expert_activation(tokens, dim, transformer["ffn_dim"], dtype) + upcast
    workspace = {tiled: vae_workspace(request, vae, tiled) for tiled in (False, True)}
    return Activations(tokens, expert, workspace[False], workspace[True], text_activation(text or Shapes()))


def fit(budget: int | None, sizes: ModelSizes, acts: Activations, mode: str = "auto") -> PlacementDecision:
    """Keep resident what fits ``budget`` bytes (the rule of :func:`bernini.runtime.placement.choose_placement`)."""
    return choose_placement(
        budget, sizes, acts.expert, acts.decode, acts.decode_tiled, acts.text, DEVICE_OVERHEAD, mode
    )


def estimate_memory(
    request: Request,
    *,
    shapes: Shapes | None = None,
    dtype: torch.dtype = torch.bfloat16,
    quantize: str = "none",
    gpu_memory: int | None = None,
    mode: str = "auto",
) -> MemoryEstimate:
    """Placement and per-phase peaks for ``request`` under a device budget of ``gpu_memory`` bytes."""
    shapes = shapes or Shapes()
    sizes, upcast = model_sizes(shapes, dtype, quantize)
    acts = activations(request, shapes.transformer, shapes.vae, dtype, upcast, shapes)
    tokens, activation, t5_act = acts.tokens, acts.expert, acts.text
    workspace = {False: acts.decode, True: acts.decode_tiled}
    decision = fit(gpu_memory, sizes, acts, mode)
    resident = sum(sizes.experts) + sizes.text_encoder + sizes.vae if decision.mode == "none" else 0
    if decision.mode == "none":
        expert_peak = resident + activation
    elif decision.mode == "model":
        expert_peak = max(sizes.experts) + activation
    else:  # streamed: the expert's other weights, the running block and the prefetched one
        expert_peak = sizes.expert_other + 2 * sizes.expert_blocks + activation
    media = 3 * request.frames * request.height * request.width * 4 * request.source_videos
    latent = latent_bytes(request, shapes.transformer.get("in_channels", 16))
    state = LATENT_COPIES * latent + request.source_videos * latent * element_size(dtype) // 4
    held = sum(sizes.experts) + sizes.text_encoder + sizes.vae + HOST_OVERHEAD
    decode_ws = workspace[decision.tiled_decode]
    phases = []
    if request.source_videos or request.images:
        phases.append(Phase("encode media", (resident or sizes.vae) + decode_ws, held + media))
    text_device = (resident or sizes.text_encoder) + t5_act if decision.text_encoder == "device" else resident
    phases.append(Phase("text encoder", text_device, held + (t5_act if decision.text_encoder == "cpu" else 0)))
    for index in range(shapes.experts):
        name = "high-noise" if index == 0 and shapes.experts == 2 else ("low-noise" if index else "expert")
        phases.append(Phase(name, expert_peak + state, held + media))
    phases.append(Phase("decode", (resident or sizes.vae) + decode_ws, held + media + latent + frames_bytes(request)))
    phases = [Phase(p.name, p.device + DEVICE_OVERHEAD, p.host) for p in phases]
    return MemoryEstimate(decision, sizes, tokens, phases)


NOMINAL_REQUEST = Request(frames=81, height=480, width=832, source_videos=1)
"""What a load-time decision provisions activations for (480p, 81-frame v2v), before any request is known."""


def runtime_decision(
    offload: bool | str,
    device: torch.device,
    budget: int | None,
    sizes: ModelSizes,
    expert_config: dict[str, Any],
    vae_config: dict[str, Any],
    dtype: torch.dtype,
    quantized: bool,
) -> PlacementDecision:
    """The placement of loaded modules (``sizes`` as held) under ``budget`` bytes of ``device``.

    Without an accelerator and without a budget everything stays where it is (``none``)."""
    from .placement import decide_offload

    if isinstance(offload, bool) or (device.type != "cuda" and budget is None):
        return PlacementDecision(decide_offload(offload), budget=budget, reason="no device budget")
    dim = expert_config["num_attention_heads"] * expert_config["attention_head_dim"]
    upcast = upcast_bytes(dim * expert_config["ffn_dim"], dtype) if quantized else 0
    return fit(budget, sizes, activations(NOMINAL_REQUEST, expert_config, vae_config, dtype, upcast), offload)
