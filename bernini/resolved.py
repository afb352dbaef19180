"""What a request resolves to: immutable, explicit values that every stage after resolution reads.

:func:`bernini.resolve.resolve_request` builds a :class:`ResolvedRequest`; what the loaded model decides
(the scheduler, the source-id policy) may be left open and is filled by
:func:`bernini.resolve.with_model_defaults` from the model's config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .adjustments import Adjustment
from .errors import BerniniError
from .request import GenerationRequest, describe_media
from .sampling.guidance import FULL_MODEL_MODES, GUIDANCE_MODES, APGSettings, GuidanceMode, Weights
from .sampling.presets import CacheSettings
from .settings import Setting, spec_of
from .tasks import TASKS, TaskSpec
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

    @property
    def asked_frames(self) -> int:
        """The frames the request's ``num_frames`` stands for: the new frames of an extension, else the target's."""
        return self.extend.new if self.extend is not None else self.geometry.frames

    @property
    def uses_unipc(self) -> bool:
        return self.scheduler.name == "unipc"

    @property
    def source_id_policy(self) -> SourceIdPolicy:
        """The source-id policy that runs (upstream's until the model's defaults fill it)."""
        return self.source_ids or SourceIdPolicy()

    def request_record(self) -> dict[str, Any]:
        """The request as the sidecar records it: every :class:`GenerationRequest` setting as it ran, read from where
        its declaration says it lives (:attr:`~bernini.settings.Setting.resolved`)."""
        return {
            f.name: _recorded(spec_of(f), _at(self, spec_of(f).resolved or f.name))
            for f in GenerationRequest.settings()
        }

    def to_json(self) -> dict[str, Any]:
        """The resolved request as JSON (media must be paths), read back by :meth:`from_json` without resolving it
        again: the service stores it with a job at submit and its worker runs it."""
        media = self.media
        for item in (*media.video, *media.images, *([media.image] if media.image is not None else [])):
            if not isinstance(item, (str, Path)):
                raise BerniniError(f"a resolved request with in-memory media ({describe_media(item)}) is not JSON")
        request = self.request
        return {
            "task": self.task.name,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "system_prompt": self.system_prompt,
            "media": {
                **asdict(media),
                "video": [str(v) for v in media.video],
                "images": [str(v) for v in media.images],
                "image": None if media.image is None else str(media.image),
            },
            "geometry": asdict(self.geometry),
            "guidance": {
                "mode": self.guidance.mode.name,
                "weights": asdict(self.guidance.weights),
                "omega_scale": self.guidance.omega_scale,
                "apg": asdict(self.guidance.apg),
            },
            "scheduler": asdict(self.scheduler),
            "source_id_choice": asdict(self.source_id_choice),
            "seed": self.seed,
            "num_inference_steps": self.num_inference_steps,
            "output": self.output,
            "use_pe": self.use_pe,
            "pe_model": self.pe_model,
            "source_ids": asdict(self.source_ids) if self.source_ids is not None else None,
            "preset": self.preset,
            "cache": asdict(self.cache) if self.cache is not None else None,
            "batch_branches": self.batch_branches,
            "windows": asdict(self.windows) if self.windows is not None else None,
            "extend": None if self.extend is None else {**asdict(self.extend), "clip": str(self.extend.clip)},
            "adjustments": [a.record() for a in self.adjustments],
            "planner": asdict(self.planner),
            "for_model": self.for_model,
            "request": None if request is None else {"values": _plain(request.values()), "case": _plain(request.case)},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResolvedRequest:
        """:meth:`to_json` read back."""
        planner = PlanningSettings(**data["planner"])
        media = data["media"]
        guidance = data["guidance"]
        registry = FULL_MODEL_MODES if planner.version is not None else {**FULL_MODEL_MODES, **GUIDANCE_MODES}
        scheduler = data["scheduler"]
        cache = data["cache"]
        if cache is not None:
            cache = CacheSettings(**{k: _tuples(v) if k in ("ratios", "coefficients") else v for k, v in cache.items()})
        request = data.get("request")
        geometry = data["geometry"]
        return cls(
            task=TASKS[data["task"]],
            prompt=data["prompt"],
            negative_prompt=data["negative_prompt"],
            system_prompt=data["system_prompt"],
            media=MediaInputs(**{**media, "video": tuple(media["video"]), "images": tuple(media["images"])}),
            geometry=Geometry(**{**geometry, "shipped": tuple(geometry["shipped"])}),
            guidance=GuidanceSettings(
                registry[guidance["mode"]],
                Weights(**guidance["weights"]),
                guidance["omega_scale"],
                APGSettings(**{**guidance["apg"], "norm_threshold": tuple(guidance["apg"]["norm_threshold"])}),
            ),
            scheduler=SchedulerChoice(**{**scheduler, "sigmas": _tuples(scheduler["sigmas"])}),
            source_id_choice=SourceIdChoice(**data["source_id_choice"]),
            seed=data["seed"],
            num_inference_steps=data["num_inference_steps"],
            output=data["output"],
            use_pe=data["use_pe"],
            pe_model=data["pe_model"],
            source_ids=SourceIdPolicy(**data["source_ids"]) if data["source_ids"] is not None else None,
            preset=data["preset"],
            cache=cache,
            batch_branches=data["batch_branches"],
            windows=WindowSettings(**data["windows"]) if data.get("windows") is not None else None,
            extend=ExtendSettings(**data["extend"]) if data.get("extend") is not None else None,
            adjustments=tuple(Adjustment(**a) for a in data["adjustments"]),
            planner=planner,
            for_model=data["for_model"],
            request=None if request is None else GenerationRequest(**request["values"], case=request["case"]),
        )


def _at(resolved: ResolvedRequest, path: str) -> Any:
    """The value at a dotted attribute path (None past a part that is None, e.g. ``cache.kind`` without a cache)."""
    value: Any = resolved
    for part in path.split("."):
        if value is None:
            return None
        value = getattr(value, part)
    return value


def _recorded(spec: Setting, value: Any) -> Any:
    if spec.media:
        return (
            [describe_media(v) for v in value]
            if isinstance(value, tuple)
            else (None if value is None else describe_media(value))
        )
    return list(value) if isinstance(value, tuple) else value


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples the frozen settings hold (nested for MagCache's ratios)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """Request values for JSON: media paths as strings."""
    return {
        k: [str(v) for v in value]
        if isinstance(value, (list, tuple)) and k in ("video", "images")
        else (str(value) if k == "image" and value is not None else value)
        for k, value in values.items()
    }
