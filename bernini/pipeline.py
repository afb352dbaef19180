"""``BerniniPipeline``: the one code path under the command line, the scripts and the demo.

Loading mirrors diffusers (``from_pretrained``, ``.to``, component attributes); a call resolves a
:class:`~bernini.request.GenerationRequest`, encodes text and media, samples and decodes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from . import __version__
from .attention import select_backend
from .conditions import COMBOS, Conditions, LatentCodec, latent_shape
from .errors import BerniniError
from .guidance import BRANCHES, APGState, Weights
from .loading import ModelSource, checkpoint_files, expert_names, load_expert, resolve_model
from .request import GenerationRequest, validate
from .sampler import BranchRunner, Experts, SamplingInputs, SamplingStats, sample
from .text import encode_text, t5_text
from .transformer import BerniniTransformer

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
OFFLOAD_MODES = ("auto", "none", "model", "blocks")
DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bf16 on accelerators, fp32 on CPU, unless asked otherwise."""
    if dtype is None or dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise BerniniError(f"unknown dtype {dtype!r}; choose one of: auto, bf16, fp16, fp32") from None


def parse_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise BerniniError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise BerniniError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return parsed


@dataclass
class BerniniOutput:
    """What a call returns: frames (per ``output_type``), the final latents and the resolved run record."""

    frames: Any
    latents: torch.Tensor
    parameters: dict[str, Any] = field(default_factory=dict)


class BerniniPipeline:
    """Bernini-R renderer pipeline (two Wan2.2 experts, UMT5, Wan VAE) in the diffusers idiom."""

    def __init__(
        self,
        *,
        transformer,
        transformer_2,
        vae,
        text_encoder,
        tokenizer,
        scheduler,
        source: ModelSource,
        device: torch.device,
        dtype: torch.dtype,
        offload: str = "none",
        attention: str = "auto",
    ) -> None:
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.source = source
        self.renderer_config = source.renderer
        self.device = device
        self.dtype = dtype
        self.offload = offload
        self._group_offloaded: set[int] = set()
        self.attention_preference = attention
        self.branch_runner: BranchRunner = BranchRunner()
        self.progress_bar = True
        self._configure_attention()

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None = None,
        *,
        dtype: str | torch.dtype | None = None,
        torch_dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        device_map: str | None = None,
        high_noise_ckpt: str | os.PathLike | None = None,
        low_noise_ckpt: str | os.PathLike | None = None,
        offload: bool | str = "auto",
        attention: str = "auto",
        compile: bool = False,
    ) -> BerniniPipeline:
        """Load any published layout (bundle dir, repo id, config dir + separate checkpoints, 1.3B)."""
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
        from transformers import AutoTokenizer, UMT5EncoderModel

        if device is not None and device_map is not None:
            raise BerniniError("pass either device or device_map, not both")
        target = parse_device(device if device is not None else device_map)
        weight_dtype = parse_dtype(dtype if dtype is not None else torch_dtype, target)
        if (high_noise_ckpt is None) != (low_noise_ckpt is None):
            raise BerniniError("pass --high_noise_ckpt and --low_noise_ckpt together (or neither)")
        source = resolve_model(pretrained_model_name_or_path)
        components = source.components
        experts: dict[str, Any] = {"transformer": None, "transformer_2": None}
        separate = {"transformer": high_noise_ckpt, "transformer_2": low_noise_ckpt}
        for name in expert_names(source.renderer):
            config_dir = components / name
            if separate[name] is not None:
                files = checkpoint_files(separate[name])
                source.transformer_files[name] = files
                source.separate_checkpoints[name] = str(separate[name])
                experts[name] = load_expert(config_dir, files, expert=name, dtype=weight_dtype, separate=True)
            else:
                experts[name] = load_expert(config_dir, source.transformer_files[name], expert=name, dtype=weight_dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(components / "tokenizer")
            text_encoder = UMT5EncoderModel.from_pretrained(components / "text_encoder", dtype=weight_dtype).eval()
            vae = AutoencoderKLWan.from_pretrained(components / "vae", torch_dtype=torch.float32).eval()
            scheduler = UniPCMultistepScheduler.from_pretrained(components / "scheduler")
        except (OSError, ValueError, KeyError) as exc:
            raise BerniniError(f"cannot load the bundle's components from {components}: {exc}") from None
        pipe = cls(
            transformer=experts["transformer"],
            transformer_2=experts["transformer_2"],
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            source=source,
            device=target,
            dtype=weight_dtype,
            attention=attention,
        )
        pipe.offload = pipe._decide_offload(offload)
        pipe = pipe.to(target)
        if compile:
            pipe.compile()
        return pipe

    def compile(self) -> None:
        """Regional ``torch.compile`` of the repeated transformer blocks (shapes vary per combo: not fullgraph,
        so sequence-parallel collectives may break the graph)."""
        for expert in self.experts:
            expert.compile_repeated_blocks(fullgraph=False)

    def _decide_offload(self, offload: bool | str) -> str:
        """``none`` (all on the device), ``model`` (idle models on the CPU) or ``blocks`` (experts streamed
        block by block, for GPUs smaller than one expert); ``auto`` picks by the device's memory."""
        if isinstance(offload, bool):
            return "model" if offload else "none"
        if offload not in OFFLOAD_MODES:
            raise BerniniError(f"unknown offload {offload!r}; choose one of: {', '.join(OFFLOAD_MODES)}")
        if offload != "auto":
            return offload
        if self.device.type != "cuda":
            return "none"

        def nbytes(module: torch.nn.Module) -> int:
            return sum(p.numel() * p.element_size() for p in module.parameters())

        everything = sum(nbytes(m) for m in self._modules())
        expert = max(nbytes(e) for e in self.experts)
        total = torch.cuda.get_device_properties(self.device).total_memory
        headroom = 8 * 1024**3  # activations of a ~67k-token packed sequence, the VAE decode workspace
        if everything * 1.1 + headroom < total:
            return "none"
        if expert * 1.1 + headroom < total:
            return "model"
        return "blocks"

    def _modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.transformer, self.transformer_2, self.text_encoder, self.vae) if m is not None]

    def _configure_attention(self) -> None:
        backend = select_backend(self.device, self.attention_preference)
        self.attention_backend = backend
        for expert in self.experts:
            expert.configure(attention=backend, sequence_parallel=expert.runtime.sequence_parallel)
            expert.runtime.execution_device = self.device

    def to(self, device: str | torch.device) -> BerniniPipeline:
        self.device = parse_device(device)
        home = torch.device("cpu") if self.offload != "none" else self.device
        for module in self._modules():
            if self.offload == "blocks" and module in self.experts:
                self._stream_blocks(module)
            else:
                module.to(home)
        self._configure_attention()
        return self

    def _stream_blocks(self, expert: torch.nn.Module) -> None:
        """diffusers' block-level group offloading: weights live on the CPU, each block visits the device."""
        if id(expert) in self._group_offloaded:
            return
        expert.to("cpu")
        cuda = self.device.type == "cuda"
        expert.enable_group_offload(
            onload_device=self.device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=cuda,
            non_blocking=cuda,
        )
        self._group_offloaded.add(id(expert))

    def _place(self, module: torch.nn.Module | None, active: bool) -> None:
        if module is None or self.offload == "none":
            return
        if self.offload == "blocks" and module in self.experts:
            return
        module.to(self.device if active else torch.device("cpu"))

    @property
    def experts(self) -> list[BerniniTransformer]:
        return [e for e in (self.transformer, self.transformer_2) if e is not None]

    # ------------------------------------------------------------------- calls
    def __call__(
        self,
        prompt: str,
        *,
        task_type: str | None = None,
        guidance_mode: str | None = None,
        video: Any = None,
        image: Any = None,
        images: Any = None,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        callback_on_step_end: Callable[..., Any] | None = None,
        **parameters: Any,
    ) -> BerniniOutput:
        """Generate; ``parameters`` are :class:`GenerationRequest` fields (``seed``, ``num_frames``, ``omega_*``…)."""
        if "negative_prompt" in parameters:
            parameters["neg_prompt"] = parameters.pop("negative_prompt")
        unknown = sorted(set(parameters) - set(GenerationRequest.field_names()))
        if unknown:
            raise BerniniError(
                f"unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(GenerationRequest.field_names())}"
            )
        request = GenerationRequest(
            prompt=prompt,
            task_type=task_type,
            guidance_mode=guidance_mode,
            video=video if video is not None else [],
            image=image,
            images=images if images is not None else [],
            **parameters,
        )
        return self.generate(request, generator=generator, output_type=output_type, callback=callback_on_step_end)

    def encode_conditions(self, request: GenerationRequest) -> tuple[Conditions, dict[str, Any], list[np.ndarray]]:
        """Preprocess and VAE-encode every visual input; return the target geometry too."""
        from .media import preprocess_image, preprocess_video, to_preview_frames

        codec = LatentCodec(self.vae)
        self._place(self.vae, True)
        conditions = Conditions()
        previews: list[np.ndarray] = []
        geometry: dict[str, Any] = {}
        try:
            for index, item in enumerate(request.video):
                pixels = preprocess_video(
                    item, request.fps, request.num_frames, request.max_image_size, source_fps=request.video_fps
                )
                previews.append(to_preview_frames(pixels))
                if index == 0:
                    geometry = {"frames": pixels.shape[1], "height": pixels.shape[2], "width": pixels.shape[3]}
                conditions.videos.append(codec.encode(pixels))
            if request.image is not None:
                pixels = preprocess_image(request.image, request.max_image_size)
                if not geometry:
                    geometry = {"frames": request.num_frames, "height": pixels.shape[1], "width": pixels.shape[2]}
                conditions.image = codec.encode(pixels.unsqueeze(1))
            for item in request.images:
                conditions.images.append(codec.encode(preprocess_image(item, request.max_image_size).unsqueeze(1)))
        finally:
            self._place(self.vae, False)
        if not geometry:
            geometry = {"frames": request.num_frames, "height": request.height, "width": request.width}
        frames = geometry["frames"]
        geometry["frames"] = frames // 4 * 4 + 1 if frames > 1 else 1
        geometry["height"] = max(16, geometry["height"] // 16 * 16)
        geometry["width"] = max(16, geometry["width"] // 16 * 16)
        return conditions, geometry, previews

    def encode_prompts(self, positive: str, negative: str) -> dict[str, torch.Tensor]:
        self._place(self.text_encoder, True)
        try:
            device = next(self.text_encoder.parameters()).device
            embeds = encode_text(
                [positive, negative],
                self.tokenizer,
                self.text_encoder,
                self.renderer_config.max_sequence_length,
                device,
            )
        finally:
            self._place(self.text_encoder, False)
        return {"c": embeds[:1].cpu(), "u": embeds[1:].cpu()}

    def make_scheduler(self, request: GenerationRequest):
        from diffusers import FlowMatchEulerDiscreteScheduler

        if request.use_unipc:
            return type(self.scheduler).from_config(self.scheduler.config, flow_shift=request.flow_shift)
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=request.flow_shift)

    def make_experts(self) -> Experts:
        config = self.renderer_config
        high = self.transformer if self.transformer is not None else self.transformer_2
        low = self.transformer_2 if (self.transformer is not None and config.two_experts) else None

        def swap(old, new) -> None:
            self._place(old, False)
            self._place(new, True)

        return Experts(high=high, low=low, boundary=config.boundary_timestep, on_switch=swap)

    def generate(
        self,
        request: GenerationRequest,
        *,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        callback: Callable[..., Any] | None = None,
        enhance: Callable[[GenerationRequest, list[np.ndarray]], tuple[str, dict[str, Any]]] | None = None,
    ) -> BerniniOutput:
        """Run one validated-or-not request end to end (without writing files)."""
        if output_type not in OUTPUT_TYPES:
            raise BerniniError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        request = validate(request)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        conditions, geometry, previews = self.encode_conditions(request)
        timings["encode_media_s"] = time.perf_counter() - start
        enhancement: dict[str, Any] = {}
        if enhance is not None:
            tick = time.perf_counter()
            new_prompt, enhancement = enhance(request, previews)
            request = replace(request, prompt=new_prompt)
            timings["enhance_s"] = time.perf_counter() - tick
        positive = t5_text(request.prompt, request.task_type, request.system_prompt)
        tick = time.perf_counter()
        text = self.encode_prompts(positive, request.neg_prompt)
        timings["encode_text_s"] = time.perf_counter() - tick

        if generator is None:
            generator = torch.Generator("cpu").manual_seed(request.seed)
        shape = latent_shape(geometry["frames"], geometry["height"], geometry["width"])
        from diffusers.utils.torch_utils import randn_tensor

        noise = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
        cfg = self.renderer_config
        combo_args = (request.use_src_tgt_id, request.interpolate_src_id, request.max_trained_src_id)
        combos = {name: conditions.combo(name, *combo_args) for name in COMBOS}
        inputs = SamplingInputs(
            latents=noise,
            combos=combos,
            text=text,
            mode=request.guidance_mode,
            weights=Weights(request.omega_vid, request.omega_img, request.omega_txt),
            omega_scale=request.omega_scale,
            apg=APGState(request.eta, tuple(request.norm_threshold), request.momentum),
        )
        experts = self.make_experts()
        self._place(experts.high, True)
        stats = SamplingStats()
        step_callback = None
        if callback is not None:

            def step_callback(index: int, t: int, latents: torch.Tensor) -> None:
                callback(self, index, t, {"latents": latents})

        tick = time.perf_counter()
        try:
            latents = sample(
                experts,
                self.make_scheduler(request),
                inputs,
                request.num_inference_steps,
                runner=self.branch_runner,
                callback=step_callback,
                progress=self._progress if self.progress_bar else None,
                stats=stats,
            )
        finally:
            for expert in self.experts:
                self._place(expert, False)
        timings["denoise_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        frames: Any = latents
        if output_type != "latent":
            frames = self.decode(latents, output_type)
            timings["decode_s"] = time.perf_counter() - tick
        timings["total_s"] = time.perf_counter() - start
        ids = {name: [s.source_id for s in segs] for name, segs in combos.items()}
        parameters = {
            "bernini_version": __version__,
            "model": self.source.describe(),
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "attention_backend": self.attention_backend.name,
            "request": request.to_dict(),
            "resolved": {
                "task_type": request.task_type,
                "guidance_mode": request.guidance_mode,
                "t5_text": positive,
                "negative_text": request.neg_prompt,
                "frames": geometry["frames"],
                "height": geometry["height"],
                "width": geometry["width"],
                "latent_shape": list(shape),
                "source_ids": ids,
                "branches": [list(b) for b in BRANCHES[request.guidance_mode]],
                "forwards": stats.forwards,
                "high_noise_steps": stats.high_steps,
                "low_noise_steps": stats.low_steps,
                "timesteps": stats.timesteps,
                "boundary_timestep": cfg.boundary_timestep if cfg.two_experts else None,
                "scheduler": "unipc" if request.use_unipc else "flow_match_euler",
                "flow_shift": request.flow_shift,
                "seed": request.seed,
            },
            "prompt_enhancer": enhancement,
            "timings": timings,
        }
        return BerniniOutput(frames=frames, latents=latents, parameters=parameters)

    @staticmethod
    def _progress(total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="denoising", unit="step", leave=False)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, output_type: str = "np") -> Any:
        """Latents → frames as ``np`` ([T, H, W, 3] in [0, 1]), ``pil`` (list) or ``pt`` ([T, 3, H, W])."""
        from diffusers.video_processor import VideoProcessor

        self._place(self.vae, True)
        try:
            pixels = LatentCodec(self.vae).decode(latents)
        finally:
            self._place(self.vae, False)
        processor = VideoProcessor(vae_scale_factor=8)
        if output_type == "pt":
            return processor.postprocess_video(pixels, output_type="pt")[0]
        video = processor.postprocess_video(pixels, output_type="np")[0]
        if output_type == "pil":
            from PIL import Image

            return [Image.fromarray((frame * 255).round().astype(np.uint8)) for frame in video]
        return video


def tasks_table() -> dict[str, dict[str, Any]]:
    """Tasks with their default guidance mode, media slots and T5 prefix."""
    from .tasks import TASKS

    return {
        name: {
            "guidance_mode": s.guidance_mode,
            "video": s.video,
            "image": s.image,
            "images": s.images,
            "single_frame": s.single_frame,
            "t5_prefix": s.t5_prefix,
            "description": s.description,
        }
        for name, s in TASKS.items()
    }
