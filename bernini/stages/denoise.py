"""The denoising stage: seeded noise and the combos placed on the execution device once, then the sampler over
the experts (the expert switch, the guidance mode's branches, the step cache, the step callback)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import BerniniError
from ..resolved import ResolvedRequest
from ..runtime.devices import supports_float64
from ..sampling.cache import step_cache
from ..sampling.guidance import GuidanceState
from ..sampling.sampler import (
    BatchedBranchRunner,
    BranchRunner,
    PinnedFrames,
    SamplingInputs,
    WindowedInputs,
    sample,
)
from ..sampling.schedulers import build_scheduler, set_timesteps
from ..sampling.windows import shared_noise
from .batch import OnProgress, RenderBatch
from .components import Components, Runtime


def prepare_latents(batch: RenderBatch, components: Components, runtime: Runtime) -> RenderBatch:
    """Seeded noise, the combos with their source ids, all placed once on the execution device."""
    from diffusers.utils.torch_utils import randn_tensor

    resolved = batch.resolved
    generator = batch.generator
    if generator is None:
        generator = torch.Generator("cpu").manual_seed(resolved.seed)
    shape = components.latent_grid.latent_shape(batch.frames, batch.height, batch.width)
    noise = randn_tensor(shape, generator=generator, device=runtime.device, dtype=torch.float32)
    spans = batch.context_windows(components.latent_grid)
    noise = shared_noise(noise, spans, resolved.seed)
    guidance = resolved.guidance
    inputs = SamplingInputs(
        latents=noise,
        combos=batch.conditions.combos(resolved.source_ids, tuple(b.combo for b in guidance.mode.branches)),
        text=batch.text,
        mode=guidance.mode,
        weights=guidance.weights,
        omega_scale=guidance.omega_scale,
        state=GuidanceState(guidance.apg, float64=supports_float64(runtime.device)),
        pinned=pinned_frames(batch, noise),
    )
    batch.inputs = inputs.placed(runtime.device, components.experts[0].patch_embedding.weight.dtype)
    batch.windows = WindowedInputs(batch.inputs, spans, batch.window_texts) if len(spans) > 1 else None
    return batch


def pinned_frames(batch: RenderBatch, noise: torch.Tensor) -> PinnedFrames | None:
    """``--extend``: the clip's latents held as the first latent frames, re-noised with this run's own noise."""
    extension = batch.extension
    if extension is None:
        return None
    clean = extension.latents.to(noise.device, torch.float32)
    return PinnedFrames(clean, noise[:, :, : clean.shape[2]].clone())


def denoise(batch: RenderBatch, components: Components, runtime: Runtime) -> RenderBatch:
    resolved, inputs, stats = batch.resolved, batch.inputs, batch.stats
    assert inputs is not None, "prepare_latents runs first"
    placement = runtime.placement
    experts = components.make_experts(placement.swap)
    runner = runtime.branch_runner
    if resolved.batch_branches and type(runner) is BranchRunner:
        runner = BatchedBranchRunner(lambda batch, elements: batch_fits(components, runtime, batch, elements))
    placement.activate(experts.high, True)
    try:
        steps = steps_per_expert(components, resolved) if resolved.cache is not None else None
        with step_cache(components.experts, resolved.cache, steps) as computed:
            batch.latents = sample(
                experts,
                make_scheduler(components, resolved),
                inputs,
                resolved.num_inference_steps,
                runner=runner,
                callback=batch.step_callback,
                progress=lambda total: StepReport(runtime.progress_bar(total=total), total, batch.report),
                stats=stats,
                interrupted=lambda: runtime.interrupt,
                sigmas=resolved.scheduler.sigmas,
                windows=batch.windows,
            )
            if computed is not None:
                stats.skipped_forwards = computed.skipped(stats.forwards)
        stats.batched_forwards = getattr(runner, "batched_calls", 0)
        return batch
    finally:
        for expert in components.experts:
            placement.activate(expert, False)


def make_scheduler(components: Components, resolved: ResolvedRequest):
    return build_scheduler(
        resolved.scheduler.name, resolved.scheduler.flow_shift, components.scheduler, components.loaded_scheduler.config
    )


def steps_per_expert(components: Components, resolved: ResolvedRequest) -> list[int]:
    """How many of the plan's sampling steps each of ``components.experts`` runs (sizes MagCache's ratios)."""
    scheduler = make_scheduler(components, resolved)
    set_timesteps(scheduler, resolved.num_inference_steps, torch.device("cpu"), resolved.scheduler.sigmas)
    experts = components.make_experts()
    chosen = [experts.for_timestep(float(t))[0] for t in scheduler.timesteps]
    return [sum(c is expert for c in chosen) for expert in components.experts]


def batch_fits(components: Components, runtime: Runtime, batch: int, latent_elements: int) -> bool:
    """Whether ``batch`` stacked branches of ``latent_elements`` latent values fit next to the weights
    (:func:`bernini.runtime.memory.branch_batch_fits`: always on the CPU)."""
    from ..runtime.memory import branch_batch_fits

    return branch_batch_fits(batch, latent_elements, components.experts[0].config, runtime.dtype, runtime.device)


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


class StepReport:
    """The denoising bar (``runtime.progress_bar``) plus ``on_progress("denoise", …)`` for every step."""

    def __init__(self, bar: Any, total: int, report: OnProgress) -> None:
        self.bar, self.total, self.report, self.done = bar, total, report, 0
        report("denoise", 0, total)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.done += n
        self.report("denoise", self.done, self.total)

    def window(self, number: int, count: int) -> None:
        """Which context window of the step runs (long video): shown after the bar."""
        if hasattr(self.bar, "set_postfix_str"):
            self.bar.set_postfix_str(f"window {number}/{count}")

    def close(self) -> None:
        self.bar.close()
