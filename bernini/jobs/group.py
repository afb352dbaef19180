"""One planned request run on every rank of a group: the leader's broadcast, the followers' loop, keep-alive
pings, and the stop decision taken by the leader at every denoising step and obeyed by all ranks.

The leader is rank 0 for the demo and the service (the whole world follows it) and each task group's first rank
for a torchrun task list. On one process every broadcast is a no-op, so the same code runs a job alone. The
leader holds :attr:`JobGroup.lock` from its broadcast to the end of the job: a keep-alive ping never lands
inside a job's collectives. A job run with an :class:`~bernini.jobs.events.EventBoard` and a job id publishes
its progress there (``state``, ``step``, ``total``, ``phase``) for the clients that follow it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ..errors import BerniniError
from ..runtime.parallel.groups import RankZeroChannel
from .events import EventBoard

logger = logging.getLogger("bernini.jobs")

StepCheck = Callable[[int, int], bool]  # (steps done, total) -> stop now?
StepProgress = Callable[[int, int], None]


class JobStopped(Exception):
    """Raised from the step callback on every rank: the job was cancelled (or its server is stopping)."""


def step_phase(done: int, total: int) -> str:
    """The phase a job is in once ``done`` of ``total`` steps ran: the last step done, the VAE decodes."""
    return "decode" if done == total else "denoise"


class JobGroup:
    """The leader (rank 0 unless the channel says otherwise) broadcasts each job, then runs it; every other rank
    follows in :meth:`follow`."""

    def __init__(self, channel: RankZeroChannel | None = None) -> None:
        self.channel = channel or RankZeroChannel()
        self.lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.channel.enabled

    @property
    def rank(self) -> int:
        return self.channel.rank

    @property
    def is_leader(self) -> bool:
        return self.channel.is_leader

    def announce(self, kind: str, payload: dict[str, Any]) -> None:
        """The leader: hand the next job (``{"kind": kind, **payload}``) to the followers."""
        self.channel.broadcast({"kind": kind, **payload})

    def ping(self) -> None:
        """The leader: tell idle followers the leader is alive, so they never reach the control group's timeout."""
        self.channel.broadcast({"kind": "ping"})

    def shutdown(self) -> None:
        """The leader: end the followers' :meth:`follow` (after any running job)."""
        with self.lock:
            self.channel.broadcast({"kind": "shutdown"})

    def keep_alive(self, interval_s: float) -> threading.Event:
        """Ping the followers every ``interval_s`` from a thread; set the returned event to stop it."""
        stopped = threading.Event()

        def ping() -> None:
            while not stopped.wait(interval_s):
                with self.lock:
                    if not stopped.is_set():
                        self.ping()

        if self.enabled:
            threading.Thread(target=ping, name="bernini-keepalive", daemon=True).start()
        return stopped

    def step_callback(
        self, total: int, check: StepCheck | None = None, progress: StepProgress | None = None, reason: str = ""
    ) -> Callable[..., None]:
        """The pipeline's step callback: the leader's ``check`` decides for every rank whether to stop before the next
        step (:class:`JobStopped` with ``reason``); ``progress`` then hears of the step."""
        channel = self.channel

        def on_step(_pipe: Any, index: int, _t: Any, _state: dict) -> None:
            stop = bool(check is not None and check(index + 1, total))
            if channel.enabled:
                stop = bool(channel.broadcast(stop))
            if stop:
                raise JobStopped(reason or "cancelled while running")
            if progress is not None:
                progress(index + 1, total)

        return on_step

    def run(
        self,
        pipe: Any,
        resolved: Any,
        *,
        check: StepCheck | None = None,
        progress: StepProgress | None = None,
        reason: str = "",
        enhancer: Any = None,
        extra_record: dict[str, Any] | None = None,
        events: EventBoard | None = None,
        job_id: str | None = None,
        log: Callable[[str], None] | None = None,
        save_frames: Any = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> Any:
        """Every rank: run ``resolved`` through :func:`bernini.runner.run_job`; the leader writes the output.

        With ``events`` and ``job_id`` (the leader's) the job is ``running`` on the board from here and each step
        done is published. ``log`` defaults to this module's logger."""
        from ..runner import run_job

        total = resolved.num_inference_steps
        publish = events is not None and job_id is not None
        if publish:
            events.publish(job_id, state="running", step=0, total=total, phase="encode")

        def report(done: int, total: int) -> None:
            if publish:
                events.publish(job_id, step=done, total=total, phase=step_phase(done, total))
            if progress is not None:
                progress(done, total)

        if log is None:
            log = lambda line: logger.info("%s", line)  # noqa: E731
        return run_job(
            pipe,
            resolved,
            save_frames=save_frames,
            enhancer=enhancer,
            write=self.is_leader,
            log=log,
            share=self.channel.share if self.enabled else None,
            extra_record=extra_record,
            callback=self.step_callback(total, check, report, reason),
            on_progress=on_progress,
        )

    def follow(self, kind: str, run: Callable[[dict[str, Any]], Any], survive_crashes: bool = True) -> int:
        """Ranks other than the leader: ``run`` every broadcast job of ``kind`` until the shutdown message; returns 0.

        A job's own failure ends that job only: the follower logs it and waits for the next one. An unexpected
        exception (a crash) does too, unless ``survive_crashes`` is False: then it ends the follower.
        """
        while True:
            message = self.channel.broadcast(None)
            got = message.get("kind") if isinstance(message, dict) else None
            if got == "ping":
                continue
            if got != kind:
                return 0
            try:
                run(message)
            except (BerniniError, JobStopped) as exc:
                logger.info("rank %d: job ended: %s", self.rank, exc)
            except Exception:  # noqa: BLE001 - a crashed job must not end the follower
                if not survive_crashes:
                    raise
                logger.exception("rank %d: job crashed", self.rank)
