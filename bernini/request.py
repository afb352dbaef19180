"""Requests: user input as given, from case files, task lists, command-line flags and keyword arguments.

A :class:`GenerationRequest` is loose on purpose (paths or arrays, strings or numbers); it becomes
an immutable, checked :class:`~bernini.plan.GenerationPlan` in :func:`bernini.plan.make_plan`. Parse
errors of the files read here are one-line :class:`BerniniError` messages too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import BerniniError
from .guidance import MODE_NAMES
from .jsontext import loads_json

WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)
CASE_KEYS = ("task_type", "guidance_mode", "prompt", "video", "image", "images", "output")


@dataclass
class GenerationRequest:
    """Everything one generation needs; defaults are upstream's command-line defaults.

    ``use_unipc``, ``use_src_tgt_id``, ``interpolate_src_id`` and ``max_trained_src_id`` default to None:
    the loaded model's ``config.json`` decides (upstream's values: on, on, on, 5). ``omega_tgt`` and the
    planner's settings (``planning_step``, ``vit_*``) are read by the full model only.
    """

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
    omega_tgt: float = 0.5
    planning_step: int = 25
    vit_txt_cfg: float = 1.2
    vit_img_cfg: float | None = 1.0
    vit_denoising_step: int = 5
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
    use_unipc: bool | None = None
    use_src_tgt_id: bool | None = None
    interpolate_src_id: bool | None = None
    max_trained_src_id: int | None = None
    use_pe: bool = False
    pe_model: str | None = None
    preset: str | None = None
    cache: str | None = None
    cache_threshold: float | None = None
    cache_calibration: str | None = None
    batch_branches: bool = False
    explicit: frozenset[str] | None = field(default=None, repr=False, compare=False, metadata={"internal": True})

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The request's settings (``explicit`` is bookkeeping, not a setting)."""
        return tuple(f.name for f in fields(cls) if not f.metadata.get("internal"))

    def given(self) -> frozenset[str]:
        """The settings the user set: ``explicit`` when the front end knows them, else those that differ from
        the defaults. A loaded full model's shipped settings fill only the others."""
        if self.explicit is not None:
            return self.explicit
        blank = GenerationRequest()
        return frozenset(name for name in self.field_names() if _differs(getattr(self, name), getattr(blank, name)))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("explicit")
        data["video"] = [describe_media(v) for v in self.video]
        data["image"] = describe_media(self.image) if self.image is not None else None
        data["images"] = [describe_media(v) for v in self.images]
        return data


def _differs(value: Any, default: Any) -> bool:
    plain = (str, int, float, bool, type(None))
    if isinstance(value, plain) and isinstance(default, plain):
        return value != default
    if isinstance(value, list) and isinstance(default, list) and all(isinstance(v, plain) for v in value):
        return value != default
    return True  # arrays, images and other media: given


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
        return loads_json(text)
    except json.JSONDecodeError as exc:
        raise BerniniError(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except ValueError as exc:
        raise BerniniError(f"{what} {path} is not usable JSON: it {exc}") from None


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
    if out.get("guidance_mode") is not None and out["guidance_mode"] not in MODE_NAMES:
        raise BerniniError(
            f"case file {path}: unknown guidance_mode {out['guidance_mode']!r}; choose one of: {', '.join(MODE_NAMES)}"
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
        except (OSError, UnicodeDecodeError) as exc:
            raise BerniniError(f"cannot read task list {path}: {exc}") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {number}"
            try:
                entries.append((where, loads_json(line)))
            except json.JSONDecodeError as exc:
                entries.append((where, BerniniError(f"{where}: invalid JSON ({exc.msg})")))
            except ValueError as exc:
                entries.append((where, BerniniError(f"{where}: unusable JSON (it {exc})")))
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
