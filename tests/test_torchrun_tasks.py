"""The torchrun task loop as an adapter over the job engine, in one process: the bring-up (``parallel_run``) is
replaced by a fake pipeline and a scripted task-group channel standing in for gloo (the real multi-process runs
are in ``test_parallel.py``). A follower runs only what its leader hands it and stops at the leader's step; the
leader hands over each task of its share, its stop decision at every step, then the shutdown."""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

import bernini.frontends.torchrun as torchrun_frontend
from bernini.errors import BerniniError
from bernini.request import GenerationRequest
from bernini.resolve import resolve_request
from bernini.runtime.parallel.layout import Layout


class ScriptedChannel:
    """A task group's channel on one rank: a follower's broadcasts return the leader's next message; the leader's
    return what it sends. Every broadcast is recorded."""

    enabled = True

    def __init__(self, rank: int, leader: int, messages: list[Any] | None = None) -> None:
        self.rank, self.leader, self.messages, self.sent = rank, leader, list(messages or []), []

    @property
    def is_leader(self) -> bool:
        return self.rank == self.leader

    def broadcast(self, obj: Any = None) -> Any:
        self.sent.append(obj)
        return obj if self.is_leader else self.messages.pop(0)

    def share(self, call):
        return call()


class FakePipe:
    def __init__(self) -> None:
        self.steps: list[tuple[str, int]] = []

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        pass

    def generate(self, resolved, enhance=None, callback=None, output_type="np", on_progress=None):
        for index in range(resolved.num_inference_steps):
            self.steps.append((resolved.prompt, index))
            callback(self, index, 1000 - index, {})
        parameters = {"request": {"prompt": resolved.prompt}, "resolved": {"frames": 5}}
        return SimpleNamespace(frames=np.zeros((5, 16, 16, 3), np.uint8), parameters=parameters)


class FakeContext:
    def __init__(self, layout: Layout, channel: ScriptedChannel, others: Any = None) -> None:
        self.layout, self.channel, self.marks, self.others, self.agreed = layout, channel, 0, others, []

    def agree(self, hold):
        """The group's verdict on a task: this rank's, else the one ``others`` (the other ranks) give."""
        self.agreed.append(hold)
        return hold or (self.others(len(self.agreed)) if self.others else None)

    def task_channel(self) -> ScriptedChannel:
        return self.channel

    def mark(self) -> None:
        self.marks += 1

    def finish(self, value):
        return [value]


def run(monkeypatch, layout: Layout, channel: ScriptedChannel, tasks: list, others: Any = None):
    pipe, lines = FakePipe(), []
    context = FakeContext(layout, channel, others)

    @contextmanager
    def parallel_run(args, env, log, on_progress=None):
        yield pipe, context

    monkeypatch.setattr(torchrun_frontend, "parallel_run", parallel_run)
    args = argparse.Namespace(use_pe=False, save_frames=None, skip_existing=False, ulysses=layout.ulysses)
    status = torchrun_frontend.run_parallel(args, tasks, SimpleNamespace(rank=layout.rank), lines.append)
    return status, pipe, lines, context


def plan(prompt: str, output: Path, steps: int = 3):
    request = GenerationRequest(prompt=prompt, task_type="t2v", num_inference_steps=steps, output=str(output))
    return resolve_request(request)


def test_a_follower_runs_what_its_leader_hands_it_and_stops_at_the_leaders_step(monkeypatch, tmp_path):
    """Rank 1 of a Ulysses-2 group: it runs the handed tasks in the leader's order (not its own list), obeys the
    leader's stop at step 2 of one, skips the one it could not plan itself, goes on to the shutdown, writes
    nothing and reports nothing."""
    first, second, third = (plan(name, tmp_path / f"{name}.mp4") for name in ("first", "second", "third"))
    missing = BerniniError("video file not found on this node: src.mp4")
    messages = [
        {"kind": "task", "index": 1, "plan": second},
        *[False] * 3,
        {"kind": "ping"},
        {"kind": "task", "index": 0, "plan": first},
        False,
        True,  # the leader stops this job at its second step
        {"kind": "task", "index": 2, "plan": third},  # this rank could not plan it: the group skips it
        {"kind": "shutdown"},
    ]
    channel = ScriptedChannel(rank=1, leader=0, messages=messages)
    status, pipe, lines, context = run(monkeypatch, Layout(2, 1, ulysses=2), channel, [first, second, missing])
    assert status == 0 and channel.messages == []
    assert pipe.steps == [("second", 0), ("second", 1), ("second", 2), ("first", 0), ("first", 1)]
    assert channel.sent.count(False) == 5, "the follower takes part in every step's stop decision"
    assert [hold and hold.message for hold in context.agreed] == [None, None, str(missing)]
    assert lines == [] and not list(tmp_path.iterdir())


def test_a_leader_hands_each_task_of_its_share_to_its_group_then_the_shutdown(monkeypatch, tmp_path):
    """Rank 2 leads task group 1 of 2 (Ulysses 2, world 4): of three tasks it runs the second, announced with its
    plan, a stop decision (go on) at each of its 2 steps, then the shutdown; it writes and reports the task."""
    tasks = [plan(f"task {i}", tmp_path / f"out{i}.mp4", steps=2) for i in range(3)]
    channel = ScriptedChannel(rank=2, leader=2)
    status, pipe, lines, _context = run(monkeypatch, Layout(4, 2, ulysses=2), channel, tasks)
    assert status == 0
    assert channel.sent == [{"kind": "task", "index": 1, "plan": tasks[1]}, False, False, {"kind": "shutdown"}]
    assert pipe.steps == [("task 1", 0), ("task 1", 1)]
    assert (tmp_path / "out1.mp4").is_file() and (tmp_path / "out1.mp4.json").is_file()
    assert lines[-1] == f"task 2/3: wrote {tmp_path / 'out1.mp4'}"


def test_a_task_a_follower_could_not_plan_fails_on_the_leader_before_it_runs(monkeypatch, tmp_path):
    """The group's agreement after the announce: a follower's own error (a file its node lacks) is the task's,
    reported by the leader, which then hands over the next task as usual."""
    from bernini.runner import Hold

    tasks = [plan(f"task {i}", tmp_path / f"out{i}.mp4", steps=1) for i in range(2)]
    follower = {1: Hold("error", "video file not found: /node2/src.mp4; check the path")}
    channel = ScriptedChannel(rank=0, leader=0)
    status, pipe, lines, _context = run(
        monkeypatch, Layout(2, 0, ulysses=2), channel, tasks, others=lambda count: follower.get(count)
    )
    assert status == 1
    assert pipe.steps == [("task 1", 0)], "the task the follower could not plan never ran"
    assert [m["index"] for m in channel.sent if isinstance(m, dict) and m["kind"] == "task"] == [0, 1]
    assert "error: task 1/2: video file not found: /node2/src.mp4; check the path" in lines
    assert (tmp_path / "out1.mp4").is_file() and not (tmp_path / "out0.mp4").exists()
