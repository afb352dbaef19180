"""Case files and task lists: upstream's JSON cases (``examples/*.json``) and JSONL task lists read into request
values, media paths resolved against the file's folder; a bad line of a list is kept as its error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import BerniniError
from .jsontext import loads_json
from .request import CASE_KEYS, TASK_LIST_KEYS
from .sampling.guidance import MODE_NAMES


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
