"""A job's states and its progress events, kept in memory per job for the clients that follow it.

A job goes ``queued → running → succeeded | failed | cancelled`` (a queued job may also be cancelled
before it starts). The process running a job publishes each change on the job's channel; a follower
waits on the channel (from a thread or from asyncio) instead of asking the database again and again.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
TRANSITIONS = {"queued": {"running", "cancelled"}, "running": {"running", *FINISHED}}


def check_transition(old: str, new: str) -> None:
    """Raise ValueError for a move the state machine does not allow (a finished job never changes again)."""
    if new not in TRANSITIONS.get(old, set()):
        raise ValueError(f"a {old} job cannot become {new}")


class _Channel:
    def __init__(self) -> None:
        self.version = 0
        self.event: dict[str, Any] | None = None
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []


class EventBoard:
    """The latest event of every recent job, with a version number a follower waits past.

    ``keep`` bounds memory: the channels of the oldest jobs are forgotten (a follower then falls back to
    the job's stored state).
    """

    def __init__(self, keep: int = 1024) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._channels: OrderedDict[str, _Channel] = OrderedDict()

    def _channel(self, job_id: str) -> _Channel:
        channel = self._channels.get(job_id)
        if channel is None:
            channel = self._channels[job_id] = _Channel()
            while len(self._channels) > self.keep:
                self._channels.popitem(last=False)
        return channel

    def publish(self, job_id: str, **event: Any) -> None:
        """Record the job's new state / progress (a dict merged into the last one) and wake its followers.

        A state the state machine does not allow after the last one (a late ``running`` from another thread
        after ``cancelled``) is not taken: followers never see a finished job move again.
        """
        with self._lock:
            channel = self._channel(job_id)
            before = (channel.event or {}).get("state")
            if before is not None and "state" in event and event["state"] != before:
                try:
                    check_transition(before, event["state"])
                except ValueError:
                    event = {k: v for k, v in event.items() if k != "state"}
            channel.version += 1
            channel.event = {**(channel.event or {}), **event}
            waiters, channel.waiters = channel.waiters, []
            self._changed.notify_all()
        for loop, future in waiters:
            loop.call_soon_threadsafe(_wake, future)

    def latest(self, job_id: str) -> tuple[int, dict[str, Any] | None]:
        with self._lock:
            channel = self._channels.get(job_id)
            return (channel.version, channel.event) if channel is not None else (0, None)

    def wait(self, job_id: str, after: int, timeout_s: float) -> tuple[int, dict[str, Any] | None]:
        """Block until the job's version passes ``after`` or ``timeout_s`` passes; the latest (version, event)."""
        with self._lock:
            self._changed.wait_for(lambda: self._version(job_id) > after, timeout_s)
        return self.latest(job_id)

    async def next(self, job_id: str, after: int, timeout_s: float) -> tuple[int, dict[str, Any] | None]:
        """:meth:`wait` for asyncio: no thread is held while a client follows a job."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            channel = self._channel(job_id)
            if channel.version > after:
                return channel.version, channel.event
            channel.waiters.append((loop, future))
        try:
            await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            with self._lock:
                if (loop, future) in channel.waiters:
                    channel.waiters.remove((loop, future))
        return self.latest(job_id)

    async def follow(self, job_id: str, after: int = 0, idle_s: float = 60.0) -> AsyncIterator[dict[str, Any]]:
        """Each new event of the job (the latest one when several came at once) until one that ends it (``ended``)."""
        version = after
        while True:
            seen, event = await self.next(job_id, version, idle_s)
            if seen == version or event is None:
                continue
            version = seen
            yield event
            if event.get("ended"):
                return

    def _version(self, job_id: str) -> int:
        channel = self._channels.get(job_id)
        return channel.version if channel is not None else 0


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
