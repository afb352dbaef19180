"""Sampling presets and step-cache choices: plain tables, no torch, read by the plan and the front ends.

A preset pins what a distilled model was trained for: the step count, the (unshifted) sigmas the
scheduler shifts into its timesteps, the scheduler and its shift, and the guidance mode. Wan2.2-Lightning
and the lightx2v 4-step distillation LoRAs denoise at t = 1000, 750, 500, 250 before the shift of 5, i.e.
sigmas 1, 0.9375, 0.833, 0.625: two steps on the high-noise expert and two on the low-noise one, with
guidance distilled away (one forward per step).

A preset yields to what the user set (steps, shift, guidance mode), with a note; a case file's guidance mode
yields to the preset, with a note. ``guided_tasks`` keep their own guidance under the preset: the 4-step LoRAs
were distilled for text-to-video, and without the reference branches r2v / rv2v lose the reference's identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preset:
    name: str
    num_inference_steps: int
    sigmas: tuple[float, ...]  # before the flow shift; the scheduler applies it
    scheduler: str
    flow_shift: float
    guidance_mode: str
    description: str
    guided_tasks: tuple[str, ...] = ()  # tasks that keep their own (or the case's) guidance mode


PRESETS: dict[str, Preset] = {
    "lightning4": Preset(
        name="lightning4",
        num_inference_steps=4,
        sigmas=(1.0, 0.75, 0.5, 0.25),
        scheduler="flow_match_euler",
        flow_shift=5.0,
        guidance_mode="none",
        description="4 distilled steps (Wan2.2-Lightning / lightx2v LoRAs), flow-match Euler, shift 5, no guidance "
        "(r2v and rv2v keep their reference guidance); --num_inference_steps, --flow_shift or --guidance_mode "
        "given win over it, each with a note",
        guided_tasks=("r2v", "rv2v"),
    )
}


@dataclass(frozen=True)
class CacheKind:
    """A step cache: ``threshold`` is its default skip threshold (larger skips more)."""

    name: str
    threshold: float
    description: str


CACHES: dict[str, CacheKind] = {
    "firstblock": CacheKind(
        "firstblock", 0.05, "diffusers' First Block Cache: skip the other blocks when block 0's residual barely moves"
    ),
    "magcache": CacheKind(
        "magcache",
        0.06,
        "diffusers' MagCache: skip every block while the calibrated residual magnitude ratios stay near 1 "
        "(needs --cache_calibration FILE; a missing FILE is written by calibrating that run)",
    ),
    "teacache": CacheKind(
        "teacache",
        0.1,
        "TeaCache: skip every block while the accumulated change of the timestep modulation stays small "
        "(--cache_calibration FILE: optional rescale coefficients)",
    ),
}


@dataclass(frozen=True)
class CacheSettings:
    """A step cache (``bernini.sampling.presets.CACHES``), its skip threshold and its calibration file.

    MagCache: ``ratios`` holds one tuple per expert (high-noise first); None with a ``calibration`` path means
    this run calibrates (nothing skipped) and writes the file. TeaCache: ``coefficients`` rescale its
    indicator (None: unscaled)."""

    kind: str
    threshold: float
    calibration: str | None = None
    ratios: tuple[tuple[float, ...], ...] | None = None
    calibration_steps: int | None = None
    coefficients: tuple[float, ...] | None = None

    @property
    def calibrating(self) -> bool:
        return self.kind == "magcache" and self.ratios is None

    def record(self) -> dict[str, Any]:
        """What the sidecar keeps of it."""
        record: dict[str, Any] = {"kind": self.kind, "threshold": self.threshold}
        if self.calibration is not None:
            record["calibration"] = self.calibration
        if self.calibrating:
            record["calibrating"] = True
        if self.coefficients is not None:
            record["coefficients"] = list(self.coefficients)
        return record
