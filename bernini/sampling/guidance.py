"""Guidance modes: which branches a step evaluates and how their predictions combine.

A branch is a :class:`Branch` ``(combo, text)``: the conditions packed beside the target (:class:`Combo`)
and the text context (:class:`Text`). A mode is declared, not coded: its branches, the media it needs,
the space it combines in (velocity, or x0 for APG) and a chain of :class:`Delta` pieces

    guided = p[base] + Σ weight · project(p[end] − p[start])

where ``project`` is the identity (CFG) or :class:`FrameAPG` (per-latent-frame APG with momentum and a
norm cap). New modes (the full Bernini's) are added with :func:`register`.

This module imports no torch at import time: the task table, the request checks and ``bernini tasks``
read the registry before anything heavy loads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    import torch

FRAME_DIMS = (1, 3, 4)  # C, H, W of [B, C, T, H, W]


class Combo(str, Enum):
    """Which encoded inputs are packed beside the target (the value is the name the sidecar records)."""

    EMPTY = "0"  # target only
    VIDEO = "V"  # the first source video
    IMAGES = "I"  # the source image and the references, on their own id axis
    ALL = "VI"  # every visual input
    VIDEOS = "Vs"  # every source video (the full model's "wvidvae")

    def __str__(self) -> str:
        return self.value


class Text(str, Enum):
    """Which text context a branch reads."""

    PROMPT = "c"
    NEGATIVE = "u"
    PLAN_FULL = "C_full"  # the full model's contexts: UMT5 + the planner's tokens (bernini.planner.contexts)
    PLAN_TEXT = "C_txt"
    PLAN_TARGET = "C_tgt"
    PLAN_NULL = "C_null"

    def __str__(self) -> str:
        return self.value


class Branch(NamedTuple):
    combo: Combo
    text: Text


@dataclass(frozen=True)
class Weights:
    """Guidance weights ω; a :class:`Delta` names the one it uses."""

    vid: float
    img: float
    txt: float
    tgt: float = 0.0  # the full model's ω_tgt

    def scaled(self, factor: float) -> Weights:
        return Weights(self.vid * factor, self.img * factor, self.txt * factor, self.tgt * factor)


@dataclass(frozen=True)
class APGSettings:
    eta: float = 0.5
    norm_threshold: tuple[float, ...] = (50.0, 50.0)
    momentum: float = 0.0


@dataclass
class GuidanceState:
    """What lives for a whole generation: the APG settings and one momentum buffer per APG delta.

    ``float64`` says whether the device has float64 (Apple MPS has not): the APG projection runs in
    float64 where it can, so CPU and CUDA results stay bit-identical, and in float32 elsewhere.
    """

    apg: APGSettings = field(default_factory=APGSettings)
    buffers: dict[int, torch.Tensor] = field(default_factory=dict)
    float64: bool = True


class Projection(Protocol):
    def __call__(self, diff: torch.Tensor, reference: torch.Tensor, state: GuidanceState) -> torch.Tensor: ...


@dataclass(frozen=True)
class FrameAPG:
    """P(d; r): momentum, per-frame norm cap, then the orthogonal part plus η times the parallel part.

    ``slot`` selects the momentum buffer and the ``norm_threshold`` entry (the last one repeats).
    """

    slot: int = 0
    settings: APGSettings | None = None  # fixed settings of a mode; None: the generation's

    def __call__(self, diff: torch.Tensor, reference: torch.Tensor, state: GuidanceState) -> torch.Tensor:
        settings = self.settings or state.apg
        if settings.momentum:
            running = state.buffers.get(self.slot)
            diff = diff if running is None else diff + settings.momentum * running
            state.buffers[self.slot] = diff
        thresholds = settings.norm_threshold
        threshold = thresholds[self.slot] if self.slot < len(thresholds) else thresholds[-1]
        if threshold > 0:
            norm = diff.norm(p=2, dim=FRAME_DIMS, keepdim=True)
            diff = diff * (threshold / norm).clamp(max=1.0)
        dtype = diff.dtype
        if state.float64:
            diff, reference = diff.double(), reference.double()
        else:
            diff, reference = diff.float(), reference.float()
        unit = reference / reference.norm(p=2, dim=FRAME_DIMS, keepdim=True).clamp_min(1e-12)
        parallel = (diff * unit).sum(dim=FRAME_DIMS, keepdim=True) * unit
        return (diff - parallel + settings.eta * parallel).to(dtype)


@dataclass(frozen=True)
class FlatAPG:
    """The full model's A(Δ, r) = ``parallel``·Δ∥ + Δ⊥ over each sample's flattened tensor (no momentum, no cap),
    with Δ∥ = (⟨Δ, r⟩ / max(⟨r, r⟩, 1e-8))·r."""

    parallel: float = 0.2

    def __call__(self, diff: torch.Tensor, reference: torch.Tensor, state: GuidanceState) -> torch.Tensor:
        dims = tuple(range(1, diff.dim()))
        dot = (diff * reference).sum(dim=dims, keepdim=True)
        norm = (reference * reference).sum(dim=dims, keepdim=True).clamp_min(1e-8)
        along = dot / norm * reference
        return diff - along + self.parallel * along


@dataclass(frozen=True)
class Delta:
    """One guidance term: ``weight · project(p[end] − p[start])``, referenced to ``p[end]``."""

    start: int
    end: int
    weight: str  # a field of Weights
    project: Projection | None = None


class MediaNeed(Enum):
    """What a mode's branches read beyond the target; ``describe`` is how an error names it."""

    NOTHING = "nothing"
    ANY_VISUAL = "a video or an image"
    VIDEO = "a video"
    REFERENCES = "reference images"
    VIDEO_AND_REFERENCES = "a video and a reference image"

    def met_by(self, videos: int, references: int) -> bool:
        return {
            MediaNeed.NOTHING: True,
            MediaNeed.ANY_VISUAL: videos + references > 0,
            MediaNeed.VIDEO: videos > 0,
            MediaNeed.REFERENCES: references > 0,
            MediaNeed.VIDEO_AND_REFERENCES: videos > 0 and references > 0,
        }[self]


@dataclass(frozen=True)
class GuidanceMode:
    name: str
    branches: tuple[Branch, ...]
    deltas: tuple[Delta, ...]
    base: int = 0
    x0_space: bool = False  # APG works on x0 = x − σ·v
    needs: MediaNeed = MediaNeed.NOTHING
    description: str = ""
    skips_zero_weights: bool = False  # a delta with ω = 0 reuses its start's prediction (the full model's rule)

    @property
    def forwards_per_step(self) -> int:
        return len(self.branches)

    def forward_plan(self, weights: Weights, same: Callable[[Branch, Branch], bool]) -> list[int]:
        """For each branch, the branch whose forward it takes: itself when it must run.

        A branch reuses an earlier one when ``same`` says their inputs are identical (one forward per
        distinct branch), or, for modes that skip zero weights, when it ends a delta whose weight is 0.
        """
        source = list(range(len(self.branches)))
        ends = {delta.end: delta for delta in self.deltas}
        for index, branch in enumerate(self.branches):
            delta = ends.get(index)
            if self.skips_zero_weights and delta is not None and getattr(weights, delta.weight) == 0:
                source[index] = source[delta.start]
                continue
            earlier = next((j for j in range(index) if source[j] == j and same(self.branches[j], branch)), None)
            if earlier is not None:
                source[index] = earlier
        return source

    def combine(
        self,
        predictions: Sequence[torch.Tensor],
        latents: torch.Tensor,
        sigma: float,
        weights: Weights,
        state: GuidanceState,
    ) -> torch.Tensor:
        """The guided velocity from the branch predictions (in the order of :attr:`branches`)."""
        if len(predictions) != len(self.branches):
            raise ValueError(f"{self.name} takes {len(self.branches)} predictions, got {len(predictions)}")
        values = [latents - sigma * v for v in predictions] if self.x0_space else list(predictions)
        guided = values[self.base]
        for delta in self.deltas:
            diff = values[delta.end] - values[delta.start]
            if delta.project is not None:
                diff = delta.project(diff, values[delta.end], state)
            guided = guided + getattr(weights, delta.weight) * diff
        return (latents - guided) / sigma if self.x0_space else guided


def _branches(*pairs: str) -> tuple[Branch, ...]:
    """``"VI/u"`` → ``Branch(Combo.ALL, Text.NEGATIVE)``."""
    out = []
    for pair in pairs:
        combo, text = pair.split("/")
        out.append(Branch(Combo(combo), Text(text)))
    return tuple(out)


GUIDANCE_MODES: dict[str, GuidanceMode] = {}
"""Bernini-R's modes (the renderer alone)."""
FULL_MODEL_MODES: dict[str, GuidanceMode] = {}
"""The full model's modes, whose branches read the planner's contexts (spec bernini-full.md §4.5)."""


def register(mode: GuidanceMode, registry: dict[str, GuidanceMode] | None = None) -> GuidanceMode:
    registry = GUIDANCE_MODES if registry is None else registry
    if mode.name in registry:
        raise ValueError(f"guidance mode {mode.name!r} is already registered")
    for delta in mode.deltas:
        if delta.weight not in Weights.__dataclass_fields__:
            raise ValueError(f"{mode.name}: unknown weight {delta.weight!r}")
    registry[mode.name] = mode
    return mode


def text_cfg(name: str, combo: str, needs: MediaNeed, description: str) -> GuidanceMode:
    """Plain text CFG with ω_txt over a fixed set of conditions."""
    branches = _branches(f"{combo}/u", f"{combo}/c")
    return GuidanceMode(name, branches, (Delta(0, 1, "txt"),), needs=needs, description=description)


def text_apg(name: str, combo: str, needs: MediaNeed, description: str) -> GuidanceMode:
    """Text guidance through one APG projection (x0 space)."""
    mode = text_cfg(name, combo, needs, description)
    return replace(mode, deltas=(Delta(0, 1, "txt", FrameAPG(0)),), x0_space=True)


register(
    GuidanceMode(
        "rv2v",
        _branches("0/u", "V/u", "VI/u", "VI/c"),
        (Delta(0, 1, "vid"), Delta(1, 2, "img"), Delta(2, 3, "txt")),
        needs=MediaNeed.VIDEO_AND_REFERENCES,
        description="chained CFG: video, then images, then text",
    )
)
register(text_cfg("v2v", "VI", MediaNeed.ANY_VISUAL, "text CFG with every visual input in both branches"))
register(
    GuidanceMode(
        "v2v_chain",
        _branches("0/u", "V/u", "VI/c"),
        (Delta(0, 1, "vid"), Delta(1, 2, "txt")),
        needs=MediaNeed.VIDEO,
        description="chained CFG: video, then text with the images",
    )
)
register(text_cfg("t2v", "0", MediaNeed.NOTHING, "text CFG, target only"))
register(text_apg("t2v_apg", "0", MediaNeed.NOTHING, "text APG, target only"))
register(text_apg("v2v_apg", "VI", MediaNeed.ANY_VISUAL, "text APG with every visual input in both branches"))
register(
    GuidanceMode(
        "r2v_apg",
        _branches("0/u", "I/u", "I/c"),
        (Delta(0, 1, "img", FrameAPG(0)), Delta(1, 2, "txt", FrameAPG(1))),
        x0_space=True,
        needs=MediaNeed.REFERENCES,
        description="chained APG: reference images, then text",
    )
)

register(
    GuidanceMode(
        "none",
        _branches("VI/c"),
        (),
        description="no guidance: one forward with every condition and the prompt (distilled models, --preset)",
    )
)


def _planner_chain(name: str, project: bool, description: str) -> GuidanceMode:
    """b = ε(∅, C_null), e_I = ε(all, C_null), e_T = ε(all, C_txt), e_C = ε(all, C_full);
    v = b + ω_img·P(e_I − b) + ω_txt·P(e_T − e_I) + ω_tgt·P(e_C − e_T)."""
    apg = FlatAPG() if project else None
    return GuidanceMode(
        name,
        _branches("0/C_null", "VI/C_null", "VI/C_txt", "VI/C_full"),
        (Delta(0, 1, "img", apg), Delta(1, 2, "txt", apg), Delta(2, 3, "tgt", apg)),
        skips_zero_weights=True,
        description=description,
    )


register(
    _planner_chain("vae_txt_vit_wapg", True, "planner chain with A(Δ, r) = 0.2Δ∥ + Δ⊥ (shipped)"), FULL_MODEL_MODES
)
register(_planner_chain("vae_txt_vit", False, "planner chain, plain CFG deltas"), FULL_MODEL_MODES)
register(
    GuidanceMode(
        "rv2v_wapg",
        _branches("0/C_null", "Vs/C_null", "VI/C_null", "VI/C_txt", "VI/C_full"),
        (Delta(0, 1, "vid"), Delta(1, 2, "img"), Delta(2, 3, "txt"), Delta(3, 4, "tgt")),
        skips_zero_weights=True,
        needs=MediaNeed.VIDEO,
        description="videos, then images, text and plan; no projection despite the name (as the reference)",
    ),
    FULL_MODEL_MODES,
)
register(
    GuidanceMode(
        "v2v_apg",
        _branches("0/C_null", "VI/C_full"),
        (Delta(0, 1, "txt", FrameAPG(0, APGSettings(eta=1.0, norm_threshold=(50.0, 50.0), momentum=0.0))),),
        x0_space=True,
        description="x0-space APG between the full planner context and the null one (η 1, cap 50)",
    ),
    FULL_MODEL_MODES,
)


MODE_NAMES: tuple[str, ...] = tuple(dict.fromkeys([*GUIDANCE_MODES, *FULL_MODEL_MODES]))
"""Every mode name either model accepts (the plan checks which one the loaded model runs)."""


def forwards_per_step() -> Mapping[str, int]:
    return {name: mode.forwards_per_step for name, mode in GUIDANCE_MODES.items()}
