"""Process groups and the small agreement collectives that keep ranks from waiting on a dead peer.

Backends: NCCL for tensors on GPUs plus gloo for control objects (``cuda:nccl,cpu:gloo``), gloo alone
on CPU. Groups that serve one task (Ulysses, CFG, task) use ``--dist_timeout``; one extra gloo group
over the whole world (``control``) waits much longer, because data-parallel groups legitimately
finish loading at different times. A rank that dies makes torchrun stop the others, and a rank that
raises a user error tells its peers through :func:`agree` / :func:`share` before any collective they
would otherwise wait in forever. After loading, the end of a task list is not a collective at all: each
rank posts progress marks and its result in the job's store (:class:`Progress`), and rank 0 waits only
while every unfinished rank keeps making progress, so a hung rank costs at most ``--dist_timeout``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ...errors import BerniniError
from .layout import LaunchEnv, Layout

CONTROL_TIMEOUT = timedelta(hours=24)
T = TypeVar("T")


def rank_device(preference: str | None, local_rank: int) -> torch.device:
    """``auto``/``cuda``/``cuda:N`` → this rank's GPU ``cuda:LOCAL_RANK``; ``cpu`` stays on the CPU."""
    preference = preference or "auto"
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not preference.startswith(("auto", "cuda")):
        raise BerniniError(f"device {preference!r} is not supported with torchrun; use cpu or cuda")
    if not torch.cuda.is_available():
        raise BerniniError(f"device {preference!r} requested but CUDA is not available; use --device cpu")
    if local_rank >= torch.cuda.device_count():
        raise BerniniError(
            f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
            "launch at most one process per GPU"
        )
    return torch.device("cuda", local_rank)


@dataclass
class Groups:
    """This rank's groups; ``None`` where the group would have a single rank."""

    layout: Layout
    ulysses: dist.ProcessGroup | None
    cfg: dist.ProcessGroup | None
    task: dist.ProcessGroup | None
    control: dist.ProcessGroup | None


def init(env: LaunchEnv, device: torch.device, timeout_s: float) -> None:
    """Join the job's default process group (torchrun's rendezvous: env:// MASTER_ADDR/PORT)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "cuda:nccl,cpu:gloo"
    else:
        backend = "gloo"
    dist.init_process_group(backend, rank=env.rank, world_size=env.world, timeout=timedelta(seconds=timeout_s))


def build(layout: Layout, timeout_s: float, control: dist.ProcessGroup | None = None) -> Groups:
    """Create every group in the same order on every rank (``new_group`` is collective).

    ``control`` reuses the world-wide control group of an earlier layout (the self-check runs several).
    """
    timeout = timedelta(seconds=timeout_s)
    mine: dict[str, dist.ProcessGroup | None] = {}
    families = (
        ("ulysses", layout.ulysses_groups()),
        ("cfg", layout.cfg_groups()),
        ("task", layout.task_groups()),
    )
    for name, rank_lists in families:
        mine[name] = None
        for ranks in rank_lists:
            if len(ranks) < 2:
                continue
            group = dist.new_group(ranks, timeout=timeout)
            if layout.rank in ranks:
                mine[name] = group
    if control is None and layout.world > 1:
        control = dist.new_group(list(range(layout.world)), timeout=max(timeout, CONTROL_TIMEOUT), backend="gloo")
    return Groups(layout, mine["ulysses"], mine["cfg"], mine["task"], control)


def gather_all(value: T, group: dist.ProcessGroup | None) -> list[T]:
    """Every rank's ``value`` in group-rank order (just ``[value]`` without a group)."""
    if group is None:
        return [value]
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, value, group=group)
    return out


def agree(problem: str | None, group: dist.ProcessGroup | None) -> str | None:
    """The first problem any rank of ``group`` reports (or None): every rank then takes the same branch."""
    return next((p for p in gather_all(problem, group) if p), None)


def share(fn: Callable[[], T], group: dist.ProcessGroup | None, leader: int, is_leader: bool) -> T:
    """Call ``fn`` on the leader only and hand its result (or its user error) to every rank of ``group``."""
    if group is None:
        return fn()
    payload: list[Any] = [None]
    if is_leader:
        try:
            payload[0] = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - every rank must learn that the leader failed
            payload[0] = ("error", str(exc) if isinstance(exc, BerniniError) else f"{type(exc).__name__}: {exc}")
    dist.broadcast_object_list(payload, src=leader, group=group)
    status, value = payload[0]
    if status == "error":
        raise BerniniError(value)
    return value


class RankZeroChannel:
    """The group's leader hands objects to every rank of one group: the requests a demo or service receives on rank 0,
    the tasks a task group's leader runs.

    A no-op on one process. ``enabled`` / ``rank`` default to the state of ``torch.distributed``; ``leader`` is the
    global rank of the group's leader (rank 0 unless given).
    """

    def __init__(
        self,
        group: dist.ProcessGroup | None = None,
        rank: int | None = None,
        enabled: bool | None = None,
        leader: int = 0,
    ):
        if enabled is None:
            enabled = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.enabled = enabled
        self.rank = (dist.get_rank() if enabled else 0) if rank is None else rank
        self.group = group
        self.leader = leader

    @property
    def is_leader(self) -> bool:
        return self.rank == self.leader

    def broadcast(self, obj: Any = None) -> Any:
        """The leader's ``obj`` on every rank (the other ranks' argument is ignored)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=self.leader, group=self.group)
        return box[0]

    def share(self, call: Callable[[], T]) -> T:
        """``call`` on the leader only (the prompt enhancer); its result, or its error as one line, on every rank."""
        if not self.enabled:
            return call()
        return share(call, self.group, self.leader, self.is_leader)


class PeerTimeout(BerniniError):
    """A rank stopped making progress for longer than ``--dist_timeout``."""


class Progress:
    """Progress marks and end-of-list results of every rank, kept in the job's key-value store.

    Waiting for the last data-parallel group is legitimately long (a longer share of the task list), so
    the wait is not bounded as a whole but per mark: a rank that posts no mark (a denoising step, a task
    boundary) for ``timeout_s`` is declared hung.
    """

    def __init__(self, store: dist.Store, rank: int, world: int, prefix: str = "bernini/progress") -> None:
        self.store, self.rank, self.world, self.prefix = store, rank, world, prefix

    @classmethod
    def of_job(cls, rank: int, world: int) -> Progress:
        return cls(dist.distributed_c10d._get_default_store(), rank, world)

    def _key(self, kind: str, rank: int) -> str:
        return f"{self.prefix}/{kind}/{rank}"

    def mark(self) -> None:
        self.store.add(self._key("marks", self.rank), 1)

    def finish(self, value: Any) -> None:
        """Post this rank's result (JSON) once its list is done."""
        self.store.set(self._key("done", self.rank), json.dumps(value))

    def collect(self, timeout_s: float, poll_s: float = 0.1) -> list[Any]:
        """Every rank's result in rank order; :class:`PeerTimeout` once a rank posts nothing for ``timeout_s``."""
        results: dict[int, Any] = {}
        seen = {r: (-1, time.monotonic()) for r in range(self.world)}
        while True:
            for r in range(self.world):
                if r in results:
                    continue
                if self.store.check([self._key("done", r)]):
                    results[r] = json.loads(self.store.get(self._key("done", r)))
                    continue
                marks, since = seen[r]
                now = time.monotonic()
                current = self.store.add(self._key("marks", r), 0)
                if current != marks:
                    seen[r] = (current, now)
                elif now - since > timeout_s:
                    raise PeerTimeout(
                        f"rank {r} made no progress for {timeout_s:g} s (--dist_timeout): it is hung or stopped; "
                        "giving up on it"
                    )
            if len(results) == self.world:
                return [results[r] for r in range(self.world)]
            time.sleep(poll_s)
