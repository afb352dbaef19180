"""The sidecar as clients get it: the run's record without the server's paths.

A sidecar written on the server names the job folder, the uploads, the model's folder and its weight
shards by absolute path. Clients get each such path reduced to its file name (``paths`` holds only
file names), and the server's working directory and command line are left out. Texts the run used
(prompts) are kept as they were, so the record still reproduces the run.
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

SERVER_ONLY = ("cwd", "command_line")
TEXTS = ("prompt", "text")  # keys holding model input, kept verbatim
_WINDOWS = re.compile(r"^[A-Za-z]:[\\/]")


def public_sidecar(text: str | None, roots: list[str]) -> str:
    """``text`` (the stored sidecar JSON) with every absolute path reduced to its file name.

    ``roots`` are server folders (the output folder, the working directory) whose mention inside a longer
    string is cut too; the sidecar's own ``cwd`` is added to them.
    """
    data = json.loads(text or "{}")
    if not isinstance(data, dict):
        return "{}"
    own = data.get("cwd")
    folders = sorted({r.rstrip("/") for r in [*roots, *([own] if isinstance(own, str) else [])] if r}, key=len)
    for key in SERVER_ONLY:
        data.pop(key, None)
    return json.dumps(_clean(data, folders[::-1]), indent=2, ensure_ascii=False)


def _clean(value: Any, folders: list[str]) -> Any:
    if isinstance(value, dict):
        return {key: item if _is_text(key, item) else _clean(item, folders) for key, item in value.items()}
    if isinstance(value, list):
        return [_clean(item, folders) for item in value]
    if isinstance(value, str):
        return _name_only(value, folders)
    return value


def _is_text(key: str, item: Any) -> bool:
    return isinstance(item, str) and any(word in key for word in TEXTS)


def _name_only(text: str, folders: list[str]) -> str:
    if text.startswith(("/", "~")):
        return PurePosixPath(text).name
    if _WINDOWS.match(text) or text.startswith("\\\\"):
        return PureWindowsPath(text).name
    for folder in folders:
        text = text.replace(folder + "/", "").replace(folder, ".")
    return text
