"""The run record: what a sidecar holds to reproduce a generation and explain what ran."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ._version import __version__
from .adjustments import Adjustment
from .guidance import Combo
from .plan import GenerationPlan


class Timings(dict):
    """Phase durations in seconds, keyed ``<phase>_s``, plus ``total_s`` since creation."""

    def __init__(self) -> None:
        super().__init__()
        self.start = time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        tick = time.perf_counter()
        try:
            yield
        finally:
            self[f"{name}_s"] = time.perf_counter() - tick

    def finish(self) -> dict[str, float]:
        self["total_s"] = time.perf_counter() - self.start
        return dict(self)


@dataclass
class RunFacts:
    """What the stages found out while running one plan."""

    frames: int
    height: int
    width: int
    latent_shape: list[int]
    source_ids: dict[Combo, list[float]]
    forwards: int
    high_noise_steps: int
    low_noise_steps: int
    timesteps: list[int]
    boundary_timestep: float | None
    scheduler: str
    interrupted: bool = False
    enhancement: dict[str, Any] = field(default_factory=dict)
    adjustments: list[Adjustment] = field(default_factory=list)


def run_record(
    plan: GenerationPlan,
    facts: RunFacts,
    *,
    model: dict[str, Any],
    device: str,
    dtype: str,
    attention: str,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The sidecar's content (without the output path and fps, which the job adds)."""
    resolved = {
        "task_type": plan.task.name,
        "guidance_mode": plan.guidance.mode.name,
        "t5_text": plan.t5_text,
        "negative_text": plan.negative_prompt,
        "frames": facts.frames,
        "height": facts.height,
        "width": facts.width,
        "latent_shape": list(facts.latent_shape),
        "source_ids": {combo.value: ids for combo, ids in facts.source_ids.items()},
        "branches": [[branch.combo.value, branch.text.value] for branch in plan.guidance.mode.branches],
        "forwards": facts.forwards,
        "high_noise_steps": facts.high_noise_steps,
        "low_noise_steps": facts.low_noise_steps,
        "timesteps": facts.timesteps,
        "boundary_timestep": facts.boundary_timestep,
        "scheduler": facts.scheduler,
        "flow_shift": plan.scheduler.flow_shift,
        "seed": plan.seed,
    }
    if facts.interrupted:
        resolved["interrupted"] = True
    return {
        "bernini_version": __version__,
        "model": model,
        "device": device,
        "dtype": dtype,
        "attention_backend": attention,
        "request": plan.request_record(),
        "resolved": resolved,
        "prompt_enhancer": facts.enhancement,
        "adjustments": [a.record() for a in facts.adjustments],
        "timings": timings,
    }
