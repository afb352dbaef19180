"""Self-check: do parallel layouts reproduce the single-process latents on this setup?

``torchrun --nproc-per-node N -m bernini.frontends.parallel_check --layouts 2:1,1:2 [generate flags]`` loads the
pipeline once per rank, then for each ``ULYSSES:CFG`` layout runs the task list (``--inputs``, a case or
the flags) with the parallel runners and, on each task group's leader, once more with the plain
single-process code path, and compares the final latents. Rank 0 prints one line per task and
layout (max |difference|, the packed sequence lengths seen) and writes ``--report`` as JSON. The
exit status is 0 only when every task ran and every difference is within ``--tolerance``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import BerniniError
from ..resolved import ResolvedRequest
from ..runner import TaskListRunner, resolve_tasks
from ..runtime.parallel.cfg import branch_tokens
from ..runtime.parallel.groups import PeerTimeout
from ..sampling.sampler import BranchRunner
from .launch import ParallelContext, ParallelSession, SetupError, launch_env, report_setup_error
from .options import (
    OneLineErrorParser,
    add_generation_args,
    add_model_args,
    given_settings,
    model_defaults,
    quiet_libraries,
    requests_from_args,
)


def stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class RecordingRunner(BranchRunner):
    """The single-process runner, noting the packed length of every forward."""

    def __init__(self) -> None:
        self.lengths: set[int] = set()

    def __call__(self, expert, inputs, branches, latents, t):
        patch = tuple(expert.config.patch_size)
        self.lengths.update(branch_tokens(inputs, b, latents, patch) for b in branches)
        return super().__call__(expert, inputs, branches, latents, t)


@contextmanager
def single_process(pipe) -> Iterator[RecordingRunner]:
    """Temporarily take the pipeline off every collective (no Ulysses, branches one by one, the full model's
    planner run here rather than shared by the task group's leader)."""
    saved_groups = [(expert, expert.runtime.sequence_parallel) for expert in pipe.experts]
    saved_runner, saved_share = pipe.branch_runner, pipe.share_planning
    runner = RecordingRunner()
    for expert, _ in saved_groups:
        expert.configure(sequence_parallel=None)
    pipe.branch_runner = runner
    pipe.share_planning = _plan_here
    try:
        yield runner
    finally:
        for expert, group in saved_groups:
            expert.configure(sequence_parallel=group)
        pipe.branch_runner, pipe.share_planning = saved_runner, saved_share


def _plan_here(call):
    return call()


def parse_layouts(text: str) -> list[tuple[int, int]]:
    layouts = []
    for item in text.split(","):
        try:
            ulysses, cfg = (int(x) for x in item.split(":"))
        except ValueError:
            raise BerniniError(f"--layouts wants ULYSSES:CFG pairs like 2:1,1:2, got {item!r}") from None
        layouts.append((ulysses, cfg))
    return layouts


def build_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The check's own flags, and the ``generate`` flags it reads from the rest."""
    own = argparse.ArgumentParser(prog="python -m bernini.frontends.parallel_check", add_help=False, allow_abbrev=False)
    own.add_argument("--layouts", default=None, help="ULYSSES:CFG pairs (default: --ulysses and --cfg_parallel)")
    own.add_argument("--report", default=None, help="write the results as JSON here (rank 0)")
    own.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted |latent difference|")
    generate = OneLineErrorParser(prog="python -m bernini.frontends.parallel_check")
    add_model_args(generate)
    add_generation_args(generate)
    return own, generate


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, argparse.Namespace]:
    own, generate = build_parsers()
    check, rest = own.parse_known_args(argv)
    args = generate.parse_args(rest)
    args.given = given_settings(generate, rest)  # a full model's shipped settings fill only the others
    if args.use_pe:
        raise BerniniError("the self-check compares two runs of each task; it cannot use --use_pe")
    return check, args


class Checker:
    """Runs one layout's tasks and keeps the leader's comparison records."""

    def __init__(self, pipe, context: ParallelContext, label: str, references: dict):
        self.pipe, self.context, self.label = pipe, context, label
        self.records: list[dict[str, Any]] = []
        self.references = references  # shared by the layouts: a task's reference is computed once per rank

    def reference(self, index: int, resolved: ResolvedRequest) -> tuple[torch.Tensor, list[int]]:
        if index not in self.references:
            with single_process(self.pipe) as runner:
                latents = (
                    self.pipe.generate(resolved, output_type="latent", on_progress=self.mark).latents.float().cpu()
                )
            self.references[index] = latents, sorted(runner.lengths)
        return self.references[index]

    def mark(self, *_: Any) -> None:
        self.context.mark()

    def job(self, index: int, resolved: ResolvedRequest) -> None:
        self.mark()
        latents = self.pipe.generate(resolved, output_type="latent", on_progress=self.mark).latents.float().cpu()
        if not self.context.is_leader:
            return None
        reference, lengths = self.reference(index, resolved)
        self.records.append(
            {
                "task": index + 1,
                "layout": self.label,
                "task_type": resolved.task.name,
                "guidance_mode": resolved.guidance.mode.name,
                "sequence_lengths": lengths,
                "max_abs_diff": float((latents - reference).abs().max()),
                "reference_max_abs": float(reference.abs().max()),
            }
        )
        return None


def run_layout(pipe, tasks, context: ParallelContext, label: str, references: dict) -> tuple[list[dict], list[str]]:
    checker = Checker(pipe, context, label, references)
    context.install(pipe)
    runner = TaskListRunner(checker.job, stderr, agree=context.agree, reports=context.is_leader)
    failures = runner.run(tasks, context.layout.task_indices(len(tasks)))
    return checker.records, [f"layout {label} {line}" for _, line in sorted(failures.items())]


def main(argv: Sequence[str] | None = None) -> int:
    env = launch_env()
    try:
        check, args = parse_args(sys.argv[1:] if argv is None else argv)
        layouts = parse_layouts(check.layouts or f"{args.ulysses}:{args.cfg_parallel or 1}")
        tasks = resolve_tasks(requests_from_args(args), model_defaults(args))
        session = ParallelSession(args, env, layouts)
    except BerniniError as exc:
        report_setup_error(exc, env.rank, stderr)
        return 2
    quiet_libraries()
    records: list[dict] = []
    failures: list[str] = []
    try:
        with session:
            pipe, context = None, None
            references: dict = {}
            for ulysses, cfg in layouts:
                context = session.context(ulysses, cfg)
                if pipe is None:
                    pipe = session.load(context)
                    pipe.set_progress_bar_config(disable=True)
                found, failed = run_layout(pipe, tasks, context, f"{ulysses}:{cfg}", references)
                records += found
                failures += failed
            parts = context.finish({"records": records, "failures": failures})  # bounded by --dist_timeout
            records = [r for part in parts for r in part["records"]]
            failures = [f for part in parts for f in part["failures"]]
    except SetupError as exc:
        report_setup_error(exc, env.rank, stderr)
        return 2
    except PeerTimeout as exc:
        stderr(f"error: {exc}")
        return 1
    return report(records, failures, check, env.rank)


def report(records: list[dict], failures: list[str], check: argparse.Namespace, rank: int) -> int:
    bad = [r for r in records if not r["max_abs_diff"] <= check.tolerance]
    if rank == 0:
        records.sort(key=lambda r: (r["layout"], r["task"]))
        for r in records:
            print(
                f"layout {r['layout']} task {r['task']} {r['task_type']}/{r['guidance_mode']}: "
                f"max |diff| {r['max_abs_diff']:.3g} (latents up to {r['reference_max_abs']:.3g}; "
                f"packed lengths {r['sequence_lengths']})",
                flush=True,
            )
        for line in failures:
            stderr(f"error: {line}")
        verdict = "ok" if not bad and not failures else f"{len(bad)} mismatch(es), {len(failures)} failure(s)"
        print(f"check: {len(records)} comparison(s), {verdict}", flush=True)
        if check.report:
            Path(check.report).write_text(json.dumps({"records": records, "failures": failures}, indent=2) + "\n")
    return 1 if bad or failures else 0


if __name__ == "__main__":
    sys.exit(main())
