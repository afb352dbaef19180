"""The one value the stages pass along: a :class:`RenderBatch` holds a generation's plan, the call's hooks and
everything the stages have found so far; each stage reads what earlier ones left and fills its own fields."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..adjustments import Adjustment
from ..conditions import Conditions, Extension, LatentGrid
from ..record import RunFacts, Timings
from ..resolved import ResolvedRequest
from ..sampling.guidance import Text
from ..sampling.sampler import SamplingInputs, SamplingStats, WindowedInputs
from ..sampling.windows import Span, context_windows

OnProgress = Callable[[str, int, int], None]
"""``on_progress(phase, done, total)``: ``load``, ``encode`` (media), ``text``, ``denoise``, ``decode`` (per VAE
chunk); ``done == 0`` starts a phase and ``done == total`` ends it. The library prints nothing itself."""
StepCallback = Callable[[int, int, torch.Tensor], "torch.Tensor | None"]
"""``(step index, timestep, latents)`` → replacement latents or None, called after every sampling step."""
Enhance = Callable[[ResolvedRequest, list[np.ndarray]], tuple[str, dict[str, Any]]]
"""A prompt-enhancer hook: (plan, preview frames of each source video) → (new prompt, record)."""


def silent(phase: str, done: int, total: int) -> None:
    pass


@dataclass
class RenderBatch:
    resolved: ResolvedRequest
    # the call's own inputs and hooks
    generator: torch.Generator | None = None
    step_callback: StepCallback | None = None
    report: OnProgress = silent
    enhance: Enhance | None = None
    output_type: str = "np"
    # media stage: the encoded inputs, the snapped target geometry, the enhancer's previews
    conditions: Conditions = field(default_factory=Conditions)
    frames: int = 0
    height: int = 0
    width: int = 0
    previews: list[np.ndarray] = field(default_factory=list)
    adjustments: list[Adjustment] = field(default_factory=list)  # beyond the plan's own
    extension: Extension | None = None  # --extend: the clip continued
    enhancement: dict[str, Any] = field(default_factory=dict)
    # text and planner stages: the contexts the guidance branches read
    text: dict[Text, torch.Tensor] = field(default_factory=dict)
    planning: dict[str, Any] | None = None
    window_texts: list[dict[Text, torch.Tensor]] | None = None  # the full model's per-window planner contexts
    # denoising stage
    inputs: SamplingInputs | None = None
    windows: WindowedInputs | None = None  # the context windows (None: one window, the plain run)
    stats: SamplingStats = field(default_factory=SamplingStats)
    latents: torch.Tensor | None = None
    # decoding stage: frames per ``output_type`` (the latents for "latent")
    output: Any = None
    timings: Timings = field(default_factory=Timings)

    def facts(self, boundary_timestep: float | None) -> RunFacts:
        """What the run record takes from the stages."""
        stats, inputs = self.stats, self.inputs
        assert inputs is not None, "the denoising stage has not run"
        return RunFacts(
            frames=self.frames,
            height=self.height,
            width=self.width,
            latent_shape=list(inputs.latents.shape),
            source_ids={combo: [s.source_id for s in segments] for combo, segments in inputs.combos.items()},
            forwards=stats.forwards,
            high_noise_steps=stats.high_steps,
            low_noise_steps=stats.low_steps,
            timesteps=stats.timesteps,
            boundary_timestep=boundary_timestep,
            scheduler=self.resolved.scheduler.name,
            interrupted=stats.interrupted,
            enhancement=self.enhancement,
            skipped_forwards=stats.skipped_forwards,
            batched_forwards=stats.batched_forwards,
            adjustments=[*self.resolved.adjustments, *self.adjustments],
            planning=self.planning,
            windows=self.windows_record(),
            extend=self.extension.record if self.extension is not None else None,
        )

    def context_windows(self, grid: LatentGrid) -> list[Span]:
        """The run's context windows over its latent frames (one covering all of them without --window_frames)."""
        settings = self.resolved.windows
        total = grid.latent_shape(self.frames, self.height, self.width)[2]
        if settings is None:
            return [(0, total)]
        return context_windows(total, settings.frames, settings.overlap, grid.temporal)

    def windows_record(self) -> dict[str, Any] | None:
        """The sidecar's ``resolved.windows``: the settings, the latent windows run and how the planner ran."""
        settings, inputs = self.resolved.windows, self.inputs
        if settings is None or inputs is None:
            return None
        spans = self.windows.spans if self.windows is not None else [(0, inputs.latents.shape[2])]
        record: dict[str, Any] = {
            "frames": settings.frames,
            "overlap": settings.overlap,
            "count": len(spans),
            "latent_windows": [list(span) for span in spans],
            "shared_noise": len(spans) > 1,
        }
        if self.resolved.full_model:
            record["planner"] = "once" if len(spans) == 1 else "per_window" if self.resolved.media.video else "shared"
        return record
