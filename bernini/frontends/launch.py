"""The parallel-context bring-up every multi-process front end shares (``bernini generate``, the demo,
the self-check): read what torchrun says, refuse bad degrees identically on every rank before any
collective, pick this rank's device, join the process group, build the groups of a layout, load the
pipeline on every rank (one user error stops all of them with that message) and install the runners.

The launch environment is read here and nowhere else; nothing is written to ``os.environ``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BerniniError, WeightsError
from ..loaders.bundle import BundleSpec
from ..loaders.config import read_json
from ..runner import Hold
from ..runtime.parallel.layout import LaunchEnv, Layout, check_degrees
from .options import default_config, describe_loaded, load_pipeline

DEFAULT_TIMEOUT_S = 600.0
# How long a rank other than 0 stays after an error every rank hit, so that rank 0's line reaches stderr first.
REPORT_GRACE_S = 30.0
T = TypeVar("T")
logger = logging.getLogger(__name__)


class SetupError(BerniniError):
    """A bring-up error; ``every_rank`` is True when all ranks hit the same one (print it once)."""

    def __init__(self, message: str, every_rank: bool = True) -> None:
        super().__init__(message)
        self.every_rank = every_rank


def stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def setup_failed(
    exc: BaseException, rank: int, log: Callable[[str], None] = stderr_line, grace_s: float = REPORT_GRACE_S
) -> int:
    """A bring-up error as one ``error:`` line, said once, and the exit status 2 of bad usage: rank 0 prints one that
    every rank hit, any rank prints its own.

    torchrun stops the whole job as soon as one rank exits with an error, so a rank that exited at once could cut
    rank 0 off before its line is written (under load rank 0 is often the last to get there). The other ranks
    therefore wait: rank 0's exit ends the wait (torchrun stops them); if rank 0 never reports, they do.
    """
    if rank == 0 or not getattr(exc, "every_rank", True):
        log(f"error: {exc}")
        return 2
    try:
        time.sleep(grace_s)
    except KeyboardInterrupt:  # torchrun's SIGTERM, where a front end turns it into an interrupt
        return 2
    log(f"error: {exc}")
    return 2


def launch_env(environ: Mapping[str, str] = os.environ) -> LaunchEnv:
    return LaunchEnv.from_environ(environ)


def parallel_requested(args: argparse.Namespace, env: LaunchEnv) -> bool:
    return env.world > 1 or getattr(args, "ulysses", 1) > 1 or bool(getattr(args, "cfg_parallel", None))


def cfg_degree(args: argparse.Namespace) -> int:
    value = getattr(args, "cfg_parallel", None)
    return 2 if value is True else int(value or 1)


def timeout_s(args: argparse.Namespace) -> float:
    value = getattr(args, "dist_timeout", None)
    value = DEFAULT_TIMEOUT_S if value is None else float(value)
    if value <= 0:
        raise BerniniError(f"--dist_timeout must be positive, got {value}")
    return value


def _local_expert_configs(spec: str) -> list[Path] | None:
    """The experts' config files of a local bundle or config dir, found without importing torch."""
    root = Path(spec).expanduser()
    root = root.parent if root.is_file() else root
    bundle = BundleSpec.read(root) if root.is_dir() else None
    if bundle is not None and bundle.is_full:  # the full model keeps both experts' configs beside its config.json
        files = [root / "transformer_config.json", root / "transformer_2_config.json"]
        return files if all(f.is_file() for f in files) else None
    renderer = bundle.renderer_config() if bundle is not None else None
    if renderer is None:
        return None
    components = root
    if not all((root / name).is_dir() for name in ("tokenizer", "text_encoder", "vae")):
        components = Path(renderer.wan22_base).expanduser()
    skips = {"transformer": renderer.skip_transformer_1, "transformer_2": renderer.skip_transformer_2}
    files = [components / name / "config.json" for name, skip in skips.items() if not skip]
    return files if files and all(f.is_file() for f in files) else None


def model_heads(config: str | None) -> int:
    """Attention heads of the experts, read from their config files (no weights, no torch if local)."""
    spec = config or default_config()
    files = _local_expert_configs(spec) if spec else None
    if files is None:  # a hub id or an unusual layout: let the loader resolve it (and report problems)
        from ..loaders.loading import expert_names, resolve_model

        source = resolve_model(spec, allow_base_weights=True)  # heads only; the load itself checks the weights
        files = [source.components / name / "config.json" for name in expert_names(source.renderer)]
    try:
        counts = {int(read_json(f)["num_attention_heads"]) for f in files}
    except (KeyError, TypeError, ValueError):
        raise WeightsError(f"{files[0]} has no usable num_attention_heads") from None
    if len(counts) != 1:
        raise BerniniError(f"the experts disagree on their head count ({sorted(counts)}); cannot shard heads")
    return counts.pop()


@dataclass
class ParallelContext:
    """One layout's groups on this rank, and the group-wide steps a front end needs."""

    layout: Layout
    groups: Any  # parallel.groups.Groups
    timeout_s: float = DEFAULT_TIMEOUT_S
    _progress: Any = None

    @property
    def is_leader(self) -> bool:
        return self.layout.is_leader

    def agree(self, hold: Hold | None) -> Hold | None:
        """The first verdict any rank of the task group reached: all ranks then take the same branch."""
        from ..runtime.parallel.groups import agree

        return agree(hold, self.groups.task)

    def share(self, call: Callable[[], T]) -> T:
        """``call`` on the task group's leader only; its result (or user error) reaches every rank."""
        from ..runtime.parallel.groups import share

        return share(call, self.groups.task, self.layout.leader, self.layout.is_leader)

    def task_channel(self):
        """This task group's channel (:class:`~bernini.runtime.parallel.groups.RankZeroChannel`): its leader hands
        each task to the group's other ranks; disabled for a group of one rank."""
        from ..runtime.parallel.groups import RankZeroChannel

        task = self.groups.task
        return RankZeroChannel(task, self.layout.rank, enabled=task is not None, leader=self.layout.leader)

    def mark(self) -> None:
        """A progress mark (a step, a task boundary): rank 0's end-of-list wait sees this rank is alive."""
        if self.groups.control is not None:
            self.progress.mark()

    @property
    def progress(self):
        from ..runtime.parallel.groups import Progress

        if self._progress is None:
            self._progress = Progress.of_job(self.layout.rank, self.layout.world)
        return self._progress

    def finish(self, value: T) -> list[T]:
        """Rank 0: every rank's ``value`` at the end of its task list, waiting no longer than ``--dist_timeout``
        past any rank's last progress mark (:class:`~bernini.runtime.parallel.groups.PeerTimeout`); other ranks post
        theirs and get ``[value]`` without waiting."""
        if self.groups.control is None:
            return [value]
        self.progress.finish(value)
        if self.layout.rank != 0:
            return [value]
        return self.progress.collect(self.timeout_s)

    def install(self, pipe) -> None:
        """Point both experts at this rank's Ulysses group and the pipeline at its CFG runner."""
        from ..runtime.parallel.cfg import CfgParallelRunner
        from ..runtime.parallel.ulysses import UlyssesGroup
        from ..sampling.sampler import BranchRunner

        groups = self.groups
        sequence_parallel = UlyssesGroup.of(groups.ulysses) if groups.ulysses is not None else None
        for expert in pipe.experts:
            expert.configure(sequence_parallel=sequence_parallel)
        pipe.branch_runner = CfgParallelRunner.of(groups.cfg) if groups.cfg is not None else BranchRunner()
        pipe.share_planning = self.share_planning

    def share_planning(self, call: Callable[[], T]) -> T:
        """The full model's planner stage on the task group's leader only; every rank gets its contexts.
        ``--verbose`` logs ``planning on rank N`` where the planner runs."""

        def resolved() -> T:
            logger.info("planning on rank %d (task group %d)", self.layout.rank, self.layout.dp_rank)
            return call()

        return self.share(resolved)


class ParallelSession:
    """This process's membership in the job: the process group and this rank's device.

    Use as a context manager; layouts (:meth:`context`) are built inside it and share one control group.
    """

    def __init__(self, args: argparse.Namespace, env: LaunchEnv, layouts: list[tuple[int, int]]) -> None:
        from ..runtime.parallel.groups import rank_device

        self.args, self.env = args, env
        try:
            heads = model_heads(args.config)
            for ulysses, cfg in layouts:
                check_degrees(env.world, ulysses, cfg, heads)
            self.timeout = timeout_s(args)
        except BerniniError as exc:
            raise SetupError(str(exc)) from None
        try:
            self.device = rank_device(args.device, env.local_rank)
        except BerniniError as exc:  # may concern some ranks only; torchrun stops the others
            raise SetupError(f"rank {env.rank}: {exc}", every_rank=False) from None
        self.distributed = env.world > 1
        self._control = None

    def __enter__(self) -> ParallelSession:
        if self.distributed:
            from ..runtime.parallel.groups import init

            init(self.env, self.device, self.timeout)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.destroy_process_group()

    def context(self, ulysses: int, cfg: int) -> ParallelContext:
        from ..runtime.parallel.groups import Groups, build

        layout = Layout(self.env.world, self.env.rank, ulysses, cfg)
        if self.distributed:
            groups = build(layout, self.timeout, self._control)
            self._control = groups.control
        else:
            groups = Groups(layout, None, None, None, None)
        return ParallelContext(layout, groups, self.timeout)

    def warn_if_spanning_nodes(self, ulysses: int, log: Callable[[str], None]) -> None:
        if self.env.rank == 0 and self.env.spans_nodes(ulysses):
            log(
                f"warning: --ulysses {ulysses} does not divide the {self.env.local_world} processes per node; "
                "some Ulysses groups span two machines and their all-to-alls cross the network"
            )

    def load(self, context: ParallelContext, log: Callable[[str], None] | None = None, on_progress=None):
        """Every rank loads its pipeline; a user error on any rank stops all of them with that message."""
        from ..runtime.parallel.groups import agree

        pipe, problem = None, None
        start = time.perf_counter()
        try:
            pipe = load_pipeline(self.args, device=str(self.device), on_progress=on_progress)
        except BerniniError as exc:
            problem = f"rank {self.env.rank}: {exc}"
        problem = agree(problem, context.groups.control)
        if problem:
            raise SetupError(problem)
        pipe.set_progress_bar_config(disable=self.env.rank != 0)
        if log is not None and self.env.rank == 0:
            log(describe_loaded(pipe, time.perf_counter() - start))
        return pipe


@contextmanager
def parallel_run(
    args: argparse.Namespace, env: LaunchEnv, log: Callable[[str], None], on_progress=None
) -> Iterator[tuple[Any, ParallelContext]]:
    """The whole bring-up for one layout (``--ulysses``, ``--cfg_parallel``): yields the loaded, installed
    pipeline and its context; leaves the process group at exit."""
    ulysses, cfg = int(args.ulysses), cfg_degree(args)
    with ParallelSession(args, env, [(ulysses, cfg)]) as session:
        context = session.context(ulysses, cfg)
        if env.rank == 0:
            logger.info("parallel layout: %s", context.layout.describe())
        session.warn_if_spanning_nodes(ulysses, log)
        pipe = session.load(context, log, on_progress)
        context.install(pipe)
        yield pipe, context
