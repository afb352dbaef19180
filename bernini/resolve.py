"""Resolution: a request validated once into a :class:`~bernini.resolved.ResolvedRequest`.

:func:`resolve_request` is the one place a :class:`~bernini.request.GenerationRequest` is checked: the task
and its media rules, the guidance mode and what it needs, numbers and their ranges, frame snapping. Its
settings' values come from one merge of the layers (:func:`bernini.settings.merge_layers`: built-in < shipped
preset < case file < user); the notes of what yielded to what come from :func:`_merge` and :func:`_over_preset`.
Everything after it (conditions, text, sampler, output) reads the resolved request and never re-validates.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any

from .adjustments import Adjustment, changed
from .checks import as_float, as_int, check_range
from .errors import BerniniError
from .long_video import EXTEND_OVERLAP, resolve_extend, resolve_windows
from .request import GenerationRequest
from .resolved import (
    MAX_LATENT_POSITIONS,
    Geometry,
    GuidanceSettings,
    MediaInputs,
    ModelDefaults,
    PlanningSettings,
    ResolvedRequest,
    SchedulerChoice,
    SourceIdChoice,
)
from .sampling.cachefile import read_calibration
from .sampling.full_presets import full_preset
from .sampling.guidance import FULL_MODEL_MODES, GUIDANCE_MODES, MODE_NAMES, APGSettings, Weights
from .sampling.presets import CACHES, PRESETS, CacheSettings, Preset
from .settings import Layer, Merged
from .tasks import TASKS, TaskSpec


def infer_task_type(request: GenerationRequest) -> str:
    """Pick the task from the media given, for requests that name none."""
    video = _videos(request.video)
    images = _as_list(request.images)
    refs = (request.image is not None) + len(images)
    if len(video) >= 2:
        return "ads2v"
    if video:
        return "rv2v" if refs else "v2v"
    if images:
        return "r2v"
    if request.image is not None:
        return "i2i"
    return "t2v"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, Path)) or not isinstance(value, (list, tuple)):
        return [value]
    return list(value)


def _is_frame(item: Any) -> bool:
    """A single picture (a PIL image, or an H x W x C array / tensor), as opposed to a video or a path."""
    return (hasattr(item, "mode") and isinstance(getattr(item, "size", None), tuple)) or getattr(item, "ndim", 0) == 3


def _videos(value: Any) -> list[Any]:
    """The videos of a request; a list of frames is one video, as in diffusers (``video=[PIL frames]``)."""
    if isinstance(value, (list, tuple)) and value and all(_is_frame(item) for item in value):
        return [list(value)]
    return _as_list(value)


def _check_media_files(media: MediaInputs) -> None:
    """Fail fast, before any model loads, on media paths that are missing, folders or empty."""
    named = [("video", v) for v in media.video] + [("image", media.image)] + [("images", v) for v in media.images]
    for slot, item in named:
        if not isinstance(item, (str, Path)):
            continue
        path = Path(item).expanduser()
        if not path.exists():
            raise BerniniError(f"{slot} file {path} not found")
        if not path.is_file():
            raise BerniniError(f"{slot} {path} is not a file")
        if path.stat().st_size == 0:
            raise BerniniError(f"{slot} file {path} is empty")


RANDOM_SEED = -1
"""``--seed -1``: draw a seed; the plan (and so the sidecar) holds the one drawn."""


def _norm_thresholds(value: Any) -> tuple[float, ...]:
    thresholds = [value] if isinstance(value, (int, float)) else list(value)
    thresholds = [as_float("norm_threshold", t) for t in thresholds]
    if not thresholds:
        raise BerniniError("norm_threshold needs at least one value")
    while len(thresholds) < 2:
        thresholds.append(thresholds[-1])
    return tuple(thresholds)


def _scheduler_name(use_unipc: Any) -> str | None:
    if use_unipc is None:
        return None
    return "unipc" if use_unipc else "flow_match_euler"


def _source_id_choice(request: GenerationRequest) -> SourceIdChoice:
    def flag(value: Any) -> bool | None:
        return None if value is None else bool(value)

    max_trained = request.max_trained_src_id
    if max_trained is not None:
        max_trained = as_int("max_trained_src_id", max_trained)
        check_range("max_trained_src_id", max_trained, 1, None, "at least 1")
    return SourceIdChoice(flag(request.use_src_tgt_id), flag(request.interpolate_src_id), max_trained)


def _preset(request: GenerationRequest) -> Preset | None:
    if request.preset is None:
        return None
    preset = PRESETS.get(request.preset)
    if preset is None:
        raise BerniniError(f"unknown preset {request.preset!r}; choose one of: {', '.join(PRESETS)}")
    if request.use_unipc and preset.scheduler != "unipc":
        raise BerniniError(f"preset {preset.name} uses the {preset.scheduler} scheduler; drop --use_unipc")
    return preset


def _merge(
    request: GenerationRequest, task: TaskSpec, version: str | None, preset: Preset | None
) -> tuple[Merged, list[Adjustment]]:
    """The one merge of the layers (built-in < shipped preset < case file < user), and the notes of a case file's
    guidance mode that yields: one the full model does not run yields to its shipped mode, and one under a preset
    that samples without guidance yields to the preset's (a task in ``preset.guided_tasks`` keeps its own)."""
    shipped: dict[str, Any] = {}
    if version is not None:
        shipped = full_preset(version, task.name).values()
    elif preset is not None:
        shipped = {"num_inference_steps": preset.num_inference_steps, "flow_shift": preset.flow_shift}
        if task.name not in preset.guided_tasks:
            shipped["guidance_mode"] = preset.guidance_mode
    case = dict(request.case)
    mode = case.get("guidance_mode")
    adjustments: list[Adjustment] = []
    if mode is not None and request.guidance_mode is None and "guidance_mode" in shipped:
        if version is not None and mode not in FULL_MODEL_MODES:
            why = "the case's mode is Bernini-R's; the full model runs its shipped mode for the task"
            adjustments = changed("guidance_mode", mode, shipped["guidance_mode"], why)
            del case["guidance_mode"]
        elif version is None:
            why = (
                f"preset {preset.name} samples without guidance; the case's mode yields (pass --guidance_mode to "
                "keep it)"
            )
            adjustments = changed("guidance_mode", mode, shipped["guidance_mode"], why)
            del case["guidance_mode"]
    return replace(request, case=case).merged({Layer.PRESET: shipped}), adjustments


def _over_preset(preset: Preset, merged: Merged, task: TaskSpec) -> list[Adjustment]:
    """What the preset's values yielded to: each setting the user gave over it (one note each), and the guidance of
    a task the preset keeps guided."""
    won = f"given explicitly, it wins over preset {preset.name}'s"
    notes: list[Adjustment] = []
    if merged.given("guidance_mode"):
        notes += changed("guidance_mode", preset.guidance_mode, merged["guidance_mode"], won)
    elif task.name in preset.guided_tasks:
        why = (
            f"preset {preset.name} keeps {task.name}'s reference guidance (the 4-step LoRAs were distilled for "
            "text-to-video; without guidance the references lose their identity)"
        )
        notes += changed("guidance_mode", preset.guidance_mode, merged["guidance_mode"] or task.guidance_mode, why)
    if merged.given("num_inference_steps"):
        steps = merged["num_inference_steps"]
        dropped = (
            f"; its {preset.num_inference_steps} distilled timesteps are dropped and {preset.scheduler} spaces "
            f"{steps} steps itself"
        )
        notes += changed("num_inference_steps", preset.num_inference_steps, steps, won + dropped)
    if merged.given("flow_shift"):
        notes += changed("flow_shift", preset.flow_shift, merged["flow_shift"], won)
    return notes


def _cache(request: GenerationRequest) -> CacheSettings | None:
    if request.cache is None:
        for name in ("cache_threshold", "cache_calibration"):
            if getattr(request, name) is not None:
                raise BerniniError(f"{name} needs a cache: pass --cache with one of " + ", ".join(CACHES))
        return None
    kind = CACHES.get(request.cache)
    if kind is None:
        raise BerniniError(f"unknown cache {request.cache!r}; choose one of: {', '.join(CACHES)}")
    threshold = (
        kind.threshold if request.cache_threshold is None else as_float("cache_threshold", request.cache_threshold)
    )
    check_range("cache_threshold", threshold, 1e-300, None, "positive")
    path = request.cache_calibration
    if path is None:
        if kind.name == "magcache":
            raise BerniniError(
                "--cache magcache needs --cache_calibration FILE: an existing calibration, or a new file that "
                "this run writes while it calibrates (nothing is skipped in that run)"
            )
        return CacheSettings(kind.name, threshold)
    path = str(path)
    if kind.name == "firstblock":
        raise BerniniError("--cache firstblock takes no calibration; drop --cache_calibration")
    if kind.name == "magcache" and not Path(path).exists():
        if not Path(path).parent.is_dir():
            raise BerniniError(f"cannot write the MagCache calibration {path}: its folder does not exist")
        return CacheSettings(kind.name, threshold, calibration=path)
    data = read_calibration(path, kind.name)
    if kind.name == "teacache":
        return CacheSettings(kind.name, threshold, calibration=path, coefficients=data["coefficients"])
    return CacheSettings(kind.name, threshold, path, ratios=data["ratios"], calibration_steps=data["steps"])


def resolve_request(request: GenerationRequest, defaults: ModelDefaults | None = None) -> ResolvedRequest:
    """Check and normalise a request into a plan; fill the task type and guidance mode from the tables.

    With ``defaults`` the plan is complete; without, the model's choices stay open until the pipeline
    fills them (:meth:`ResolvedRequest.with_model_defaults`).
    """
    original = request
    version = defaults.planner_version if defaults is not None else None
    base = replace(request, **request.merged().values)  # the case under the user, over the built-in defaults
    if not isinstance(base.prompt, str) or not base.prompt.strip():
        raise BerniniError("prompt is required and must be a non-empty string (--prompt or the case's 'prompt')")
    task_name = base.task_type or infer_task_type(base)
    if task_name not in TASKS:
        raise BerniniError(f"unknown task_type {task_name!r}; choose one of: {', '.join(TASKS)}")
    task = TASKS[task_name]
    if version is None and defaults is not None:
        _refuse_planner_settings(request.given())
    if request.preset is not None and version is not None:
        raise BerniniError(
            f"--preset {request.preset} is for Bernini-R's distilled LoRAs; the full model has no presets"
        )
    preset = _preset(base)
    merged, model_adjustments = _merge(request, task, version, preset)
    request = replace(request, **merged.values)
    registry = FULL_MODEL_MODES if version is not None else GUIDANCE_MODES
    mode_name = request.guidance_mode or task.guidance_mode
    if preset is not None:
        model_adjustments = model_adjustments + _over_preset(preset, merged, task)
    if defaults is None and mode_name not in registry and mode_name in FULL_MODEL_MODES:
        registry = FULL_MODEL_MODES  # the model is not known yet: the pipeline plans again for the one it loads
    if mode_name not in registry:
        model = f"the full Bernini model ({version})" if version else "Bernini-R"
        if mode_name not in MODE_NAMES:
            raise BerniniError(f"unknown guidance_mode {mode_name!r}; choose one of: {', '.join(registry)}")
        raise BerniniError(
            f"guidance_mode {mode_name!r} does not run on {model}; choose one of: {', '.join(registry)} "
            "(or leave it out for the task's default)"
        )
    mode = registry[mode_name]
    one_frame = as_int("num_frames", request.num_frames) == 1
    if version and task.single_frame and merged.given("num_frames") and not one_frame:
        raise BerniniError(f"task {task.name} makes one image: pass --num_frames 1 or drop --num_frames")
    video_fps = request.video_fps
    if video_fps is not None:
        check_range("video_fps", as_float("video_fps", video_fps), 1e-300, None, "positive")
    media = MediaInputs(
        video=tuple(_videos(request.video)),
        image=request.image,
        images=tuple(_as_list(request.images)),
        fps=as_float("fps", request.fps),
        video_fps=video_fps,
        max_image_size=as_int("max_image_size", request.max_image_size),
    )
    problem = task.media_problem(len(media.video), media.image is not None, len(media.images))
    if problem:
        raise BerniniError(problem)
    if version is not None and media.image is not None and media.images:
        raise BerniniError(
            f"the full model's planner reads either --image or --images (spec §2.1), not both; for {task.name} "
            "pass the source image alone"
        )
    if not mode.needs.met_by(len(media.video), media.references):
        raise BerniniError(
            f"guidance_mode {mode.name} needs {mode.needs.value}, which task {task.name} does not have here; "
            f"use the task's default ({task.guidance_mode}) or add the media"
        )
    _check_media_files(media)

    seed = as_int("seed", request.seed)
    if seed == RANDOM_SEED:
        seed = secrets.randbelow(2**63)
    frames = as_int("num_frames", request.num_frames)
    steps = as_int("num_inference_steps", request.num_inference_steps)
    height, width = as_int("height", request.height), as_int("width", request.width)
    flow_shift = as_float("flow_shift", request.flow_shift)
    weights = Weights(*(as_float(n, getattr(request, n)) for n in ("omega_vid", "omega_img", "omega_txt", "omega_tgt")))
    planner = _planner_plan(request, version)
    omega_scale = as_float("omega_scale", request.omega_scale)
    apg = APGSettings(
        eta=as_float("eta", request.eta),
        norm_threshold=_norm_thresholds(request.norm_threshold),
        momentum=as_float("momentum", request.momentum),
    )
    check_range("num_frames", frames, 1, None, "at least 1")
    check_range("num_inference_steps", steps, 1, None, "at least 1")
    if not 0 <= seed < 2**63:
        raise BerniniError(f"seed must be between 0 and 2**63-1 (or -1 for a random one), got {seed}")
    if media.fps <= 0:
        raise BerniniError(f"fps must be positive, got {media.fps}")
    if flow_shift <= 0:
        raise BerniniError(f"flow_shift must be positive, got {flow_shift}")
    limit = MAX_LATENT_POSITIONS * 16
    check_range("max_image_size", media.max_image_size, 16, None, "at least 16")
    follow_source = version is not None and height == 0 and width == 0
    if follow_source and not (media.video or media.image is not None):
        raise BerniniError(
            f"--height 0 --width 0 follow a source video or image, and task {task.name} has none; pass a size"
        )
    shipped: tuple[str, ...] = ()
    if version is not None and not follow_source:
        shipped = tuple(name for name in ("height", "width") if merged.layer(name) is Layer.PRESET and merged[name])
    for name, value in (("height", height), ("width", width)):
        if not follow_source:
            check_range(name, value, 16, limit, f"between 16 and {limit} pixels (or both 0: the source's size)")
    check_range("max_image_size", media.max_image_size, None, limit, f"at most {limit}")
    cache = _cache(request)
    scheduler = SchedulerChoice(_scheduler_name(request.use_unipc), flow_shift)
    if preset is not None:
        pinned = not merged.given("num_inference_steps") or steps == preset.num_inference_steps
        scheduler = SchedulerChoice(preset.scheduler, flow_shift, preset.sigmas if pinned else None)
    if (frames - 1) // 4 + 1 > MAX_LATENT_POSITIONS:
        raise BerniniError(f"num_frames must be at most {(MAX_LATENT_POSITIONS - 1) * 4 + 1}")
    if task.single_frame:
        frames = 1
    windows, window_adjustments = resolve_windows(request, merged)
    extend = None
    if request.extend is not None:
        keep = (max(windows.overlap, 4) if windows else EXTEND_OVERLAP) + 1
        fps_given = merged.layer("fps") in (Layer.CASE, Layer.USER)
        extend, media, extend_adjustments = resolve_extend(request, task.name, version, media, frames, fps_given, keep)
        frames = extend.keep + extend.new
        if (frames - 1) // 4 + 1 > MAX_LATENT_POSITIONS:
            raise BerniniError(f"num_frames must be at most {(MAX_LATENT_POSITIONS - 1) * 4 + 1 - extend.keep}")
        adjustments = model_adjustments + extend_adjustments
    else:
        asked_frames = frames
        frames = frames // 4 * 4 + 1 if frames > 1 else 1
        adjustments = model_adjustments + changed("num_frames", asked_frames, frames, "the VAE takes 4k+1 frames")
    adjustments += window_adjustments
    for text_field in ("neg_prompt", "system_prompt"):
        if not isinstance(getattr(request, text_field), str):
            raise BerniniError(f"{text_field} must be a string")
    if request.output is not None and not isinstance(request.output, (str, Path)):
        raise BerniniError("output must be a path")

    resolved = ResolvedRequest(
        task=task,
        prompt=request.prompt,
        negative_prompt=request.neg_prompt,
        system_prompt=request.system_prompt,
        media=media,
        geometry=Geometry(frames, height, width, version is not None and not follow_source, shipped),
        guidance=GuidanceSettings(mode, weights, omega_scale, apg),
        scheduler=scheduler,
        source_id_choice=_source_id_choice(request),
        seed=seed,
        num_inference_steps=steps,
        output=str(request.output) if request.output is not None else None,
        use_pe=bool(request.use_pe),
        pe_model=request.pe_model,
        preset=preset.name if preset else None,
        cache=cache,
        batch_branches=bool(request.batch_branches),
        windows=windows,
        adjustments=tuple(adjustments),
        planner=planner,
        extend=extend,
        for_model=defaults.model_kind if defaults is not None else None,
        request=original,
    )
    return with_model_defaults(resolved, defaults) if defaults is not None else resolved


PLANNER_SETTINGS = ("omega_tgt", "planning_step", "vit_txt_cfg", "vit_img_cfg", "vit_denoising_step")


def _refuse_planner_settings(given: frozenset[str]) -> None:
    planner_only = [f"--{name}" for name in PLANNER_SETTINGS if name in given]
    if planner_only:
        raise BerniniError(
            f"{', '.join(planner_only)} only affect the full Bernini model (its planner), and this model is "
            "Bernini-R; drop them or load a full bundle (config.json model_type 'bernini') with --config"
        )


def _planner_plan(request: GenerationRequest, version: str | None) -> PlanningSettings:
    steps = as_int("planning_step", request.planning_step)
    vit_steps = as_int("vit_denoising_step", request.vit_denoising_step)
    check_range("planning_step", steps, 1, None, "at least 1")
    check_range("vit_denoising_step", vit_steps, 1, None, "at least 1")
    text_scale = as_float("vit_txt_cfg", request.vit_txt_cfg)
    image_scale = None if request.vit_img_cfg is None else as_float("vit_img_cfg", request.vit_img_cfg)
    return PlanningSettings(steps, vit_steps, text_scale, image_scale, version)


def with_model_defaults(resolved: ResolvedRequest, defaults: ModelDefaults) -> ResolvedRequest:
    """Fill what the request left to the model; explicit request values win. A plan made before the model
    was known (or for another kind of model) is planned again from its request for this one."""
    if resolved.for_model != defaults.model_kind:
        if resolved.request is None:
            raise BerniniError(
                f"this request was resolved for {resolved.for_model}; resolve it again for {defaults.model_kind}"
            )
        again = replace(resolved.request, prompt=resolved.prompt, seed=resolved.seed, output=resolved.output)
        return resolve_request(again, defaults)
    scheduler = resolved.scheduler
    if scheduler.name is None:
        scheduler = replace(scheduler, name=defaults.scheduler)
    policy = resolved.source_ids or resolved.source_id_choice.resolve(defaults.source_ids)
    return replace(resolved, scheduler=scheduler, source_ids=policy)
