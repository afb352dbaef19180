"""The job engine on its own: the group protocol every front end uses (follow, ping, shutdown, the stop decision
of rank 0 obeyed at a step) and the in-memory event board followers wait on. The two-process gloo run is in
``test_demo.py::test_ranks_follow_rank_zero_over_a_gloo_group``."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from bernini.errors import BerniniError
from bernini.jobs import EventBoard, JobGroup, JobStopped, check_transition


class ScriptedChannel:
    """Stands in for the gloo group on rank 1: each broadcast returns rank 0's next message (recorded)."""

    rank = 1

    def __init__(self, messages: list[Any], enabled: bool = True) -> None:
        self.messages, self.enabled, self.sent = list(messages), enabled, []

    def broadcast(self, obj: Any = None) -> Any:
        if not self.enabled:  # as RankZeroChannel alone: nothing leaves the process
            return obj
        self.sent.append(obj)
        return self.messages.pop(0)


def test_a_follower_runs_each_job_of_its_kind_past_failures_and_leaves_at_shutdown():
    channel = ScriptedChannel(
        [
            {"kind": "job", "n": 1},
            {"kind": "ping"},
            {"kind": "job", "n": 2},
            {"kind": "job", "n": 3},
            {"kind": "shutdown"},
        ]
    )
    ran: list[int] = []

    def run(message: dict) -> None:
        ran.append(message["n"])
        if message["n"] == 1:
            raise BerniniError("a bad job ends only itself")
        if message["n"] == 2:
            raise RuntimeError("nor does a crash")

    assert JobGroup(channel).follow("job", run) == 0  # type: ignore[arg-type]
    assert ran == [1, 2, 3] and channel.messages == []


def test_a_follower_leaves_on_a_message_of_another_kind():
    channel = ScriptedChannel([{"kind": "generate"}, {"kind": "job"}])
    assert JobGroup(channel).follow("job", lambda _m: pytest.fail("not a job of this kind")) == 0  # type: ignore[arg-type]


def test_rank_zeros_stop_decision_stops_a_follower_at_that_step():
    """The follower's own check says go on; rank 0's broadcast decision (False, False, True) stops it at step 3."""
    channel = ScriptedChannel([False, False, True])
    seen: list[tuple[int, int]] = []
    on_step = JobGroup(channel).step_callback(  # type: ignore[arg-type]
        5, check=lambda _d, _t: False, progress=lambda d, t: seen.append((d, t)), reason="stopped by the user"
    )
    on_step(None, 0, 999, {})
    on_step(None, 1, 998, {})
    with pytest.raises(JobStopped, match="stopped by the user"):
        on_step(None, 2, 997, {})
    assert seen == [(1, 5), (2, 5)]  # no progress reported for the step that stopped
    assert channel.sent == [False, False, False]


def test_alone_the_local_check_decides_and_keep_alive_sends_nothing():
    channel = ScriptedChannel([], enabled=False)
    group = JobGroup(channel)  # type: ignore[arg-type]
    checks: list[tuple[int, int]] = []
    on_step = group.step_callback(3, check=lambda d, t: checks.append((d, t)) or d == 2)
    on_step(None, 0, 1, {})
    with pytest.raises(JobStopped):
        on_step(None, 1, 1, {})
    assert checks == [(1, 3), (2, 3)]
    stop = group.keep_alive(0.01)
    time.sleep(0.05)
    stop.set()
    group.shutdown()
    assert channel.sent == []


def test_keep_alive_pings_followers_but_never_inside_a_running_job():
    channel = ScriptedChannel([None] * 1000)
    group = JobGroup(channel)  # type: ignore[arg-type]
    stop = group.keep_alive(0.01)
    deadline = time.monotonic() + 10
    while not channel.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    with group.lock:  # a job runs: its collectives must not interleave with a ping
        during = len(channel.sent)
        time.sleep(0.1)
        assert len(channel.sent) == during
    stop.set()
    assert channel.sent and all(m == {"kind": "ping"} for m in channel.sent)


def test_the_state_machine_refuses_to_change_a_finished_job():
    check_transition("queued", "running")
    check_transition("queued", "cancelled")
    check_transition("running", "succeeded")
    for old, new in (("succeeded", "running"), ("cancelled", "queued"), ("queued", "succeeded"), ("failed", "failed")):
        with pytest.raises(ValueError, match=f"a {old} job cannot become {new}"):
            check_transition(old, new)


def test_events_merge_and_wake_a_waiting_thread_at_once():
    board = EventBoard()
    assert board.latest("job-1") == (0, None)
    board.publish("job-1", state="running", step=0, total=4)
    board.publish("job-1", step=1)
    assert board.latest("job-1") == (2, {"state": "running", "step": 1, "total": 4})
    threading.Timer(0.1, lambda: board.publish("job-1", step=2)).start()
    started = time.monotonic()
    version, event = board.wait("job-1", 2, timeout_s=30)
    assert version == 3 and event["step"] == 2 and time.monotonic() - started < 10
    assert board.wait("job-2", 0, timeout_s=0.05) == (0, None)  # nothing published: the timeout


def test_an_asyncio_follower_is_woken_by_a_publish_from_another_thread():
    board = EventBoard()

    async def follow() -> list[int]:
        steps, version = [], 0
        while len(steps) < 3:
            version, event = await board.next("job-1", version, timeout_s=30)
            steps.append(event["step"])
        return steps

    def publish() -> None:
        for step in (1, 2, 3):
            time.sleep(0.05)
            board.publish("job-1", step=step)

    threading.Thread(target=publish).start()
    started = time.monotonic()
    assert asyncio.run(follow()) == [1, 2, 3]
    assert time.monotonic() - started < 10


def test_the_board_keeps_a_finished_state_against_a_late_publish():
    board = EventBoard()
    board.publish("job-1", state="queued")
    board.publish("job-1", state="cancelled")
    board.publish("job-1", state="running", step=1)  # a worker thread that lost the race
    assert board.latest("job-1")[1] == {"state": "cancelled", "step": 1}


def test_the_board_forgets_the_oldest_jobs_beyond_its_bound():
    board = EventBoard(keep=2)
    for job in ("a", "b", "c"):
        board.publish(job, step=1)
    assert board.latest("a") == (0, None) and board.latest("c") == (1, {"step": 1})
