"""``BerniniPipeline``: the one code path under the command line, the scripts, the demo and the service.

Loading mirrors diffusers (``from_pretrained``, ``.to``, component attributes). :meth:`~BerniniPipeline.generate`
takes a :class:`~bernini.plan.GenerationPlan` and reads as the stages of ``docs/architecture.md``:
conditions → (prompt enhancer) → text → sampler ⇄ renderer → decode, then the run record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .adjustments import Adjustment
from .attention import select_backend
from .cache import step_cache
from .conditions import Conditions, LatentCodec, LatentGrid, run_geometry
from .devices import parse_device, supports_float64
from .errors import BerniniError
from .guidance import GuidanceState, Text
from .loading import ModelSource
from .pipeline_loading import OnProgress, PipelineLoadingMixin
from .pipeline_planning import PlanningMixin
from .placement import Placement, PlacementDecision
from .plan import GenerationPlan, ModelDefaults, make_plan
from .record import RunFacts, Timings, run_record
from .request import GenerationRequest
from .sampler import BatchedBranchRunner, BranchRunner, Experts, SamplingInputs, SamplingStats, sample
from .schedulers import build_scheduler, scheduler_name, set_timesteps
from .text import encode_text, token_counts
from .transformer import BerniniTransformer

if TYPE_CHECKING:
    from .lora import LoraSpec
    from .planner.loading import PlannerModules

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
Enhance = Callable[[GenerationPlan, list[np.ndarray]], tuple[str, dict[str, Any]]]
"""A prompt-enhancer hook: (plan, preview frames of each source video) → (new prompt, record)."""
Share = Callable[[Callable[[], Any]], Any]
"""Runs a call once for the group of ranks working on one task and hands every rank its result (see
:meth:`~bernini.frontends.launch.ParallelContext.share`); alone, it just calls."""


def _call_here(call: Callable[[], Any]) -> Any:
    return call()


@dataclass
class BerniniOutput:
    """What a call returns: frames (per ``output_type``), the final latents and the resolved run record."""

    frames: Any
    latents: torch.Tensor
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class EncodedConditions:
    conditions: Conditions
    frames: int
    height: int
    width: int
    previews: list[np.ndarray]
    adjustments: list[Adjustment] = field(default_factory=list)


class BerniniPipeline(PipelineLoadingMixin, PlanningMixin):
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
        planner: PlannerModules | None = None,
    ) -> None:
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self._loaded_scheduler = scheduler
        self.source = source
        self.renderer_config = source.renderer
        self.device = device
        self.dtype = dtype
        self.attention_preference = attention
        self.branch_runner: BranchRunner = BranchRunner()
        self.loras: list[LoraSpec] = []
        self._progress_bar_config: dict[str, Any] = {"disable": True}  # no bar unless asked
        self._interrupt = False
        self.planner = planner
        self.share_planning: Share = _call_here
        self.placement = Placement(offload, device, self.experts)
        self.placement_decision = PlacementDecision(offload)
        self._configure_attention()

    def compile(self) -> None:
        """Regional ``torch.compile`` of the repeated transformer blocks (shapes vary per combo: not fullgraph,
        so sequence-parallel collectives may break the graph)."""
        for expert in self.experts:
            expert.compile_repeated_blocks(fullgraph=False)

    @property
    def offload(self) -> str:
        return self.placement.mode

    @property
    def experts(self) -> list[BerniniTransformer]:
        return [e for e in (self.transformer, self.transformer_2) if e is not None]

    def _modules(self) -> list[torch.nn.Module]:
        renderer = [m for m in (self.transformer, self.transformer_2, self.text_encoder, self.vae) if m is not None]
        return renderer + self.planner_modules

    def _configure_attention(self) -> None:
        self.attention_backend = select_backend(self.device, self.attention_preference, self.dtype)
        for expert in self.experts:
            expert.configure(attention=self.attention_backend, execution_device=self.device)

    def to(self, device: str | torch.device) -> BerniniPipeline:
        self.device = parse_device(device)
        self.placement = Placement(self.placement.mode, self.device, self.experts, self.placement.on_cpu)
        self.placement.settle(self._modules())
        self._configure_attention()
        return self

    @property
    def latent_grid(self) -> LatentGrid:
        return LatentCodec.grid(self.vae.config, self.experts[0].config.patch_size)

    @property
    def model_defaults(self) -> ModelDefaults:
        """What a plan leaves open is decided by the bundle's config, or by a scheduler the user set."""
        defaults = ModelDefaults.from_renderer_config(self.renderer_config, self.source.planner_version)
        if self.scheduler is not self._loaded_scheduler:
            defaults = replace(defaults, scheduler=scheduler_name(self.scheduler))
        return defaults

    def __repr__(self) -> str:
        def size(module: torch.nn.Module) -> str:
            count = sum(p.numel() for p in module.parameters())
            return f"{count / 1e9:.2f}B" if count >= 1e8 else f"{count / 1e6:.2f}M"

        experts = ", ".join(
            f"{name} {size(expert)}"
            for name, expert in (("transformer", self.transformer), ("transformer_2", self.transformer_2))
            if expert is not None
        )
        dtype = str(self.dtype).replace("torch.", "")
        return (
            f"BerniniPipeline(model={self.source.spec!r}, experts=[{experts}], device={self.device}, dtype={dtype}, "
            f"attention={self.attention_backend.name}, offload={self.offload}, "
            f"scheduler={scheduler_name(self.scheduler)}, boundary={self.renderer_config.boundary_timestep:g})"
        )

    # ------------------------------------------------------- diffusers idioms
    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """tqdm settings for the denoising bar, as in diffusers; the bar is off until asked for (``disable=False``,
        or ``from_pretrained(progress=True)``), so a library call draws nothing on stderr."""
        self._progress_bar_config = kwargs

    def progress_bar(self, iterable=None, total: int | None = None):
        from tqdm.auto import tqdm

        config = {"desc": "denoising", "unit": "step", "leave": False, **self._progress_bar_config}
        return tqdm(iterable, total=total, **config)

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (or ``pipe.interrupt = True``) from a step callback to stop early."""
        return self._interrupt

    @interrupt.setter
    def interrupt(self, value: bool) -> None:
        self._interrupt = bool(value)

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
        """Generate; ``parameters`` are :class:`GenerationRequest` fields (``seed``, ``num_frames``, ``omega_*``…).

        On a full Bernini model the shipped per-task settings fill every field not passed here."""
        if "negative_prompt" in parameters:
            parameters["neg_prompt"] = parameters.pop("negative_prompt")
        unknown = sorted(set(parameters) - set(GenerationRequest.field_names()))
        if unknown:
            raise BerniniError(
                f"unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(GenerationRequest.field_names())}"
            )
        named = {
            "task_type": task_type,
            "guidance_mode": guidance_mode,
            "video": video,
            "image": image,
            "images": images,
        }
        given = frozenset({*parameters, *(name for name, value in named.items() if value is not None)})
        request = GenerationRequest(
            prompt=prompt,
            task_type=task_type,
            guidance_mode=guidance_mode,
            video=video if video is not None else [],
            image=image,
            images=images if images is not None else [],
            **parameters,
            explicit=given,
        )
        return self.generate(
            self.plan(request), generator=generator, output_type=output_type, callback=callback_on_step_end
        )

    def plan(self, request: GenerationRequest) -> GenerationPlan:
        """Validate a request into a plan with this model's defaults."""
        return make_plan(request, self.model_defaults)

    def generate(
        self,
        plan: GenerationPlan,
        *,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        callback: Callable[..., Any] | None = None,
        enhance: Enhance | None = None,
        on_progress: OnProgress | None = None,
    ) -> BerniniOutput:
        """Run one plan end to end (without writing files).

        ``callback(pipe, step, timestep, {"latents": latents})`` may return ``{"latents": replacement}``;
        ``on_progress`` hears every phase (see :data:`OnProgress`).
        """
        if not isinstance(plan, GenerationPlan):
            raise BerniniError("generate takes a GenerationPlan; build one with pipe.plan(request)")
        if output_type not in OUTPUT_TYPES:
            raise BerniniError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        plan = plan.with_model_defaults(self.model_defaults)
        self._interrupt = False
        timings = Timings()
        report = on_progress or _silent
        with timings.phase("encode_media"):
            encoded = self.encode_conditions(plan, report)
        enhancement: dict[str, Any] = {}
        if enhance is not None:
            with timings.phase("enhance"):
                prompt, enhancement = enhance(plan, encoded.previews)
            plan = plan.with_prompt(prompt)
        with timings.phase("encode_text"):
            report("text", 0, 1)
            text = self.encode_prompts(plan.t5_text, plan.t5_negative_text)
            text_adjustments = self.text_adjustments(plan.t5_text, plan.t5_negative_text)
            report("text", 1, 1)
        planning: dict[str, Any] | None = None
        if plan.full_model:
            with timings.phase("plan"):
                report("plan", 0, 1)
                contexts, planning = self.share_planning(
                    lambda: self.plan_contexts(plan, text, (encoded.height, encoded.width))
                )
                text = {**text, **contexts}
                report("plan", 1, 1)
        inputs = self.sampling_inputs(plan, encoded, text, generator)
        stats = SamplingStats()
        with timings.phase("denoise"):
            latents = self.denoise(plan, inputs, stats, callback, report)
        frames: Any = latents
        if output_type != "latent":
            with timings.phase("decode"):
                frames = self.decode(latents, output_type, report)
        config = self.renderer_config
        facts = RunFacts(
            frames=encoded.frames,
            height=encoded.height,
            width=encoded.width,
            latent_shape=list(inputs.latents.shape),
            source_ids={combo: [s.source_id for s in segments] for combo, segments in inputs.combos.items()},
            forwards=stats.forwards,
            high_noise_steps=stats.high_steps,
            low_noise_steps=stats.low_steps,
            timesteps=stats.timesteps,
            boundary_timestep=config.boundary_timestep if config.two_experts else None,
            scheduler=plan.scheduler.name,
            interrupted=stats.interrupted,
            enhancement=enhancement,
            skipped_forwards=stats.skipped_forwards,
            batched_forwards=stats.batched_forwards,
            adjustments=[*plan.adjustments, *encoded.adjustments, *text_adjustments],
            planning=planning,
        )
        record = run_record(
            plan,
            facts,
            model={**self.source.describe(), "loras": [spec.describe() for spec in self.loras]},
            device=str(self.device),
            dtype=str(self.dtype).replace("torch.", ""),
            attention=self.attention_backend.name,
            timings=timings.finish(),
        )
        return BerniniOutput(frames=frames, latents=latents, parameters=record)

    # ------------------------------------------------------------------ stages
    def encode_conditions(self, plan: GenerationPlan, on_progress: OnProgress | None = None) -> EncodedConditions:
        """Preprocess and VAE-encode every visual input; the first video (else the image) sets the geometry."""
        from .media import preprocess_image, preprocess_video, to_preview_frames

        media, grid = plan.media, self.latent_grid
        total = len(media.video) + (media.image is not None) + len(media.images)
        report = on_progress if on_progress is not None and total else _silent
        report("encode", 0, total)
        codec = LatentCodec(self.vae)
        conditions = Conditions()
        previews: list[np.ndarray] = []
        video_size: tuple[int, int, int] | None = None
        image_size: tuple[int, int] | None = None
        with self.placement.active(self.vae):
            for index, item in enumerate(media.video):
                pixels = preprocess_video(
                    item, media.fps, plan.geometry.frames, media.max_image_size, source_fps=media.video_fps
                )
                previews.append(to_preview_frames(pixels))
                if index == 0:
                    video_size = tuple(pixels.shape[1:4])
                conditions.videos.append(codec.encode(pixels))
                report("encode", len(conditions.videos), total)
            if media.image is not None:
                pixels = preprocess_image(media.image, media.max_image_size)
                image_size = tuple(pixels.shape[1:3])
                conditions.image = codec.encode(pixels.unsqueeze(1))
                report("encode", len(conditions.videos) + 1, total)
            for item in media.images:
                conditions.images.append(codec.encode(preprocess_image(item, media.max_image_size).unsqueeze(1)))
                report("encode", total - len(media.images) + len(conditions.images), total)
        snapped, adjustments = run_geometry(plan, grid, video_size, image_size)
        return EncodedConditions(conditions, *snapped, previews, adjustments)

    def text_adjustments(self, positive: str, negative: str) -> list[Adjustment]:
        """Prompts longer than the text encoder reads are cut; say by how much."""
        limit = self.renderer_config.max_sequence_length
        counts = token_counts([positive, negative], self.tokenizer)
        why = f"the text encoder reads at most {limit} tokens; the rest was cut"
        return [
            Adjustment(f"{name} tokens", count, limit, why)
            for name, count in zip(("prompt", "neg_prompt"), counts, strict=True)
            if count > limit
        ]

    def encode_prompts(self, positive: str, negative: str) -> dict[Text, torch.Tensor]:
        with self.placement.active(self.text_encoder):
            device = next(self.text_encoder.parameters()).device
            embeds = encode_text(
                [positive, negative],
                self.tokenizer,
                self.text_encoder,
                self.renderer_config.max_sequence_length,
                device,
            )
        return {Text.PROMPT: embeds[:1].cpu(), Text.NEGATIVE: embeds[1:].cpu()}

    def sampling_inputs(
        self,
        plan: GenerationPlan,
        encoded: EncodedConditions,
        text: dict[Text, torch.Tensor],
        generator: torch.Generator | None,
    ) -> SamplingInputs:
        """Seeded noise, the combos with their source ids, all placed once on the execution device."""
        from diffusers.utils.torch_utils import randn_tensor

        if generator is None:
            generator = torch.Generator("cpu").manual_seed(plan.seed)
        shape = self.latent_grid.latent_shape(encoded.frames, encoded.height, encoded.width)
        noise = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
        guidance = plan.guidance
        inputs = SamplingInputs(
            latents=noise,
            combos=encoded.conditions.combos(plan.source_ids, tuple(b.combo for b in guidance.mode.branches)),
            text=text,
            mode=guidance.mode,
            weights=guidance.weights,
            omega_scale=guidance.omega_scale,
            state=GuidanceState(guidance.apg, float64=supports_float64(self.device)),
        )
        return inputs.placed(self.device, self.experts[0].patch_embedding.weight.dtype)

    def make_scheduler(self, plan: GenerationPlan):
        return build_scheduler(
            plan.scheduler.name, plan.scheduler.flow_shift, self.scheduler, self._loaded_scheduler.config
        )

    def make_experts(self) -> Experts:
        config = self.renderer_config
        high = self.transformer if self.transformer is not None else self.transformer_2
        low = self.transformer_2 if (self.transformer is not None and config.two_experts) else None
        return Experts(high=high, low=low, boundary=config.boundary_timestep, on_switch=self.placement.swap)

    def denoise(
        self,
        plan: GenerationPlan,
        inputs: SamplingInputs,
        stats: SamplingStats,
        callback: Callable[..., Any] | None = None,
        on_progress: OnProgress | None = None,
    ) -> torch.Tensor:
        step_callback = None
        if callback is not None:

            def step_callback(index: int, t: int, latents: torch.Tensor) -> torch.Tensor | None:
                return replacement_latents(callback(self, index, t, {"latents": latents}), latents)

        experts = self.make_experts()
        runner = self.branch_runner
        if plan.batch_branches and type(runner) is BranchRunner:
            runner = BatchedBranchRunner(self.batch_fits)
        self.placement.activate(experts.high, True)
        try:
            steps = self.steps_per_expert(plan) if plan.cache is not None else None
            with step_cache(self.experts, plan.cache, steps) as computed:
                latents = sample(
                    experts,
                    self.make_scheduler(plan),
                    inputs,
                    plan.num_inference_steps,
                    runner=runner,
                    callback=step_callback,
                    progress=lambda total: _StepReport(self.progress_bar(total=total), total, on_progress or _silent),
                    stats=stats,
                    interrupted=lambda: self._interrupt,
                    sigmas=plan.scheduler.sigmas,
                )
                if computed is not None:
                    stats.skipped_forwards = computed.skipped(stats.forwards)
            stats.batched_forwards = getattr(runner, "batched_calls", 0)
            return latents
        finally:
            for expert in self.experts:
                self.placement.activate(expert, False)

    def steps_per_expert(self, plan: GenerationPlan) -> list[int]:
        """How many of the plan's sampling steps each of ``self.experts`` runs (sizes MagCache's ratios)."""
        scheduler = self.make_scheduler(plan)
        set_timesteps(scheduler, plan.num_inference_steps, torch.device("cpu"), plan.scheduler.sigmas)
        experts = self.make_experts()
        chosen = [experts.for_timestep(float(t))[0] for t in scheduler.timesteps]
        return [sum(c is expert for c in chosen) for expert in self.experts]

    def batch_fits(self, batch: int, latent_elements: int) -> bool:
        """Whether ``batch`` stacked branches of ``latent_elements`` latent values fit next to the weights
        (:func:`bernini.memory_plan.branch_batch_fits`: always on the CPU)."""
        from .memory_plan import branch_batch_fits

        return branch_batch_fits(batch, latent_elements, self.experts[0].config, self.dtype, self.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, output_type: str = "np", on_progress: OnProgress | None = None) -> Any:
        """Latents → frames as ``np`` ([T, H, W, 3] in [0, 1]), ``pil`` (list) or ``pt`` ([T, 3, H, W]).

        ``on_progress`` hears ``decode`` per call of the VAE's decoder (one per latent frame, or per tile).
        """
        from diffusers.video_processor import VideoProcessor

        report = on_progress or _silent
        total = int(latents.shape[2])
        calls = [0]

        def chunk_done(*_: Any) -> None:
            calls[0] += 1
            if calls[0] < total:
                report("decode", calls[0], total)

        report("decode", 0, total)
        handle = self.vae.decoder.register_forward_hook(chunk_done)
        try:
            with self.placement.active(self.vae):
                pixels = LatentCodec(self.vae).decode(latents)
        finally:
            handle.remove()
        processor = VideoProcessor(vae_scale_factor=self.latent_grid.spatial)
        if output_type == "pt":
            video = processor.postprocess_video(pixels, output_type="pt")[0]
            report("decode", total, total)
            return video
        video = processor.postprocess_video(pixels, output_type="np")[0]
        if output_type == "pil":
            from PIL import Image

            video = [Image.fromarray((frame * 255).round().astype(np.uint8)) for frame in video]
        report("decode", total, total)
        return video


def _silent(phase: str, done: int, total: int) -> None:
    pass


def replacement_latents(returned: Any, latents: torch.Tensor) -> torch.Tensor | None:
    """What a step callback returned (diffusers: ``{"latents": tensor}``; None or no ``latents`` keeps them), checked
    against the current ``latents``: a tensor of their shape, floating point; it takes their dtype and device."""
    if returned is None:
        return None
    if not isinstance(returned, Mapping):
        raise BerniniError(
            f"a step callback returned a {type(returned).__name__}; return a dict such as "
            "{'latents': tensor} (or None to keep the latents)"
        )
    replacement = returned.get("latents")
    if replacement is None:
        return None
    if not isinstance(replacement, torch.Tensor):
        raise BerniniError(
            f"a step callback returned latents of type {type(replacement).__name__}; return a torch.Tensor"
        )
    if tuple(replacement.shape) != tuple(latents.shape):
        raise BerniniError(
            f"a step callback returned latents of shape {tuple(replacement.shape)}; they must keep the shape "
            f"{tuple(latents.shape)}"
        )
    if not replacement.is_floating_point():
        raise BerniniError(
            f"a step callback returned latents of dtype {str(replacement.dtype).replace('torch.', '')}; "
            f"return floating-point latents (they are {str(latents.dtype).replace('torch.', '')})"
        )
    return replacement.to(device=latents.device, dtype=latents.dtype)


class _StepReport:
    """The denoising bar (``pipe.progress_bar``) plus ``on_progress("denoise", …)`` for every step."""

    def __init__(self, bar: Any, total: int, report: OnProgress) -> None:
        self.bar, self.total, self.report, self.done = bar, total, report, 0
        report("denoise", 0, total)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.done += n
        self.report("denoise", self.done, self.total)

    def close(self) -> None:
        self.bar.close()
