"""Requests: user input as given, from case files, task lists, command-line flags and keyword arguments.

A :class:`GenerationRequest` is loose on purpose (paths or arrays, strings or numbers); it becomes
an immutable, checked :class:`~bernini.resolve.ResolvedRequest` in :func:`bernini.resolve.resolve_request`. Parse
errors of the files read here are one-line :class:`BerniniError` messages too.
"""

from __future__ import annotations

import typing
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from .sampling.guidance import MODE_NAMES
from .sampling.presets import CACHES, PRESETS
from .settings import (
    MAX_FPS,
    MAX_FRAMES,
    MAX_MEDIA,
    MAX_SIDE,
    MAX_STEPS,
    MAX_TEXT,
    Layer,
    Merged,
    Slider,
    default_of,
    merge_layers,
    setting,
)
from .tasks import TASKS

WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)
CASE_KEYS = ("task_type", "guidance_mode", "prompt", "video", "image", "images", "output")


DEFAULT_OUTPUT = "outputs/output.mp4"


@dataclass
class GenerationRequest:
    """Everything one generation needs, as the user gave it: a field is None when it was not given.

    Each field is declared once here, with its built-in default (upstream's command-line default) and what the
    front ends need to know about it (a :class:`~bernini.settings.Setting`): the command-line flags, the service's
    job body, the demo's controls and the sidecar's ``request`` are generated from these declarations. ``case``
    holds a case file's values, a layer under the user's (:meth:`merged`).

    ``use_unipc``, ``use_src_tgt_id``, ``interpolate_src_id`` and ``max_trained_src_id`` default to None:
    the loaded model's ``config.json`` decides (upstream's values: on, on, on, 5). ``omega_tgt`` and the
    planner's settings (``planning_step``, ``vit_*``) are read by the full model only.
    """

    prompt: str = setting(
        "",
        help="what to generate, or how to edit the source (required unless --case or --inputs gives it)",
        service="What to generate or how to edit the source media.",
        required=True,
        bounds={"min_length": 1, "max_length": MAX_TEXT},
    )
    task_type: str | None = setting(
        None,
        help="default: the case's, else inferred from the media",
        cli={"choices": sorted(TASKS)},
        service="t2i, i2i, t2v, v2v, mv2v, rv2v, r2v or ads2v; default: inferred from the media given.",
        resolved="task.name",
    )
    guidance_mode: str | None = setting(
        None,
        help="default: the case's, else the task's default (the full model's: its shipped per-task settings)",
        cli={"choices": list(MODE_NAMES)},
        service="Guidance mode (GET /v1/models lists them); default: the task's.",
        resolved="guidance.mode.name",
    )
    video: list[Any] = setting(
        factory=list,
        help="source video(s): one for v2v/mv2v/rv2v; two for ads2v (the second is inserted into the first)",
        service="Source video(s): ids from POST /v1/files (or files uploaded with the job).",
        service_type=list[str],
        bounds={"max_length": MAX_MEDIA},
        resolved="media.video",
        media=True,
    )
    image: Any = setting(
        None,
        help="source image (i2i) or one reference image (rv2v, r2v, ads2v)",
        service="Source or reference image: an id from POST /v1/files.",
        service_type=str | None,
        resolved="media.image",
        media=True,
    )
    images: list[Any] = setting(
        factory=list,
        help="reference images (rv2v, r2v; optional for v2v, mv2v, i2i, ads2v)",
        service="Reference images: ids from POST /v1/files.",
        service_type=list[str],
        bounds={"max_length": MAX_MEDIA},
        resolved="media.images",
        media=True,
    )
    extend: Any = setting(
        None,
        help="continue this clip: its last --window_overlap + 1 frames (default 17) start the run, held to the clip "
        "at every step, and the output is the whole clip followed by --num_frames new frames (a multiple of 4); "
        "--prompt describes the continuation (t2v; see docs/long_video.md)",
        cli={"metavar": "CLIP.mp4"},
        service="Video to continue (t2v): a file id from POST /v1/files; see POST /v1/videos/extensions.",
        service_type=str | None,
        resolved="extend.clip",
        media=True,
    )
    output: str | None = setting(None, help=f"output file (default {DEFAULT_OUTPUT}; .png for one frame)")
    seed: int = setting(
        42,
        help="random seed, 0 to 2**63-1; -1 draws one at random and records it in the sidecar",
        service="Noise seed (0 ≤ seed < 2**63).",
    )
    num_frames: int = setting(
        81,
        help="frames to generate, snapped down to 4k+1; a source video caps it; image tasks make 1",
        service="Frames to generate; snapped to 4k+1 (1 for images).",
        bounds={"le": MAX_FRAMES},
        slider=Slider(1, 360, 4, "Frames"),
        resolved="asked_frames",
    )
    num_inference_steps: int = setting(
        40,
        help="denoising steps (each runs the guidance mode's forwards)",
        service="Denoising steps.",
        bounds={"le": MAX_STEPS},
        slider=Slider(1, 50, 1, "Steps"),
    )
    flow_shift: float = setting(
        5.0,
        help="shift of the flow-matching noise schedule (higher: more steps at high noise)",
        service="Scheduler shift.",
        slider=Slider(0, 12, 0.1, "Flow shift"),
        resolved="scheduler.flow_shift",
    )
    omega_vid: float = setting(
        1.25,
        help="guidance weight of the source-video term (alias --omega_V)",
        flags=("--omega_vid", "--omega_V"),
        service="Guidance weight of the source video.",
        slider=Slider(0, 10, 0.05, "ω vid (ω_V)"),
        resolved="guidance.weights.vid",
    )
    omega_img: float = setting(
        4.5,
        help="guidance weight of the reference-image term (alias --omega_I)",
        flags=("--omega_img", "--omega_I"),
        service="Guidance weight of the reference images.",
        slider=Slider(0, 10, 0.05, "ω img (ω_I)"),
        resolved="guidance.weights.img",
    )
    omega_txt: float = setting(
        4.0,
        help="guidance weight of the text term (alias --omega_TI)",
        flags=("--omega_txt", "--omega_TI"),
        service="Guidance weight of the text.",
        slider=Slider(0, 10, 0.05, "ω txt (ω_TI)"),
        resolved="guidance.weights.txt",
    )
    omega_scale: float = setting(
        0.8,
        help="factor applied once to every guidance weight when the low-noise expert takes over",
        service="One-time scale of the weights at the expert switch.",
        slider=Slider(0, 2, 0.05, "omega_scale"),
        resolved="guidance.omega_scale",
    )
    omega_tgt: float = setting(
        0.5,
        help="ω of the plan's target tokens",
        service="Full model: guidance weight of the plan's target tokens.",
        slider=Slider(0, 10, 0.05, "ω tgt (plan tokens)"),
        resolved="guidance.weights.tgt",
    )
    planning_step: int = setting(
        25,
        help="masked-planning rounds (Qwen passes ×3)",
        service="Full model: masked-planning rounds.",
        bounds={"le": MAX_STEPS},
        slider=Slider(1, 100, 1, "Planning steps"),
        resolved="planner.planning_steps",
    )
    vit_txt_cfg: float = setting(
        1.2,
        help="planner guidance toward the visual sources",
        service="Full model: planner guidance toward the sources.",
        slider=Slider(0, 5, 0.05, "ViT text CFG"),
        resolved="planner.text_scale",
    )
    vit_img_cfg: float | None = setting(
        1.0,
        help="planner guidance toward the prompt text",
        service="Full model: planner guidance toward the text.",
        slider=Slider(0, 5, 0.05, "ViT image CFG"),
        resolved="planner.image_scale",
    )
    vit_denoising_step: int = setting(
        5,
        help="flow steps of the ViT decoder",
        service="Full model: ViT-decoder flow steps.",
        bounds={"le": MAX_STEPS},
        slider=Slider(1, 20, 1, "ViT denoising steps"),
        resolved="planner.vit_steps",
    )
    eta: float = setting(
        0.5,
        help="APG: how much of the guidance delta parallel to the conditional prediction is kept (1: all)",
        service="APG: weight of the parallel component.",
        slider=Slider(0, 2, 0.05, "eta"),
        resolved="guidance.apg.eta",
    )
    norm_threshold: list[float] = setting(
        factory=lambda: [50.0, 50.0, 50.0],
        help="APG: per-frame norm cap of each guidance delta, one value per term (the last repeats)",
        service="APG: norm thresholds per guidance delta.",
        bounds={"max_length": 8},
        resolved="guidance.apg.norm_threshold",
    )
    momentum: float = setting(
        0.0,
        help="APG: weight of the previous step's delta added to this one (0: no momentum)",
        service="APG: momentum.",
        slider=Slider(-2, 2, 0.05, "momentum"),
        resolved="guidance.apg.momentum",
    )
    fps: float = setting(
        16.0,
        help="output frame rate; source videos are resampled to it",
        service="Frame rate media are resampled to and the output is written at.",
        bounds={"le": MAX_FPS},
        slider=Slider(1, 30, 1, "FPS"),
        resolved="media.fps",
    )
    video_fps: float | None = setting(
        None,
        command_line=False,
        service="Override the source video's own frame rate.",
        bounds={"le": MAX_FPS},
        resolved="media.video_fps",
    )
    max_image_size: int = setting(
        848,
        help="longest side, in pixels, that source videos and images are resized to (multiples of 16)",
        service="Longest side of the inputs after resizing.",
        bounds={"le": MAX_SIDE},
        slider=Slider(256, 1280, 16, "Max image size"),
        resolved="media.max_image_size",
    )
    height: int = setting(
        480,
        help="output height for tasks without a source (t2v, t2i, r2v); a source sets the size otherwise",
        service="Output height in pixels (a source video's geometry wins).",
        bounds={"le": MAX_SIDE},
        slider=Slider(16, 1280, 16, "Height"),
        resolved="geometry.height",
    )
    width: int = setting(
        848,
        help="output width for tasks without a source (t2v, t2i, r2v); a source sets the size otherwise",
        service="Output width in pixels (a source video's geometry wins).",
        bounds={"le": MAX_SIDE},
        slider=Slider(16, 1280, 16, "Width"),
        resolved="geometry.width",
    )
    neg_prompt: str = setting(
        WAN_NEGATIVE_PROMPT,
        help="negative prompt (default: Wan2.2's standard negative prompt)",
        service="Negative prompt (default: Wan's).",
        bounds={"max_length": MAX_TEXT},
        resolved="negative_prompt",
    )
    system_prompt: str = setting(
        "",
        help="T5 prefix (default: the task's)",
        service="T5 prefix; default: the task's.",
        bounds={"max_length": MAX_TEXT},
    )
    use_unipc: bool | None = setting(
        None,
        help="UniPC or flow-match Euler with --no-use_unipc (default: the bundle's use_unipc, upstream on)",
        service="UniPC (true) or flow-match Euler (false); default: the model's.",
        resolved="uses_unipc",
    )
    use_src_tgt_id: bool | None = setting(
        None,
        help="segment-aware source-id RoPE phase (default: the bundle's use_src_id_rotary_emb, upstream on)",
        service="Segment-aware source-id RoPE phase; default: the model's.",
        resolved="source_id_policy.enabled",
    )
    interpolate_src_id: bool | None = setting(
        None,
        help="fractional ids linspace(1, max) for more than --max_trained_src_id conditions (default: the bundle's)",
        service="Fractional source ids; default: the model's.",
        resolved="source_id_policy.interpolate",
    )
    max_trained_src_id: int | None = setting(
        None,
        help="(default: the bundle's max_trained_src_id, upstream 5)",
        service="Most source ids seen in training; default: the model's.",
        bounds={"le": 64},
        resolved="source_id_policy.max_trained",
    )
    use_pe: bool = setting(False, service="Rewrite the prompt with the server's prompt enhancer first.")
    pe_model: str | None = setting(
        None,
        help="model name (default: $BERNINI_PE_MODEL or the built-in one)",
        service="Prompt-enhancer model (default: the server's).",
    )
    preset: str | None = setting(
        None,
        help="sets steps, timesteps, scheduler and guidance (see docs/fast.md); "
        + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()),
        cli={"choices": sorted(PRESETS)},
        service="Sampling preset, e.g. lightning4 (with a distillation LoRA).",
    )
    cache: str | None = setting(
        None,
        help="skip forwards whose result barely changes (off by default): "
        + "; ".join(f"{c.name}: {c.description}" for c in CACHES.values()),
        cli={"choices": sorted(CACHES)},
        service="Step cache: firstblock, teacache or magcache; default: off.",
        resolved="cache.kind",
    )
    cache_threshold: float | None = setting(
        None,
        help="larger skips more (default: " + ", ".join(f"{c.name} {c.threshold:g}" for c in CACHES.values()) + ")",
        service="Step-cache threshold; default: the cache's own.",
        resolved="cache.threshold",
    )
    cache_calibration: str | None = setting(
        None,
        help="magcache: per-step magnitude ratios (JSON; a missing FILE is written by calibrating this run); "
        "teacache: optional rescale coefficients (JSON); see docs/fast.md",
        cli={"metavar": "FILE"},
        resolved="cache.calibration",
    )
    batch_branches: bool = setting(
        False,
        help="run guidance branches of equal packed layout as one batched forward when memory allows (the full "
        "model's planner: its three Qwen passes per round as one padded batch)",
        service="Run guidance branches of equal length as one batched forward.",
    )
    window_frames: int | None = setting(
        None,
        help="long video: denoise in overlapping windows of this many frames (4k+1, e.g. 81, the trained length; "
        "default: one window over the whole clip); see docs/long_video.md",
        service="Long video: frames per context window (4k+1, e.g. 81); default: one window over the whole clip.",
        bounds={"ge": 5, "le": MAX_FRAMES},
        slider=Slider(1, MAX_FRAMES, 4, "Window frames (1: one window; 81 for long clips)"),
        resolved="windows.frames",
    )
    window_overlap: int | None = setting(
        16,
        help="long video: frames neighbouring windows share and blend over (a multiple of 4, less than "
        "--window_frames - 1)",
        service="Long video: frames neighbouring windows share (a multiple of 4).",
        bounds={"ge": 0, "le": MAX_FRAMES},
        slider=Slider(0, 80, 4, "Window overlap"),
        resolved="windows.overlap",
    )
    case: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, metadata={"internal": True})

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The request's settings (``case`` is a layer under them, not a setting)."""
        return tuple(f.name for f in cls.settings())

    @classmethod
    def settings(cls) -> tuple[Field, ...]:
        """The fields of the request's settings, each with its :class:`~bernini.settings.Setting` declaration."""
        return tuple(f for f in fields(cls) if not f.metadata.get("internal"))

    @classmethod
    def setting_types(cls) -> dict[str, Any]:
        """Each setting's type, resolved from its annotation."""
        return typing.get_type_hints(cls)

    @classmethod
    def builtin(cls) -> dict[str, Any]:
        """Every setting's built-in default, from its declaration."""
        return {f.name: default_of(f) for f in cls.settings()}

    def given(self) -> frozenset[str]:
        """The settings the user set: those that are not None (a case file's values are the ``case`` layer, a
        preset's and the built-in defaults come in at resolution)."""
        return frozenset(name for name in self.field_names() if getattr(self, name) is not None)

    def values(self) -> dict[str, Any]:
        """The settings the user set, with their values (the merge's user layer)."""
        return {name: getattr(self, name) for name in self.given()}

    def merged(self, layers: dict[Layer, dict[str, Any]] | None = None) -> Merged:
        """This request over its case file over ``layers`` (a preset) over the built-in defaults."""
        return merge_layers(self.builtin(), {**(layers or {}), Layer.CASE: self.case, Layer.USER: self.values()})


GENERATION_PARAMETERS = tuple(
    n for n in GenerationRequest.field_names() if n not in CASE_KEYS and n not in ("use_pe", "pe_model")
)
TASK_LIST_KEYS = CASE_KEYS + GENERATION_PARAMETERS + ("use_pe", "pe_model")


def describe_media(item: Any) -> Any:
    if isinstance(item, (str, Path)):
        return str(item)
    shape = getattr(item, "shape", None)
    if shape is not None:
        return f"<{type(item).__name__} {tuple(shape)}>"
    size = getattr(item, "size", None)
    if isinstance(size, tuple):
        return f"<{type(item).__name__} {size[0]}x{size[1]}>"
    if isinstance(item, list):
        return f"<{len(item)} frames>"
    return f"<{type(item).__name__}>"
