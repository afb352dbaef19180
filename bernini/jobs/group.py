"""One planned request run on every rank of a group: the leader's broadcast, the followers' loop, keep-alive
pings, and the stop decision taken on rank 0 at every denoising step and obeyed by all ranks.

On one process every broadcast is a no-op, so the same code runs a job alone. Rank 0 holds :attr:`JobGroup.lock`
from its broadcast to the end of the job: a keep-alive ping never lands inside a job's collectives.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ..errors import BerniniError
from ..runtime.parallel.groups import RankZeroChannel

logger = logging.getLogger("bernini.jobs")

StepCheck = Callable[[int, int], bool]  # (steps done, total) -> stop now?
StepProgress = Callable[[int, int], None]


class JobStopped(Exception):
    """Raised from the step callback on every rank: the job was cancelled (or its server is stopping)."""


class JobGroup:
    """Rank 0 leads (broadcasts each job, then runs it); every other rank follows in :meth:`follow`."""

    def __init__(self, channel: RankZeroChannel | None = None) -> None:
        self.channel = channel or RankZeroChannel()
        self.lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.channel.enabled

    @property
    def rank(self) -> int:
        return self.channel.rank

    def announce(self, kind: str, payload: dict[str, Any]) -> None:
        """Rank 0: hand the next job (``{"kind": kind, **payload}``) to the followers."""
        self.channel.broadcast({"kind": kind, **payload})

    def ping(self) -> None:
        """Rank 0: tell idle followers the leader is alive, so they never reach the control group's timeout."""
        self.channel.broadcast({"kind": "ping"})

    def shutdown(self) -> None:
        """Rank 0: end the followers' :meth:`follow` (after any running job)."""
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
        """The pipeline's step callback: rank 0's ``check`` decides for every rank whether to stop before the next
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
    ) -> Any:
        """Every rank: run ``plan`` through :func:`bernini.runner.run_job`; rank 0 writes the output."""
        from ..runner import run_job

        return run_job(
            pipe,
            resolved,
            enhancer=enhancer,
            write=self.rank == 0,
            log=lambda line: logger.info("%s", line),
            share=self.channel.share if self.enabled else None,
            extra_record=extra_record,
            callback=self.step_callback(resolved.num_inference_steps, check, progress, reason),
        )

    def follow(self, kind: str, run: Callable[[dict[str, Any]], Any]) -> int:
        """Ranks other than 0: ``run`` every broadcast job of ``kind`` until the shutdown message; returns 0.

        A job's own failure ends that job only: the follower logs it and waits for the next one.
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
                logger.exception("rank %d: job crashed", self.rank)
