"""``BerniniPipeline``: the one code path under the command line, the scripts, the demo and the service.

Loading mirrors diffusers (``from_pretrained``, ``.to``, component attributes). The pipeline is composed, not
mixed in: it owns its :class:`~bernini.stages.components.Components` (the loaded modules) and its
:class:`~bernini.stages.components.Runtime` (device, dtype, placement, attention, how branches and planning run);
the diffusers attribute names (``pipe.transformer``, ``pipe.device``, ``pipe.placement``…) read and write them.
:meth:`~BerniniPipeline.generate` takes a :class:`~bernini.resolve.ResolvedRequest` and passes one
:class:`~bernini.stages.batch.RenderBatch` through the stages of ``docs/architecture.md`` (:mod:`bernini.stages`):
media → (prompt enhancer) → text → (planner) → denoise → decode, then the run record.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from . import pipeline_loading as loading
from .conditions import LatentGrid
from .errors import BerniniError
from .loaders.loading import ModelSource
from .models.transformer import BerniniTransformer
from .record import RunRecord, run_record
from .request import GenerationRequest
from .resolve import resolve_request, with_model_defaults
from .resolved import ModelDefaults, ResolvedRequest
from .runtime.devices import parse_device
from .runtime.placement import Placement, PlacementDecision
from .sampling.guidance import Text
from .sampling.sampler import Experts, SamplingInputs
from .sampling.schedulers import scheduler_name
from .stages import decode as decoding
from .stages import denoise as denoising
from .stages import planning
from .stages import text as prompts
from .stages.batch import Enhance, OnProgress, RenderBatch
from .stages.components import Components, Runtime
from .stages.media import encode_media
from .stages.text import encode_text, enhance_prompt

if TYPE_CHECKING:
    from .planner.loading import PlannerModules

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "uint8", "latent")
Share = Callable[[Callable[[], Any]], Any]
"""Runs a call once for the group of ranks working on one task and hands every rank its result (see
:meth:`~bernini.frontends.launch.ParallelContext.share`); alone, it just calls."""
__all__ = ["BerniniOutput", "BerniniPipeline", "Enhance", "OUTPUT_TYPES", "OnProgress", "Share"]


@dataclass
class BerniniOutput:
    """What a call returns: frames (per ``output_type``), the final latents and the resolved run record (as the
    sidecar's JSON object in ``parameters``; typed in ``record``)."""

    frames: Any
    latents: torch.Tensor
    parameters: dict[str, Any] = field(default_factory=dict)
    record: RunRecord | None = None


class _Part:
    """A pipeline attribute kept in one of its parts (``components`` or ``runtime``), read and written through."""

    def __init__(self, part: str, name: str | None = None) -> None:
        self.part, self.name = part, name

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = self.name or name

    def __get__(self, pipe: Any, owner: type | None = None) -> Any:
        if pipe is None:
            return self
        return getattr(getattr(pipe, self.part), self.name)

    def __set__(self, pipe: Any, value: Any) -> None:
        setattr(getattr(pipe, self.part), self.name, value)


class BerniniPipeline:
    """Bernini-R renderer pipeline (two Wan2.2 experts, UMT5, Wan VAE) in the diffusers idiom."""

    transformer = _Part("components")
    transformer_2 = _Part("components")
    vae = _Part("components")
    text_encoder = _Part("components")
    tokenizer = _Part("components")
    scheduler = _Part("components")
    source = _Part("components")
    planner = _Part("components")
    loras = _Part("components")
    device = _Part("runtime")
    dtype = _Part("runtime")
    placement = _Part("runtime")
    placement_decision = _Part("runtime")
    attention_backend = _Part("runtime")
    branch_runner = _Part("runtime")
    share_planning = _Part("runtime")
    _interrupt = _Part("runtime", "interrupt")

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
        self.components = Components(
            transformer=transformer,
            transformer_2=transformer_2,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            source=source,
            planner=planner,
        )
        self.runtime = Runtime(
            device=device,
            dtype=dtype,
            placement=Placement(offload, device, self.components.experts),
            placement_decision=PlacementDecision(offload),
            attention_preference=attention,
        )
        self.runtime.configure_attention(self.components.experts)

    from_pretrained = classmethod(loading.from_pretrained)

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
        return self.components.experts

    @property
    def renderer_config(self):
        return self.components.renderer_config

    @property
    def planner_modules(self) -> list[torch.nn.Module]:
        return self.components.planner_modules

    def to(self, device: str | torch.device) -> BerniniPipeline:
        runtime = self.runtime
        runtime.device = parse_device(device)
        runtime.placement = Placement(runtime.placement.mode, runtime.device, self.experts, runtime.placement.on_cpu)
        runtime.placement.settle(self.components.modules())
        runtime.configure_attention(self.experts)
        return self

    @property
    def latent_grid(self) -> LatentGrid:
        return self.components.latent_grid

    @property
    def model_defaults(self) -> ModelDefaults:
        """What a plan leaves open is decided by the bundle's config, or by a scheduler the user set."""
        components = self.components
        defaults = ModelDefaults.from_renderer_config(components.renderer_config, components.source.planner_version)
        if components.scheduler is not components.loaded_scheduler:
            defaults = replace(defaults, scheduler=scheduler_name(components.scheduler))
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
        self.runtime.progress_bar_config = kwargs

    def progress_bar(self, iterable=None, total: int | None = None):
        return self.runtime.progress_bar(iterable, total=total)

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (or ``pipe.interrupt = True``) from a step callback to stop early."""
        return self.runtime.interrupt

    @interrupt.setter
    def interrupt(self, value: bool) -> None:
        self.runtime.interrupt = bool(value)

    def load_lora_weights(self, path: str | os.PathLike, expert: str = "both", scale: float = 1.0) -> None:
        """Merge a LoRA file into the ``high``- or ``low``-noise expert or ``both``, every delta × ``scale``
        (see :mod:`bernini.loaders.lora`); :meth:`unload_lora_weights` takes all of them out again."""
        loading.load_lora_weights(self.components, path, expert, scale)

    def unload_lora_weights(self) -> None:
        """Unmerge every loaded LoRA, last first (subtracting the same deltas: exact up to the weights' rounding)."""
        loading.unload_lora_weights(self.components)

    def decide_placement(
        self, offload: bool | str, device: torch.device, gpu_memory: float | None = None
    ) -> PlacementDecision:
        """Keep resident what fits the budget, stream the rest (see :mod:`bernini.runtime.memory`)."""
        return loading.decide_placement(self.components, self.runtime, offload, device, gpu_memory)

    def apply_placement(self, decision: PlacementDecision) -> None:
        loading.apply_placement(self.components, self.runtime, decision)

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
        request = GenerationRequest(
            prompt=prompt,
            task_type=task_type,
            guidance_mode=guidance_mode,
            video=video,
            image=image,
            images=images,
            **parameters,
        )
        return self.generate(
            self.resolve(request), generator=generator, output_type=output_type, callback=callback_on_step_end
        )

    def resolve(self, request: GenerationRequest) -> ResolvedRequest:
        """Validate a request into a plan with this model's defaults."""
        return resolve_request(request, self.model_defaults)

    def generate(
        self,
        resolved: ResolvedRequest,
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
        if not isinstance(resolved, ResolvedRequest):
            raise BerniniError("generate takes a ResolvedRequest; build one with pipe.resolve(request)")
        if output_type not in OUTPUT_TYPES:
            raise BerniniError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        resolved = with_model_defaults(resolved, self.model_defaults)
        self.runtime.interrupt = False
        batch = RenderBatch(resolved, generator=generator, enhance=enhance, output_type=output_type)
        if on_progress is not None:
            batch.report = on_progress
        if callback is not None:

            def step_callback(index: int, t: int, latents: torch.Tensor) -> torch.Tensor | None:
                return denoising.replacement_latents(callback(self, index, t, {"latents": latents}), latents)

            batch.step_callback = step_callback
        parts = self.components, self.runtime
        timings = batch.timings
        with timings.phase("encode_media"):
            batch = encode_media(batch, *parts)
        if enhance is not None:
            with timings.phase("enhance"):
                batch = enhance_prompt(batch)
        with timings.phase("encode_text"):
            batch = encode_text(batch, *parts)
        if batch.resolved.full_model:
            with timings.phase("plan"):
                batch = planning.plan_stage(batch, *parts)
        batch = denoising.prepare_latents(batch, *parts)
        with timings.phase("denoise"):
            batch = denoising.denoise(batch, *parts)
        batch.output = batch.latents
        if output_type != "latent":
            with timings.phase("decode"):
                batch = decoding.decode(batch, *parts)
        return self._output(batch)

    def _output(self, batch: RenderBatch) -> BerniniOutput:
        config, components = self.renderer_config, self.components
        record = run_record(
            batch.resolved,
            batch.facts(config.boundary_timestep if config.two_experts else None),
            model={**components.source.describe(), "loras": [spec.describe() for spec in components.loras]},
            device=str(self.device),
            dtype=str(self.dtype).replace("torch.", ""),
            attention=self.attention_backend.name,
            timings=batch.timings.finish(),
        )
        return BerniniOutput(frames=batch.output, latents=batch.latents, parameters=record.to_json(), record=record)

    # ------------------------------------------- single stages, for tests and tools
    def encode_conditions(self, resolved: ResolvedRequest, on_progress: OnProgress | None = None) -> RenderBatch:
        """The media stage alone: a batch holding the plan's encoded conditions and its snapped geometry."""
        batch = RenderBatch(resolved)
        if on_progress is not None:
            batch.report = on_progress
        return encode_media(batch, self.components, self.runtime)

    def encode_prompts(self, positive: str, negative: str) -> dict[Text, torch.Tensor]:
        return prompts.encode_prompts(self.components, self.runtime, positive, negative)

    def plan_contexts(
        self, resolved: ResolvedRequest, text: dict[Text, torch.Tensor], size: tuple[int, int] | None = None
    ) -> tuple[dict[Text, torch.Tensor], dict[str, Any]]:
        """The full model's planner stage alone (see :func:`bernini.stages.planning.plan_contexts`)."""
        return planning.plan_contexts(self.components, self.runtime, resolved, text, size)

    def planner_batch_fits(self, branches: int, tokens: int) -> bool:
        return planning.planner_batch_fits(self.components, self.runtime, branches, tokens)

    def sampling_inputs(
        self, resolved: ResolvedRequest, encoded: RenderBatch, text: dict[Text, torch.Tensor], generator=None
    ) -> SamplingInputs:
        """Seeded noise and the combos of ``encoded`` (from :meth:`encode_conditions`) placed on the device."""
        batch = replace(encoded, resolved=resolved, text=text, generator=generator)
        return denoising.prepare_latents(batch, self.components, self.runtime).inputs

    def make_experts(self) -> Experts:
        return self.components.make_experts(self.placement.swap)

    def batch_fits(self, batch: int, latent_elements: int) -> bool:
        return denoising.batch_fits(self.components, self.runtime, batch, latent_elements)

    def steps_per_expert(self, resolved: ResolvedRequest) -> list[int]:
        return denoising.steps_per_expert(self.components, resolved)

    def decode(self, latents: torch.Tensor, output_type: str = "np", on_progress: OnProgress | None = None) -> Any:
        """Latents → frames (see :mod:`bernini.stages.decode`)."""
        return decoding.decode_latents(self.components, self.runtime, latents, output_type, on_progress)
