"""What a request resolves to: immutable, explicit values that every stage after resolution reads.

:func:`bernini.resolve.resolve_request` builds a :class:`ResolvedRequest`; what the loaded model decides
(the scheduler, the source-id policy) may be left open and is filled by
:func:`bernini.resolve.with_model_defaults` from the model's config.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .adjustments import Adjustment
from .request import GenerationRequest, describe_media
from .sampling.guidance import APGSettings, GuidanceMode, Weights
from .sampling.presets import CacheSettings
from .tasks import TaskSpec
from .text import clean_prompt, t5_text

MAX_LATENT_POSITIONS = 1024
SCHEDULERS = ("unipc", "flow_match_euler")


@dataclass(frozen=True)
class SourceIdPolicy:
    """How conditions get their RoPE source ids (spec §1.4)."""

    enabled: bool = True
    interpolate: bool = True
    max_trained: int = 5

    def ids(self, count: int) -> list[float]:
        from .models.rope import assign_source_ids

        if not self.enabled:
            return [0.0] * count
        return assign_source_ids(count, self.interpolate, self.max_trained)


@dataclass(frozen=True)
class SourceIdChoice:
    """The source-id flags as the request gave them (None: the model's default)."""

    enabled: bool | None = None
    interpolate: bool | None = None
    max_trained: int | None = None

    def resolve(self, default: SourceIdPolicy) -> SourceIdPolicy:
        return SourceIdPolicy(
            enabled=default.enabled if self.enabled is None else self.enabled,
            interpolate=default.interpolate if self.interpolate is None else self.interpolate,
            max_trained=default.max_trained if self.max_trained is None else self.max_trained,
        )


@dataclass(frozen=True)
class ModelDefaults:
    """What a bundle's ``config.json`` sets when the request leaves it open; ``planner_version`` (``v1`` /
    ``v2``) marks the full Bernini model, whose shipped per-task settings then fill the request."""

    scheduler: str = "unipc"
    source_ids: SourceIdPolicy = field(default_factory=SourceIdPolicy)
    planner_version: str | None = None

    @property
    def model_kind(self) -> str:
        return f"full {self.planner_version}" if self.planner_version else "bernini-r"

    @classmethod
    def from_renderer_config(cls, config, planner_version: str | None = None) -> ModelDefaults:
        """From a :class:`~bernini.loaders.config.RendererConfig` (``use_unipc`` and the source-id keys)."""
        policy = SourceIdPolicy(config.use_src_id_rotary_emb, config.interpolate_src_id, config.max_trained_src_id)
        return cls("unipc" if config.use_unipc else "flow_match_euler", policy, planner_version)


@dataclass(frozen=True)
class MediaInputs:
    video: tuple[Any, ...] = ()
    image: Any = None
    images: tuple[Any, ...] = ()
    fps: float = 16.0
    video_fps: float | None = None
    max_image_size: int = 848

    @property
    def references(self) -> int:
        return (self.image is not None) + len(self.images)


@dataclass(frozen=True)
class Geometry:
    """The target asked for. For Bernini-R a source video or image sets the size instead (see the conditions
    stage); the full model, as its reference, renders at a positive ``height × width`` and follows the source at
    0 × 0 (``fixed_size``)."""

    frames: int
    height: int
    width: int
    fixed_size: bool = False
    shipped: tuple[str, ...] = ()  # the sides (height, width) the full model's shipped settings set, not the user


@dataclass(frozen=True)
class ExtendSettings:
    """``--extend``: the ``clip`` continued; its last ``keep`` frames (4k+1) start the rendered frames, held to the
    clip at every step, and ``new`` frames (a multiple of 4) follow them. The geometry renders ``keep + new``."""

    clip: Any
    keep: int
    new: int


@dataclass(frozen=True)
class GuidanceSettings:
    mode: GuidanceMode
    weights: Weights
    omega_scale: float
    apg: APGSettings


@dataclass(frozen=True)
class PlanningSettings:
    """The full model's planner settings (``--planning_step``, ``--vit_denoising_step``, ``--vit_txt_cfg``,
    ``--vit_img_cfg``); ``version`` is None when the model is Bernini-R (then nothing reads them)."""

    planning_steps: int
    vit_steps: int
    text_scale: float
    image_scale: float | None
    version: str | None = None


@dataclass(frozen=True)
class SchedulerChoice:
    """``name`` is ``unipc``, ``flow_match_euler`` or None (the model's default); ``sigmas`` (before the
    shift) replace the scheduler's own spacing when a preset pins them."""

    name: str | None
    flow_shift: float
    sigmas: tuple[float, ...] | None = None


@dataclass(frozen=True)
class WindowSettings:
    """Context windows for long video (``--window_frames``, ``--window_overlap``), in pixel frames: ``frames`` is
    4k+1, ``overlap`` a multiple of 4 below ``frames - 1``. None on a :class:`ResolvedRequest`: one window over the
    whole clip (the plain run)."""

    frames: int
    overlap: int


@dataclass(frozen=True)
class ResolvedRequest:
    task: TaskSpec
    prompt: str
    negative_prompt: str
    system_prompt: str
    media: MediaInputs
    geometry: Geometry
    guidance: GuidanceSettings
    scheduler: SchedulerChoice
    source_id_choice: SourceIdChoice
    seed: int
    num_inference_steps: int
    output: str | None = None
    use_pe: bool = False
    pe_model: str | None = None
    source_ids: SourceIdPolicy | None = None  # set by with_model_defaults
    preset: str | None = None
    cache: CacheSettings | None = None
    batch_branches: bool = False
    windows: WindowSettings | None = None
    adjustments: tuple[Adjustment, ...] = ()  # what resolve_request changed from the request
    planner: PlanningSettings = field(default_factory=lambda: PlanningSettings(25, 5, 1.2, 1.0))
    extend: ExtendSettings | None = None
    for_model: str | None = None  # the ModelDefaults.model_kind it was planned for (None: not known yet)
    request: GenerationRequest | None = field(default=None, compare=False, repr=False)

    @property
    def t5_text(self) -> str:
        """The exact positive text UMT5 sees: the task's prefix (or the system prompt) glued to the prompt."""
        return t5_text(self.prompt, self.task.name, self.system_prompt)

    @property
    def t5_negative_text(self) -> str:
        """The exact negative text UMT5 sees: as given for Bernini-R; cleaned like the prompt for the full model
        (its pipeline cleans it; ftfy turns the default's full-width commas into ASCII ones)."""
        return clean_prompt(self.negative_prompt) if self.full_model else self.negative_prompt

    def with_prompt(self, prompt: str) -> ResolvedRequest:
        return replace(self, prompt=prompt)

    def with_output(self, output: str | None) -> ResolvedRequest:
        return replace(self, output=output)

    @property
    def filled(self) -> bool:
        return self.scheduler.name is not None and self.source_ids is not None

    @property
    def full_model(self) -> bool:
        return self.planner.version is not None

    def request_record(self) -> dict[str, Any]:
        """The request as the sidecar records it: every :class:`GenerationRequest` field, resolved."""
        policy = self.source_ids or SourceIdPolicy()
        values = {
            "prompt": self.prompt,
            "task_type": self.task.name,
            "guidance_mode": self.guidance.mode.name,
            "video": [describe_media(v) for v in self.media.video],
            "image": describe_media(self.media.image) if self.media.image is not None else None,
            "images": [describe_media(v) for v in self.media.images],
            "extend": describe_media(self.extend.clip) if self.extend else None,
            "output": self.output,
            "seed": self.seed,
            "num_frames": self.extend.new if self.extend else self.geometry.frames,
            "num_inference_steps": self.num_inference_steps,
            "flow_shift": self.scheduler.flow_shift,
            "omega_vid": self.guidance.weights.vid,
            "omega_img": self.guidance.weights.img,
            "omega_txt": self.guidance.weights.txt,
            "omega_scale": self.guidance.omega_scale,
            "omega_tgt": self.guidance.weights.tgt,
            "planning_step": self.planner.planning_steps,
            "vit_txt_cfg": self.planner.text_scale,
            "vit_img_cfg": self.planner.image_scale,
            "vit_denoising_step": self.planner.vit_steps,
            "eta": self.guidance.apg.eta,
            "norm_threshold": list(self.guidance.apg.norm_threshold),
            "momentum": self.guidance.apg.momentum,
            "fps": self.media.fps,
            "video_fps": self.media.video_fps,
            "max_image_size": self.media.max_image_size,
            "height": self.geometry.height,
            "width": self.geometry.width,
            "neg_prompt": self.negative_prompt,
            "system_prompt": self.system_prompt,
            "use_unipc": self.scheduler.name == "unipc",
            "use_src_tgt_id": policy.enabled,
            "interpolate_src_id": policy.interpolate,
            "max_trained_src_id": policy.max_trained,
            "use_pe": self.use_pe,
            "pe_model": self.pe_model,
            "preset": self.preset,
            "cache": self.cache.kind if self.cache else None,
            "cache_threshold": self.cache.threshold if self.cache else None,
            "cache_calibration": self.cache.calibration if self.cache else None,
            "batch_branches": self.batch_branches,
            "window_frames": self.windows.frames if self.windows else None,
            "window_overlap": self.windows.overlap if self.windows else GenerationRequest.window_overlap,
        }
        return {name: values[name] for name in GenerationRequest.field_names()}
