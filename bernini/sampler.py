"""The denoising loop: scheduler, expert routing, the one-time omega scale and guidance.

``sample`` is written like diffusers' explicit loops. How a branch's forward is computed (one rank,
CFG-parallel over ranks, sequence-parallel inside an expert) is injected as a ``BranchRunner``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .guidance import BRANCHES, APGState, Branch, Weights, combine
from .transformer import BerniniTransformer, Segment

StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass
class Experts:
    """The high-noise expert until ``boundary`` (integer timestep), then the low-noise one."""

    high: BerniniTransformer
    low: BerniniTransformer | None = None
    boundary: float = 875.0
    on_switch: Callable[[BerniniTransformer, BerniniTransformer], None] | None = None

    @property
    def two(self) -> bool:
        return self.low is not None and self.boundary > 0

    def for_timestep(self, t: float) -> tuple[BerniniTransformer, bool]:
        """The expert for timestep ``t`` and whether it is the high-noise one."""
        if not self.two or t >= self.boundary:
            return self.high, True
        return self.low, False


@dataclass
class SamplingInputs:
    latents: torch.Tensor  # initial noise [1, 16, T, H, W], fp32
    combos: dict[str, list[Segment]]
    text: dict[str, torch.Tensor]  # "c" / "u" → [1, L, dim]
    mode: str
    weights: Weights
    omega_scale: float
    apg: APGState = field(default_factory=APGState)


def run_branch(expert: BerniniTransformer, inputs: SamplingInputs, branch: Branch, latents, t) -> torch.Tensor:
    """One forward: the combo's clean conditions packed before the noisy target, target velocity out."""
    combo, text = branch
    device = expert.execution_device
    dtype = expert.patch_embedding.weight.dtype
    conditions = [Segment(s.latent.to(device, dtype), s.source_id) for s in inputs.combos[combo]]
    timestep = torch.full((latents.shape[0],), int(t), device=device, dtype=torch.long)
    return expert.forward_packed(
        conditions, latents.to(device, dtype), timestep, inputs.text[text].to(device, dtype)
    ).float()


class BranchRunner:
    """Evaluates the branches of a step one after another on this process."""

    def __call__(
        self, expert: BerniniTransformer, inputs: SamplingInputs, branches: Sequence[Branch], latents, t
    ) -> list[torch.Tensor]:
        return [run_branch(expert, inputs, branch, latents, t) for branch in branches]


@dataclass
class SamplingStats:
    forwards: int = 0
    high_steps: int = 0
    low_steps: int = 0
    timesteps: list[int] = field(default_factory=list)


@torch.no_grad()
def sample(
    experts: Experts,
    scheduler,
    inputs: SamplingInputs,
    num_inference_steps: int,
    runner: BranchRunner | None = None,
    callback: StepCallback | None = None,
    progress: Callable[[int], object] | None = None,
    stats: SamplingStats | None = None,
) -> torch.Tensor:
    """Denoise ``inputs.latents`` and return the final latents (fp32, on the latents' device)."""
    runner = runner or BranchRunner()
    stats = stats if stats is not None else SamplingStats()
    branches = BRANCHES[inputs.mode]
    latents = inputs.latents
    set_timesteps(scheduler, num_inference_steps, latents.device)
    weights = inputs.weights
    switched = False
    bar = progress(len(scheduler.timesteps)) if progress else None
    for index, t in enumerate(scheduler.timesteps):
        expert, is_high = experts.for_timestep(float(t))
        if not is_high and not switched:
            switched = True
            weights = weights.scaled(inputs.omega_scale)
            if experts.on_switch is not None:
                experts.on_switch(experts.high, expert)
        stats.high_steps += int(is_high)
        stats.low_steps += int(not is_high)
        stats.timesteps.append(int(t))
        predictions = runner(expert, inputs, branches, latents, t)
        stats.forwards += len(branches)
        predictions = [p.to(latents.device) for p in predictions]
        sigma = float(_current_sigma(scheduler, index))
        velocity = combine(inputs.mode, predictions, latents, sigma, weights, inputs.apg)
        latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
        if callback is not None:
            callback(index, int(t), latents)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return latents


def reference_flow_sigmas(num_inference_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """Unshifted UniPC flow sigmas of the reference (diffusers 0.35): ``flip(1 - linspace(1, 1/T, N+1))[:-1]``.

    Later diffusers releases start at 1.0 instead of 0.999, which moves every timestep (and the
    expert switch: 13 instead of 12 high-noise steps at shift 3), so the reference values are passed in.
    """
    alphas = np.linspace(1.0, 1.0 / num_train_timesteps, num_inference_steps + 1)
    return np.flip(1.0 - alphas)[:-1].copy()


def set_timesteps(scheduler, num_inference_steps: int, device: torch.device | str | None = None) -> None:
    """``scheduler.set_timesteps`` with the reference's flow sigmas where the scheduler takes custom sigmas."""
    config = scheduler.config
    takes_sigmas = "sigmas" in inspect.signature(scheduler.set_timesteps).parameters
    if (
        getattr(config, "use_flow_sigmas", False)
        and takes_sigmas
        and not getattr(config, "use_dynamic_shifting", False)
    ):
        sigmas = reference_flow_sigmas(num_inference_steps, config.num_train_timesteps)
        scheduler.set_timesteps(num_inference_steps, device=device, sigmas=sigmas)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device)


def _current_sigma(scheduler, index: int) -> torch.Tensor:
    step_index = getattr(scheduler, "step_index", None)
    return scheduler.sigmas[step_index if step_index is not None else index]
