"""Self-check: do parallel layouts reproduce the single-process latents on this setup?

``torchrun --nproc-per-node N -m bernini.parallel.check --layouts 2:1,1:2 [generate flags]`` loads the
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
import torch.distributed as dist

from ..errors import BerniniError
from ..request import GenerationRequest, validate
from ..sampler import BranchRunner
from . import groups as pg
from .cfg import branch_tokens
from .driver import model_heads, timeout_s
from .groups import Groups
from .layout import LaunchEnv, Layout, check_degrees
from .worker import install, load, run_tasks, stderr


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
    """Temporarily take the pipeline off every collective (no Ulysses, branches one by one)."""
    saved = [(e, e.runtime.sequence_parallel) for e in pipe.experts], pipe.branch_runner
    runner = RecordingRunner()
    for expert, _ in saved[0]:
        expert.configure(sequence_parallel=None)
    pipe.branch_runner = runner
    try:
        yield runner
    finally:
        for expert, sp in saved[0]:
            expert.configure(sequence_parallel=sp)
        pipe.branch_runner = saved[1]


def parse_layouts(text: str) -> list[tuple[int, int]]:
    layouts = []
    for item in text.split(","):
        try:
            ulysses, cfg = (int(x) for x in item.split(":"))
        except ValueError:
            raise BerniniError(f"--layouts wants ULYSSES:CFG pairs like 2:1,1:2, got {item!r}") from None
        layouts.append((ulysses, cfg))
    return layouts


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, argparse.Namespace]:
    from ..cli import build_parser

    own = argparse.ArgumentParser(prog="python -m bernini.parallel.check", add_help=False)
    own.add_argument("--layouts", default=None, help="ULYSSES:CFG pairs (default: --ulysses and --cfg_parallel)")
    own.add_argument("--report", default=None, help="write the results as JSON here (rank 0)")
    own.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted |latent difference|")
    check, rest = own.parse_known_args(argv)
    args = build_parser().parse_args(["generate", *rest])
    args.explicit = set()
    if args.use_pe:
        raise BerniniError("the self-check compares two runs of each task; it cannot use --use_pe")
    return check, args


class Checker:
    """Runs one layout's tasks and keeps the leader's comparison records."""

    def __init__(self, pipe, groups: Groups, label: str, references: dict[int, tuple[torch.Tensor, list[int]]]):
        self.pipe, self.groups, self.label = pipe, groups, label
        self.records: list[dict[str, Any]] = []
        self.references = references  # shared by the layouts: a task's reference is computed once per rank

    def reference(self, index: int, request: GenerationRequest) -> tuple[torch.Tensor, list[int]]:
        if index not in self.references:
            with single_process(self.pipe) as runner:
                latents = self.pipe.generate(request, output_type="latent").latents.float().cpu()
            self.references[index] = latents, sorted(runner.lengths)
        return self.references[index]

    def job(self, index: int, request: GenerationRequest) -> None:
        request = validate(request)
        latents = self.pipe.generate(request, output_type="latent").latents.float().cpu()
        if not self.groups.layout.is_leader:
            return
        reference, lengths = self.reference(index, request)
        self.records.append(
            {
                "task": index + 1,
                "layout": self.label,
                "task_type": request.task_type,
                "guidance_mode": request.guidance_mode,
                "sequence_lengths": lengths,
                "max_abs_diff": float((latents - reference).abs().max()),
                "reference_max_abs": float(reference.abs().max()),
            }
        )


def run_layout(pipe, requests, groups: Groups, label: str, references: dict) -> tuple[list[dict], list[str]]:
    checker = Checker(pipe, groups, label, references)
    install(pipe, groups)
    failures = run_tasks(requests, groups, checker.job)
    return checker.records, [f"layout {label} {line}" for _, line in sorted(failures.items())]


def main(argv: Sequence[str] | None = None) -> int:
    from ..cli import _quiet_libraries, requests_from_args

    env = LaunchEnv()
    try:
        env = LaunchEnv.from_environ()
        check, args = parse_args(sys.argv[1:] if argv is None else argv)
        layouts = parse_layouts(check.layouts or f"{args.ulysses}:{args.cfg_parallel or 1}")
        heads = model_heads(args.config)
        for ulysses, cfg in layouts:
            check_degrees(env.world, ulysses, cfg, heads)
        device = pg.rank_device(args.device, env.local_rank)
        timeout = timeout_s(args)
        requests = requests_from_args(args)
    except BerniniError as exc:
        if env.rank == 0:
            stderr(f"error: {exc}")
        return 2
    _quiet_libraries()
    distributed = env.world > 1
    if distributed:
        pg.init(env, device, timeout)
    try:
        control = None
        records: list[dict] = []
        failures: list[str] = []
        pipe = None
        references: dict = {}
        for ulysses, cfg in layouts:
            layout = Layout(env.world, env.rank, ulysses, cfg)
            groups = pg.build(layout, timeout, control) if distributed else Groups(layout, None, None, None, None)
            control = groups.control
            if pipe is None:
                pipe = load(args, device, control, env.rank)
                pipe.progress_bar = False
            found, failed = run_layout(pipe, requests, groups, f"{ulysses}:{cfg}", references)
            records += found
            failures += failed
        records = [r for part in pg.gather_all(records, control) for r in part]
        failures = [f for part in pg.gather_all(failures, control) for f in part]
    except BerniniError as exc:
        if env.rank == 0:
            stderr(f"error: {exc}")
        return 2
    finally:
        if distributed:
            dist.destroy_process_group()
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
