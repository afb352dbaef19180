"""The denoising loop: scheduler, expert routing, the one-time omega scale and guidance.

``sample`` is written like diffusers' explicit loops. How a branch's forward is computed (one rank,
CFG-parallel over ranks, sequence-parallel inside an expert) is injected as a ``BranchRunner``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from ..models.segment import Segment
from .guidance import Branch, Combo, GuidanceMode, GuidanceState, Text, Weights
from .schedulers import set_timesteps
from .windows import Span, blend_weights, source_span

logger = logging.getLogger(__name__)

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
    scope: str = ""  # prefixes the step-cache histories (one set per context window)
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


def cache_scope(expert: Any, branches: Sequence[Branch], scope: str = ""):
    """The step-cache history a forward reads and writes: one per branch (or per batched group of branches),
    as diffusers' pipelines keep one per ``cond`` / ``uncond`` call, and per context window (``scope``). A no-op
    while no cache is enabled."""
    if not getattr(expert, "is_cache_enabled", False):
        return contextlib.nullcontext()
    return expert.cache_context(scope + "+".join(f"{b.combo.value}/{b.text.value}" for b in branches))


def run_branch(expert: Expert, inputs: SamplingInputs, branch: Branch, latents, t) -> torch.Tensor:
    """One forward: the combo's clean conditions packed before the noisy target, target velocity out."""
    context = inputs.text[branch.text]
    timestep = torch.full((latents.shape[0],), int(t), device=context.device, dtype=torch.long)
    target = latents.to(context.device, context.dtype)
    with cache_scope(expert, [branch], inputs.scope):
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
    with cache_scope(expert, group, inputs.scope):
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
class Window:
    """One context window: its latent frames, its inputs (the sources' slices, its own guidance state) and its
    blend weight per latent frame of the window."""

    span: Span
    inputs: SamplingInputs
    weight: torch.Tensor  # [stop - start], on the latents' device


class WindowedInputs:
    """Per-window views of placed :class:`SamplingInputs`: each window's target frames and the same frames of
    every source video (mapped proportionally where a source's latent length differs; one-frame latents, the
    images, whole), the same references, source ids and texts (or the window's own ``texts``: the full model's
    per-window plans), and a fresh :class:`GuidanceState` (APG momentum is per window). Each window packs and
    RoPEs like a plain run of its length: positions start at 0 with the plain run's source ids."""

    def __init__(
        self,
        inputs: SamplingInputs,
        spans: Sequence[Span],
        texts: Sequence[dict[Text, torch.Tensor]] | None = None,
    ) -> None:
        total = inputs.latents.shape[2]
        weights = blend_weights(spans, total).to(inputs.latents.device, torch.float32)
        self.windows: list[Window] = []
        for index, span in enumerate(spans):
            sliced: dict[int, torch.Tensor] = {}

            def view(latent: torch.Tensor, span: Span = span, sliced: dict = sliced) -> torch.Tensor:
                if id(latent) not in sliced:
                    frames = latent.shape[2]
                    start, stop = source_span(span, total, frames) if frames > 1 else (0, 1)
                    sliced[id(latent)] = latent[:, :, start:stop].contiguous()
                return sliced[id(latent)]

            combos = {c: [Segment(view(s.latent), s.source_id) for s in segs] for c, segs in inputs.combos.items()}
            text = dict(inputs.text)
            if texts is not None:
                device, dtype = next(iter(inputs.text.values())).device, next(iter(inputs.text.values())).dtype
                text.update({name: embeds.to(device, dtype) for name, embeds in texts[index].items()})
            state = GuidanceState(inputs.state.apg, float64=inputs.state.float64)
            noise = inputs.latents[:, :, span[0] : span[1]]
            window = replace(inputs, latents=noise, combos=combos, text=text, state=state, scope=f"w{index}:")
            self.windows.append(Window(span, window, weights[index, span[0] : span[1]]))

    @property
    def spans(self) -> list[Span]:
        return [window.span for window in self.windows]

    def __len__(self) -> int:
        return len(self.windows)


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
    windows: WindowedInputs | None = None,
) -> torch.Tensor:
    """Denoise ``inputs.latents`` and return the final latents (fp32, on the latents' device).

    ``interrupted`` is asked before every step; once it says yes the loop stops (diffusers' ``interrupt``).
    ``sigmas`` (a preset's, before the shift) replace the scheduler's spacing. With ``windows`` every step runs
    the guidance on each context window and blends the windows' velocities with their weights into one velocity
    over the whole latent; the scheduler steps once (a windowed step is one step), and a ``progress`` bar with a
    ``window(number, count)`` method is told each window as it runs.
    """
    runner = runner or BranchRunner()
    stats = stats if stats is not None else SamplingStats()
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
        sigma = float(_current_sigma(scheduler, index))
        if windows is None:
            velocity = guided_velocity(expert, inputs, runner, weights, latents, t, sigma, stats)
        else:
            velocity = torch.zeros_like(latents)
            for number, window in enumerate(windows.windows, start=1):
                logger.debug("step %d/%d: window %d/%d", index + 1, len(scheduler.timesteps), number, len(windows))
                if bar is not None and hasattr(bar, "window"):
                    bar.window(number, len(windows))
                start, stop = window.span
                part = latents[:, :, start:stop].contiguous()
                guided = guided_velocity(expert, window.inputs, runner, weights, part, t, sigma, stats)
                velocity[:, :, start:stop] += window.weight.view(1, 1, -1, 1, 1) * guided
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


def guided_velocity(
    expert: Expert,
    inputs: SamplingInputs,
    runner: BranchRunner,
    weights: Weights,
    latents: torch.Tensor,
    t,
    sigma: float,
    stats: SamplingStats,
) -> torch.Tensor:
    """One step's guided velocity for ``latents``: the mode's distinct branches through ``runner``, combined."""
    branches = inputs.mode.branches
    sources = inputs.mode.forward_plan(weights, inputs.same_inputs)
    unique = [branch for branch, source in enumerate(sources) if source == branch]
    computed = runner(expert, inputs, [branches[i] for i in unique], latents, t)
    stats.forwards += len(unique)
    by_branch = {branch: p.to(latents.device) for branch, p in zip(unique, computed, strict=True)}
    predictions = [by_branch[source] for source in sources]
    return inputs.mode.combine(predictions, latents, sigma, weights, inputs.state)


def _current_sigma(scheduler, index: int) -> torch.Tensor:
    step_index = getattr(scheduler, "step_index", None)
    return scheduler.sigmas[step_index if step_index is not None else index]
