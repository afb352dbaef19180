"""Running demo requests on every rank: a thin adapter over the job engine's group protocol.

Rank 0 (the UI) calls :meth:`DemoBackend.submit`, which broadcasts the request (a plain dict) and runs
it; every other rank sits in :func:`worker_loop` and runs the same :meth:`DemoBackend.execute` call
(:class:`bernini.jobs.JobGroup`: broadcast, follow, keep-alive, Stop at the next step). On one process
the broadcast is a no-op. Each request's states and steps are published on the backend's
:class:`~bernini.jobs.EventBoard`, which the page's progress bar follows.
"""

import secrets
import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...jobs import EventBoard, JobGroup, JobStopped
from ...runtime.parallel.groups import RankZeroChannel

if TYPE_CHECKING:
    from ...runner import JobResult
    from .settings import DemoSettings

KEEPALIVE_S = 600.0
GenerationCancelled = JobStopped  # raised from the step callback when the user pressed Stop


def output_path(save_dir: Path, task: str, frames: int) -> Path:
    """``{task}_{timestamp}.png|mp4`` in ``save_dir``, never an existing name.

    It lives here rather than with the UI handlers because :meth:`DemoBackend.submit` picks a new
    name when another request took this one while it waited.
    """
    suffix = ".png" if frames == 1 else ".mp4"
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    candidate = save_dir / f"{task}_{stamp}{suffix}"
    counter = 1
    while any(candidate.with_suffix(taken).exists() for taken in (".png", ".mp4")):
        candidate = save_dir / f"{task}_{stamp}_{counter}{suffix}"
        counter += 1
    return candidate


class DemoBackend:
    """Runs demo requests through the job engine; shared by the UI (rank 0) and the worker ranks."""

    def __init__(self, pipe: Any, settings: "DemoSettings", collective: RankZeroChannel | None = None) -> None:
        self.pipe = pipe
        self.settings = settings
        self.group = JobGroup(collective)
        self.lock = self.group.lock  # a cancelled job keeps its thread until its next step; never overlap
        self.cancel_flags: dict[str, threading.Event] = {}
        self.events = EventBoard()
        self._session_dirs: dict[str, Path] = {}

    @property
    def collective(self) -> RankZeroChannel:
        return self.group.channel

    def session_dir(self, session: str) -> Path:
        """This browser session's output folder: an unguessable name under the save dir, so no other client
        can fetch its files by guessing a path."""
        folder = self._session_dirs.get(session)
        if folder is None:
            folder = self.settings.save_dir / secrets.token_urlsafe(16)
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._session_dirs[session] = folder
        return folder

    def submit(
        self, payload: dict[str, Any], cancel: threading.Event | None = None, job_id: str | None = None
    ) -> "JobResult":
        """Rank 0: broadcast the request to the other ranks, then run it here too.

        The job (``job_id``, a new one if None) is ``queued`` on :attr:`events` until the running one ends, then
        ``running`` with its steps, and ends ``succeeded``, ``cancelled`` or ``failed`` (with ``ended``)."""
        job_id = job_id or secrets.token_hex(8)
        self.events.publish(job_id, state="queued")
        try:
            result = self._submit(payload, cancel, job_id)
        except JobStopped:
            self.events.publish(job_id, state="cancelled", ended=True)
            raise
        except BaseException:
            self.events.publish(job_id, state="failed", ended=True)
            raise
        self.events.publish(job_id, state="succeeded", ended=True)
        return result

    def _submit(self, payload: dict[str, Any], cancel: threading.Event | None, job_id: str) -> "JobResult":
        with self.lock:
            resolved = payload["plan"]
            target = Path(resolved.output)
            if any(target.with_suffix(taken).exists() for taken in (".png", ".mp4")):  # taken while this one waited
                frames = 1 if target.suffix == ".png" else 2
                payload = {
                    **payload,
                    "plan": resolved.with_output(str(output_path(target.parent, resolved.task.name, frames))),
                }
            self.group.announce("generate", payload)
            return self.execute(payload, cancel=cancel, job_id=job_id)

    def execute(
        self, payload: dict[str, Any], cancel: threading.Event | None = None, job_id: str | None = None
    ) -> "JobResult":
        """Every rank: run the broadcast plan (rank 0 writes and publishes the job's steps under ``job_id``; rank 0's
        Stop reaches every rank at its next step)."""
        from dataclasses import replace

        resolved = payload["plan"]
        if payload.get("use_pe"):
            resolved = replace(resolved, use_pe=True, pe_model=self.settings.pe_model or resolved.pe_model)
        return self.group.run(
            self.pipe,
            resolved,
            check=(lambda _done, _total: cancel.is_set()) if cancel is not None else None,
            reason="stopped by the user",
            enhancer=self.settings.enhancer,
            extra_record=payload.get("extra_record"),
            events=self.events,
            job_id=job_id,
        )

    def keep_alive(self, interval_s: float = KEEPALIVE_S) -> threading.Event:
        """Ping the waiting ranks now and then, so an idle demo never hits the control group's timeout."""
        return self.group.keep_alive(interval_s)

    def shutdown(self) -> None:
        """Rank 0: tell the other ranks to leave :func:`worker_loop` (after any running request)."""
        self.group.shutdown()


def worker_loop(backend: DemoBackend) -> int:
    """Ranks other than 0: run every broadcast request until the "shutdown" message."""
    return backend.group.follow("generate", lambda message: backend.execute(message))
