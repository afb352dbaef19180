"""The denoising loop: scheduler, expert routing, the one-time omega scale and guidance.

``sample`` is written like diffusers' explicit loops. How a branch's forward is computed (one rank,
CFG-parallel over ranks, sequence-parallel inside an expert) is injected as a ``BranchRunner``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from ..models.segment import Segment
from .guidance import Branch, Combo, GuidanceMode, GuidanceState, Text, Weights
from .schedulers import set_timesteps

StepCallback = Callable[[int, int, torch.Tensor], "torch.Tensor | None"]
"""Called after each step with (index, timestep, latents); a returned tensor replaces the latents."""


class Expert(Protocol):
    """What the loop needs of a renderer expert (see :class:`bernini.models.transformer.BerniniTransformer`)."""

    execution_device: torch.device

    def forward_packed(
        self, conditions: Sequence[Segment], target: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor: ...


@dataclass
class Experts:
    """The high-noise expert until ``boundary`` (integer timestep), then the low-noise one."""

    high: Any
    low: Any = None
    boundary: float = 875.0
    on_switch: Callable[[Any, Any], None] | None = None

    @property
    def switches(self) -> bool:
        """Whether a second expert takes over below the boundary (the 1.3B single expert never does)."""
        return self.low is not None and self.boundary > 0

    def for_timestep(self, t: float) -> tuple[Any, bool]:
        """The expert for timestep ``t`` and whether it is the high-noise one."""
        if not self.switches or t >= self.boundary:
            return self.high, True
        return self.low, False


@dataclass(frozen=True)
class PinnedFrames:
    """The first latent frames held to known clean latents (``--extend``: the clip's last frames). Before the first
    step and after every step they are replaced by ``clean`` re-noised to the scheduler's next sigma with the run's
    own seeded ``noise`` of those frames, ``x_sigma = (1 - sigma) * x0 + sigma * noise`` (flow matching), so the
    model denoises the other frames as a continuation of them."""

    clean: torch.Tensor  # [1, C, k, H, W], fp32, on the latents' device
    noise: torch.Tensor  # the same frames of the run's initial noise

    def apply(self, latents: torch.Tensor, sigma: float) -> torch.Tensor:
        out = latents.clone()
        out[:, :, : self.clean.shape[2]] = (1.0 - sigma) * self.clean + sigma * self.noise
        return out


@dataclass
class SamplingInputs:
    """Everything the loop reads; condition latents and texts already sit where the forwards run."""

    latents: torch.Tensor  # initial noise [1, C, T, H, W], fp32
    combos: dict[Combo, list[Segment]]
    text: dict[Text, torch.Tensor]  # [1, L, dim]
    mode: GuidanceMode
    weights: Weights
    omega_scale: float
    state: GuidanceState = field(default_factory=GuidanceState)
    pinned: PinnedFrames | None = None

    def same_inputs(self, first: Branch, second: Branch) -> bool:
        """Whether two branches feed the expert identical tensors (then one forward serves both)."""
        if first.text != second.text:
            one_text, two_text = self.text.get(first.text), self.text.get(second.text)
            if one_text is None or one_text is not two_text:
                return False
        one, two = self.combos[first.combo], self.combos[second.combo]
        return len(one) == len(two) and all(
            a.latent is b.latent and a.source_id == b.source_id for a, b in zip(one, two, strict=True)
        )

    def placed(self, device: torch.device, dtype: torch.dtype) -> SamplingInputs:
        """Condition latents and text embeddings moved and cast once for the whole generation (a latent in
        several combos is cast once and shared)."""
        placed: dict[int, torch.Tensor] = {}

        def place(latent: torch.Tensor) -> torch.Tensor:
            if id(latent) not in placed:
                placed[id(latent)] = latent.to(device, dtype)
            return placed[id(latent)]

        combos = {
            combo: [Segment(place(s.latent), s.source_id) for s in segments] for combo, segments in self.combos.items()
        }
        text = {name: embeds.to(device, dtype) for name, embeds in self.text.items()}
        return replace(self, combos=combos, text=text)


def cache_scope(expert: Any, branches: Sequence[Branch]):
    """The step-cache history a forward reads and writes: one per branch (or per batched group of branches),
    as diffusers' pipelines keep one per ``cond`` / ``uncond`` call. A no-op while no cache is enabled."""
    if not getattr(expert, "is_cache_enabled", False):
        return contextlib.nullcontext()
    return expert.cache_context("+".join(f"{b.combo.value}/{b.text.value}" for b in branches))


def run_branch(expert: Expert, inputs: SamplingInputs, branch: Branch, latents, t) -> torch.Tensor:
    """One forward: the combo's clean conditions packed before the noisy target, target velocity out."""
    context = inputs.text[branch.text]
    timestep = torch.full((latents.shape[0],), int(t), device=context.device, dtype=torch.long)
    target = latents.to(context.device, context.dtype)
    with cache_scope(expert, [branch]):
        return expert.forward_packed(inputs.combos[branch.combo], target, timestep, context).float()


def layout_key(inputs: SamplingInputs, branch: Branch) -> tuple:
    """Branches with the same key pack to the same token layout (segment shapes and RoPE source ids) and read
    contexts of one length (the full model's contexts may be longer than 512 rows, each its own)."""
    segments = tuple((tuple(s.latent.shape), s.source_id) for s in inputs.combos[branch.combo])
    return (*segments, tuple(inputs.text[branch.text].shape))


def run_batched(expert: Expert, inputs: SamplingInputs, group: Sequence[Branch], latents, t) -> list[torch.Tensor]:
    """The branches of ``group`` (one token layout) as one forward with the branches stacked on the batch."""
    contexts = [inputs.text[b.text] for b in group]
    context = torch.cat(contexts)
    segments = [
        Segment(
            torch.cat([inputs.combos[b.combo][i].latent for b in group]), inputs.combos[group[0].combo][i].source_id
        )
        for i in range(len(inputs.combos[group[0].combo]))
    ]
    target = latents.to(context.device, context.dtype)
    target = target.expand(len(group), *target.shape[1:])
    timestep = torch.full((target.shape[0],), int(t), device=context.device, dtype=torch.long)
    with cache_scope(expert, group):
        out = expert.forward_packed(segments, target, timestep, context).float()
    return list(out.split(latents.shape[0]))


class BranchRunner:
    """Evaluates the branches of a step one after another on this process."""

    def __call__(
        self, expert: Expert, inputs: SamplingInputs, branches: Sequence[Branch], latents, t
    ) -> list[torch.Tensor]:
        return [run_branch(expert, inputs, branch, latents, t) for branch in branches]


class BatchedBranchRunner(BranchRunner):
    """Branches with the same packed layout run as one batched forward (text CFG's two branches, for one).

    ``fits(batch, tokens)`` says whether a forward of ``batch`` samples of ``tokens`` tokens fits in memory;
    groups that do not fit, and branches alone in their layout, run one by one."""

    def __init__(self, fits: Callable[[int, int], bool] | None = None) -> None:
        self.fits = fits or (lambda batch, tokens: True)
        self.batched_calls = 0

    def __call__(
        self, expert: Expert, inputs: SamplingInputs, branches: Sequence[Branch], latents, t
    ) -> list[torch.Tensor]:
        groups: dict[tuple, list[int]] = {}
        for index, branch in enumerate(branches):
            groups.setdefault(layout_key(inputs, branch), []).append(index)
        out: list[torch.Tensor | None] = [None] * len(branches)
        for indices in groups.values():
            tokens = sum(s.latent[0].numel() for s in inputs.combos[branches[indices[0]].combo]) + latents[0].numel()
            if len(indices) > 1 and self.fits(len(indices), tokens):
                self.batched_calls += 1
                predictions = run_batched(expert, inputs, [branches[i] for i in indices], latents, t)
            else:
                predictions = [run_branch(expert, inputs, branches[i], latents, t) for i in indices]
            for i, prediction in zip(indices, predictions, strict=True):
                out[i] = prediction
        return out  # type: ignore[return-value]


@dataclass
class SamplingStats:
    forwards: int = 0
    high_steps: int = 0
    low_steps: int = 0
    timesteps: list[int] = field(default_factory=list)
    interrupted: bool = False
    skipped_forwards: int = 0
    batched_forwards: int = 0


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
    interrupted: Callable[[], bool] | None = None,
    sigmas: Sequence[float] | None = None,
) -> torch.Tensor:
    """Denoise ``inputs.latents`` and return the final latents (fp32, on the latents' device).

    ``interrupted`` is asked before every step; once it says yes the loop stops (diffusers' ``interrupt``).
    ``sigmas`` (a preset's, before the shift) replace the scheduler's spacing.
    """
    runner = runner or BranchRunner()
    stats = stats if stats is not None else SamplingStats()
    branches = inputs.mode.branches
    latents = inputs.latents
    set_timesteps(scheduler, num_inference_steps, latents.device, sigmas)
    weights = inputs.weights
    pinned = inputs.pinned
    if pinned is not None:
        latents = pinned.apply(latents, float(scheduler.sigmas[0]))
    switched = False
    bar = progress(len(scheduler.timesteps)) if progress else None
    for index, t in enumerate(scheduler.timesteps):
        if interrupted is not None and interrupted():
            stats.interrupted = True
            break
        expert, is_high = experts.for_timestep(float(t))
        if not is_high and not switched:
            switched = True
            weights = weights.scaled(inputs.omega_scale)
            if experts.on_switch is not None:
                experts.on_switch(experts.high, expert)
        stats.high_steps += int(is_high)
        stats.low_steps += int(not is_high)
        stats.timesteps.append(int(t))
        sources = inputs.mode.forward_plan(weights, inputs.same_inputs)
        unique = [branch for branch, source in enumerate(sources) if source == branch]
        computed = runner(expert, inputs, [branches[i] for i in unique], latents, t)
        stats.forwards += len(unique)
        by_branch = {branch: p.to(latents.device) for branch, p in zip(unique, computed, strict=True)}
        predictions = [by_branch[source] for source in sources]
        sigma = float(_current_sigma(scheduler, index))
        velocity = inputs.mode.combine(predictions, latents, sigma, weights, inputs.state)
        latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
        if pinned is not None:
            latents = pinned.apply(latents, float(scheduler.sigmas[index + 1]))
        if callback is not None:
            replaced = callback(index, int(t), latents)
            if replaced is not None:
                latents = replaced
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return latents


def _current_sigma(scheduler, index: int) -> torch.Tensor:
    step_index = getattr(scheduler, "step_index", None)
    return scheduler.sigmas[step_index if step_index is not None else index]
