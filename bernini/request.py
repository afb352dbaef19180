"""Requests: the one place user input becomes a validated :class:`GenerationRequest`.

Case files, task lists, command-line flags and Python keyword arguments all end here, and every
message a user sees about their input comes from here (as a one-line :class:`BerniniError`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import BerniniError
from .tasks import GUIDANCE_MODES, MEDIA_NEEDS, TASKS

WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)
CASE_KEYS = ("task_type", "guidance_mode", "prompt", "video", "image", "images", "output")
MAX_LATENT_POSITIONS = 1024


@dataclass
class GenerationRequest:
    """Everything one generation needs; defaults are upstream's command-line defaults."""

    prompt: str = ""
    task_type: str | None = None
    guidance_mode: str | None = None
    video: list[Any] = field(default_factory=list)
    image: Any = None
    images: list[Any] = field(default_factory=list)
    output: str | None = None
    seed: int = 42
    num_frames: int = 81
    num_inference_steps: int = 40
    flow_shift: float = 5.0
    omega_vid: float = 1.25
    omega_img: float = 4.5
    omega_txt: float = 4.0
    omega_scale: float = 0.8
    eta: float = 0.5
    norm_threshold: list[float] = field(default_factory=lambda: [50.0, 50.0, 50.0])
    momentum: float = 0.0
    fps: float = 16.0
    video_fps: float | None = None
    max_image_size: int = 848
    height: int = 480
    width: int = 848
    neg_prompt: str = WAN_NEGATIVE_PROMPT
    system_prompt: str = ""
    use_unipc: bool = True
    use_src_tgt_id: bool = True
    interpolate_src_id: bool = True
    max_trained_src_id: int = 5
    use_pe: bool = False
    pe_model: str | None = None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["video"] = [_describe_media(v) for v in self.video]
        data["image"] = _describe_media(self.image) if self.image is not None else None
        data["images"] = [_describe_media(v) for v in self.images]
        return data


GENERATION_PARAMETERS = tuple(
    n for n in GenerationRequest.field_names() if n not in CASE_KEYS and n not in ("use_pe", "pe_model")
)
TASK_LIST_KEYS = CASE_KEYS + GENERATION_PARAMETERS + ("use_pe", "pe_model")


def _describe_media(item: Any) -> Any:
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


def infer_task_type(request: GenerationRequest) -> str:
    """Pick the task from the media given, for requests that name none."""
    refs = (request.image is not None) + len(request.images)
    if len(request.video) >= 2:
        return "ads2v"
    if request.video:
        return "rv2v" if refs else "v2v"
    if request.images:
        return "r2v"
    if request.image is not None:
        return "i2i"
    return "t2v"


def _check_media(request: GenerationRequest, task: str, mode: str) -> None:
    spec = TASKS[task]
    refs = (request.image is not None) + len(request.images)
    if spec.video == "none" and request.video:
        hint = {"t2v": "v2v", "t2i": "i2i", "r2v": "rv2v", "i2i": "v2v"}.get(task, "v2v")
        raise BerniniError(f"task {task} takes no video; drop --video or use task_type {hint}")
    if spec.video != "none" and not request.video:
        raise BerniniError(f"task {task} needs a source video; pass --video PATH")
    if not spec.image and request.image is not None:
        raise BerniniError(f"task {task} takes no --image; pass reference images with --images")
    if spec.images == "none" and request.images:
        raise BerniniError(f"task {task} takes no --images")
    if task == "i2i" and request.image is None:
        raise BerniniError("task i2i needs a source image; pass --image PATH")
    if task == "rv2v" and not refs:
        raise BerniniError("task rv2v needs at least one reference image; pass --images PATH [PATH ...]")
    if task == "r2v" and not refs:
        raise BerniniError("task r2v needs at least one reference image; pass --images PATH [PATH ...]")
    has_visual = bool(request.video) or refs > 0
    needs = {
        "rv2v": bool(request.video) and refs > 0,
        "v2v_chain": bool(request.video),
        "r2v_apg": refs > 0,
        "v2v": has_visual,
        "v2v_apg": has_visual,
    }
    if not needs.get(mode, True):
        raise BerniniError(
            f"guidance_mode {mode} needs {MEDIA_NEEDS[mode]}, which task {task} does not have here; "
            f"use the task's default ({TASKS[task].guidance_mode}) or add the media"
        )


def _check_media_files(request: GenerationRequest) -> None:
    """Fail fast, before any model loads, on media paths that are missing, folders or empty."""
    named = [("video", v) for v in request.video] + [("image", request.image)] + [("images", v) for v in request.images]
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


def _as_float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BerniniError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise BerniniError(f"{name} must be finite, got {value!r}")
    return number


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise BerniniError(f"{name} must be an integer, got {value!r}")
    number = _as_float(name, value)
    if number != int(number):
        raise BerniniError(f"{name} must be an integer, got {value!r}")
    return int(number)


def validate(request: GenerationRequest) -> GenerationRequest:
    """Check and normalise a request; fill the task type and guidance mode from the task table."""
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        raise BerniniError("prompt is required and must be a non-empty string (--prompt or the case's 'prompt')")
    video = request.video
    if video is None:
        video = []
    elif isinstance(video, (str, Path)) or not isinstance(video, (list, tuple)):
        video = [video]
    images = request.images
    if images is None:
        images = []
    elif isinstance(images, (str, Path)) or not isinstance(images, (list, tuple)):
        images = [images]
    request = replace(request, video=list(video), images=list(images))
    task = request.task_type or infer_task_type(request)
    if task not in TASKS:
        raise BerniniError(f"unknown task_type {task!r}; choose one of: {', '.join(TASKS)}")
    mode = request.guidance_mode or TASKS[task].guidance_mode
    if mode not in GUIDANCE_MODES:
        raise BerniniError(f"unknown guidance_mode {mode!r}; choose one of: {', '.join(GUIDANCE_MODES)}")
    _check_media(request, task, mode)
    _check_media_files(request)
    ints = {
        n: _as_int(n, getattr(request, n))
        for n in (
            "seed",
            "num_frames",
            "num_inference_steps",
            "max_image_size",
            "height",
            "width",
            "max_trained_src_id",
        )
    }
    floats = {
        n: _as_float(n, getattr(request, n))
        for n in ("flow_shift", "omega_vid", "omega_img", "omega_txt", "omega_scale", "eta", "momentum", "fps")
    }
    thresholds = request.norm_threshold
    if isinstance(thresholds, (int, float)):
        thresholds = [thresholds]
    thresholds = [_as_float("norm_threshold", t) for t in thresholds]
    if not thresholds:
        raise BerniniError("norm_threshold needs at least one value")
    while len(thresholds) < 2:
        thresholds.append(thresholds[-1])
    if ints["num_frames"] < 1:
        raise BerniniError(f"num_frames must be at least 1, got {ints['num_frames']}")
    if ints["num_inference_steps"] < 1:
        raise BerniniError(f"num_inference_steps must be at least 1, got {ints['num_inference_steps']}")
    if not 0 <= ints["seed"] < 2**63:
        raise BerniniError(f"seed must be between 0 and 2**63-1, got {ints['seed']}")
    if floats["fps"] <= 0:
        raise BerniniError(f"fps must be positive, got {floats['fps']}")
    if floats["flow_shift"] <= 0:
        raise BerniniError(f"flow_shift must be positive, got {floats['flow_shift']}")
    if ints["max_image_size"] < 16:
        raise BerniniError(f"max_image_size must be at least 16, got {ints['max_image_size']}")
    limit = MAX_LATENT_POSITIONS * 16
    for name in ("height", "width"):
        if not 16 <= ints[name] <= limit:
            raise BerniniError(f"{name} must be between 16 and {limit} pixels, got {ints[name]}")
    if ints["max_image_size"] > limit:
        raise BerniniError(f"max_image_size must be at most {limit}, got {ints['max_image_size']}")
    if (ints["num_frames"] - 1) // 4 + 1 > MAX_LATENT_POSITIONS:
        raise BerniniError(f"num_frames must be at most {(MAX_LATENT_POSITIONS - 1) * 4 + 1}")
    if request.video_fps is not None and _as_float("video_fps", request.video_fps) <= 0:
        raise BerniniError("video_fps must be positive")
    if TASKS[task].single_frame:
        ints["num_frames"] = 1
    ints["num_frames"] = ints["num_frames"] // 4 * 4 + 1 if ints["num_frames"] > 1 else 1
    for text_field in ("neg_prompt", "system_prompt"):
        if not isinstance(getattr(request, text_field), str):
            raise BerniniError(f"{text_field} must be a string")
    return replace(request, task_type=task, guidance_mode=mode, norm_threshold=thresholds, **ints, **floats)


def _resolve_path(value: Any, base: Path | None) -> Any:
    """Keep a path that exists from the CWD; else try it relative to the case file's folder."""
    if not isinstance(value, str) or base is None:
        return value
    if Path(value).expanduser().exists():
        return value
    candidate = base / value
    return str(candidate) if candidate.exists() else value


def _media_fields(entry: dict[str, Any], where: str, base: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "video" in entry:
        video = entry["video"]
        if isinstance(video, str):
            video = [video]
        if not isinstance(video, list) or not all(isinstance(v, str) for v in video):
            raise BerniniError(f"{where}: 'video' must be a path or a list of paths")
        out["video"] = [_resolve_path(v, base) for v in video]
    if "image" in entry and entry["image"] is not None:
        if not isinstance(entry["image"], str):
            raise BerniniError(f"{where}: 'image' must be a path")
        out["image"] = _resolve_path(entry["image"], base)
    if "images" in entry:
        images = entry["images"]
        if isinstance(images, str):
            images = [images]
        if not isinstance(images, list) or not all(isinstance(v, str) for v in images):
            raise BerniniError(f"{where}: 'images' must be a list of paths")
        out["images"] = [_resolve_path(v, base) for v in images]
    return out


def _load_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BerniniError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BerniniError(f"cannot read {what} {path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BerniniError(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None


def load_case(path: str | Path) -> dict[str, Any]:
    """A case file as keyword arguments for :class:`GenerationRequest` (validated as upstream)."""
    path = Path(path)
    data = _load_json(path, "case file")
    if not isinstance(data, dict):
        raise BerniniError(f"case file {path} must hold one JSON object")
    unknown = sorted(set(data) - set(CASE_KEYS))
    if unknown:
        raise BerniniError(f"case file {path} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(CASE_KEYS)}")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BerniniError(f"case file {path} needs a non-empty 'prompt'")
    out: dict[str, Any] = {k: data[k] for k in ("task_type", "guidance_mode", "prompt", "output") if k in data}
    for key in ("task_type", "guidance_mode", "output"):
        if key in out and out[key] is not None and not isinstance(out[key], str):
            raise BerniniError(f"case file {path}: '{key}' must be a string")
    if out.get("guidance_mode") is not None and out["guidance_mode"] not in GUIDANCE_MODES:
        raise BerniniError(
            f"case file {path}: unknown guidance_mode {out['guidance_mode']!r}; "
            f"choose one of: {', '.join(GUIDANCE_MODES)}"
        )
    out.update(_media_fields(data, f"case file {path}", path.parent))
    return out


def load_task_list(path: str | Path) -> list[dict[str, Any] | BerniniError]:
    """Tasks of an ``--inputs`` file (.jsonl: one object per line; .json: an array of objects).

    A malformed entry becomes a :class:`BerniniError` in its slot so the other tasks still run.
    """
    path = Path(path)
    entries: list[tuple[str, Any]] = []
    if path.suffix == ".jsonl":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise BerniniError(f"task list {path} does not exist") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {number}"
            try:
                entries.append((where, json.loads(line)))
            except json.JSONDecodeError as exc:
                entries.append((where, BerniniError(f"{where}: invalid JSON ({exc.msg})")))
    else:
        data = _load_json(path, "task list")
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise BerniniError(f"task list {path} must hold a JSON array of task objects")
        entries = [(f"{path.name} task {i + 1}", item) for i, item in enumerate(data)]
    if not entries:
        raise BerniniError(f"task list {path} holds no tasks")
    tasks: list[dict[str, Any] | BerniniError] = []
    for where, item in entries:
        if isinstance(item, BerniniError):
            tasks.append(item)
            continue
        if not isinstance(item, dict):
            tasks.append(BerniniError(f"{where}: each task must be a JSON object"))
            continue
        unknown = sorted(set(item) - set(TASK_LIST_KEYS))
        if unknown:
            tasks.append(BerniniError(f"{where}: unknown key(s) {', '.join(unknown)}"))
            continue
        try:
            task = {k: v for k, v in item.items() if k not in ("video", "image", "images")}
            task.update(_media_fields(item, where, path.parent))
            tasks.append(task)
        except BerniniError as exc:
            tasks.append(exc)
    return tasks


def numbered_output(output: str | Path, index: int, total: int) -> str:
    """Distinct output names for a task list whose tasks name none (upstream overwrote one file)."""
    if total <= 1:
        return str(output)
    path = Path(output)
    return str(path.with_name(f"{path.stem}_{index:03d}{path.suffix}"))
