"""Output checks that run before any model loads: where each task writes, and whether it may.

Every front end that writes files calls :func:`check_outputs` on its planned task list, so a run that
would fail at the end (an unwritable path, two tasks writing one file, an existing output) fails in a
second instead, and an existing output is never replaced without ``overwrite``. Writability is tested by
creating and removing a file, never by permission bits (as root ``os.access`` says yes to ``/proc``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BerniniError
from .io.output import frame_path, sidecar_path
from .resolved import ResolvedRequest
from .runner import Task, existing_output, final_output


def writable_problem(target: Path, what: str = "output") -> str | None:
    """Why a file cannot be created at ``target`` (tried for real in its nearest existing folder), or None."""
    if target.is_dir():
        return f"{what} {target} is a directory; give a file name"
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"cannot write {what} {target}: {folder} is not a folder; choose another path"
    try:
        handle, name = tempfile.mkstemp(prefix=".bernini-check-", dir=folder)
        os.close(handle)
        os.unlink(name)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return f"cannot write {what} {target}: {reason} in {folder}; choose a writable location"
    return None


@dataclass
class OutputCheck:
    """The verdict on a task list: tasks (a refused one holds its error), and what will be replaced."""

    tasks: list[Task]
    replaced: list[Path] = field(default_factory=list)
    skipped: set[int] = field(default_factory=set)

    @property
    def runnable(self) -> list[int]:
        """Indices of the tasks that will run (planned, not refused, not skipped): load the model only if any."""
        return [i for i, t in enumerate(self.tasks) if isinstance(t, ResolvedRequest) and i not in self.skipped]


def _duplicates(tasks: Sequence[Task]) -> None:
    seen: dict[Path, int] = {}
    for index, task in enumerate(tasks):
        if not isinstance(task, ResolvedRequest) or not task.output:
            continue
        path = final_output(task)
        key = Path(os.path.abspath(path))
        if key in seen:
            raise BerniniError(
                f"tasks {seen[key] + 1} and {index + 1} would both write {path} (after the suffix fix-up: .png for "
                "one frame, .mp4 otherwise); give each task its own output"
            )
        seen[key] = index


def check_outputs(
    tasks: Sequence[Task],
    *,
    overwrite: bool = False,
    skip_existing: bool = False,
    save_frames: str | os.PathLike | None = None,
) -> OutputCheck:
    """Check every task's output before loading: unique, writable, and not an existing file unless allowed.

    Two tasks writing one file refuse the whole list (a :class:`BerniniError`); any other problem becomes
    the task's error in its slot, so the rest still run. With ``skip_existing`` a finished output (file
    and sidecar) is skipped and an unfinished one (no sidecar) is redone; an existing output is otherwise
    refused unless ``overwrite``. Whatever will be replaced is listed in :attr:`OutputCheck.replaced`.
    """
    _duplicates(tasks)
    result = OutputCheck(list(tasks))
    for index, task in enumerate(tasks):
        if not isinstance(task, ResolvedRequest) or not task.output:
            continue
        if skip_existing and existing_output(task):
            result.skipped.add(index)
            continue
        target = final_output(task)
        problem = writable_problem(target)
        existing = [p for p in (target, sidecar_path(target)) if p.exists()]
        if save_frames and problem is None:
            problem = writable_problem(frame_path(save_frames, 0), "frame")
            existing += [frame_path(save_frames, 0)] if frame_path(save_frames, 0).exists() else []
        if problem is None and existing and not (overwrite or skip_existing):
            problem = f"{existing[0]} exists; pass --overwrite to replace it or --skip_existing to keep it"
        if problem is not None:
            result.tasks[index] = BerniniError(problem)
        elif existing:
            result.replaced += existing
    return result
