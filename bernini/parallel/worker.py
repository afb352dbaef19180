"""Per-rank work under torchrun: load, install the parallel runners, run this group's tasks, summarize.

Per task, every rank of the group first checks the request and its media files and the group agrees
on the outcome, so a bad task is skipped by all its ranks together instead of leaving some waiting in
a collective; after the job the group agrees again, so a user error raised by every rank inside the
job (a corrupt video) is reported once and the group goes on. Only the leader decodes and writes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist

from ..errors import BerniniError, MediaError
from ..request import GenerationRequest, validate
from . import groups as pg
from .cfg import CfgParallelRunner
from .groups import Groups
from .ulysses import UlyssesGroup

Outcome = tuple[str, str] | None  # ("error" | "skip", message) or None when the task may run
Job = Callable[[int, GenerationRequest], None]  # (task index, request)


def stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load(args: argparse.Namespace, device, control: dist.ProcessGroup | None, rank: int):
    """Every rank loads its pipeline; a user error on any rank stops all of them with that message."""
    from ..cli import load_pipeline

    pipe, problem = None, None
    try:
        pipe = load_pipeline(argparse.Namespace(**{**vars(args), "device": str(device)}))
    except BerniniError as exc:
        problem = f"rank {rank}: {exc}"
    problem = pg.agree(problem, control)
    if problem:
        raise BerniniError(problem)
    return pipe


def install(pipe, groups: Groups) -> None:
    """Point both experts at this rank's Ulysses group and the pipeline at its CFG runner."""
    from ..sampler import BranchRunner

    sp = UlyssesGroup.of(groups.ulysses) if groups.ulysses is not None else None
    for expert in pipe.experts:
        expert.configure(sequence_parallel=sp)
    pipe.branch_runner = CfgParallelRunner.of(groups.cfg) if groups.cfg is not None else BranchRunner()


def check_media(request: GenerationRequest) -> None:
    """The cheap part of media loading: every path exists and is a non-empty file."""
    items = [("video", v) for v in request.video] + [("image", i) for i in [request.image, *request.images]]
    for kind, item in items:
        if not isinstance(item, (str, Path)):
            continue
        path = Path(item).expanduser()
        if not path.exists():
            raise MediaError(f"{kind} file not found: {path}; check the path")
        if not path.is_file() or path.stat().st_size == 0:
            raise MediaError(f"{kind} path {path} is not a non-empty file; give the {kind} file itself")


def precheck(request: GenerationRequest | BerniniError, skip_existing: bool, is_leader: bool) -> Outcome:
    """What this rank knows about a task before it starts (no collectives)."""
    from ..runner import existing_output

    if isinstance(request, BerniniError):
        return ("error", str(request))
    try:
        request = validate(request)
        if not request.output:
            raise BerniniError("no output path given; pass --output PATH")
        check_media(request)
    except BerniniError as exc:
        return ("error", str(exc))
    if is_leader and skip_existing and existing_output(request.output):
        return ("skip", f"{request.output} exists, skipped")
    return None


def run_tasks(
    requests: list[GenerationRequest | BerniniError], groups: Groups, job: Job, skip_existing: bool = False
) -> dict[int, str]:
    """This task group's share of the list; returns its failure lines by task index (leader only)."""
    layout = groups.layout
    total = len(requests)
    failures: dict[int, str] = {}
    for index in layout.task_indices(total):
        label = f"task {index + 1}/{total}"
        request = requests[index]
        outcome = pg.agree(precheck(request, skip_existing, layout.is_leader), groups.task)
        if outcome is None:
            try:
                job(index, request)
            except BerniniError as exc:
                outcome = ("error", str(exc))
            outcome = pg.agree(outcome, groups.task)
        if outcome is None or not layout.is_leader:
            continue
        kind, message = outcome
        if kind == "skip":
            stderr(f"{label}: {message}")
        else:
            failures[index] = f"{label}: {message}"
            stderr(f"error: {label}: {message}")
    return failures


def generation_job(pipe, args: argparse.Namespace, groups: Groups, total: int) -> Job:
    """The leader runs the normal job (decode, write, sidecar); the others compute latents only."""
    from ..runner import run_job

    layout = groups.layout

    def share(fn):
        return pg.share(fn, groups.task, layout.leader, layout.is_leader)

    def job(index: int, request: GenerationRequest) -> None:
        result = run_job(
            pipe,
            request,
            save_frames=args.save_frames if total == 1 else None,
            use_pe=args.use_pe,
            pe_model=args.pe_model,
            write=layout.is_leader,
            log=stderr if layout.is_leader else None,
            share=share,
        )
        if layout.is_leader:
            stderr(f"task {index + 1}/{total}: wrote {result.output}")

    return job


def summarize(failures: dict[int, str], total: int, groups: Groups) -> int:
    """Gather the leaders' failure lines; rank 0 prints the summary. Returns the exit code."""
    merged = {index: line for part in pg.gather_all(failures, groups.control) for index, line in part.items()}
    everything = [merged[index] for index in sorted(merged)]
    if groups.layout.rank == 0 and (total > 1 or everything):
        done = total - len(everything)
        tail = f", {len(everything)} failed:" if everything else ""
        stderr(f"summary: {done} of {total} task(s) succeeded{tail}")
        for line in everything:
            stderr(f"  {line}")
    return 1 if everything else 0
