"""``bernini generate`` / ``infer_multi_gpu.py`` under torchrun.

Every rank plans the same task list (the same arguments), joins the job through the shared bring-up
(:mod:`bernini.frontends.launch`), and each task group runs its share of the list through the shared
task runner, agreeing on every task's outcome; only a group's leader decodes, writes and reports.
Global rank 0 prints the summary; it waits for the other groups only while they keep making progress
(every step and task boundary is a mark), so a hung rank costs at most ``--dist_timeout``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..runner import EnhancerBatch, Task, TaskListRunner, run_job, summarize
from ..runtime.parallel.groups import PeerTimeout
from .launch import SetupError, parallel_run, report_setup_error, timeout_s
from .options import enhancer_config, run_context


def run_parallel(args: argparse.Namespace, tasks: list[Task], env, log: Callable[[str], None]) -> int:
    """Run the task list over the job's ranks; returns this rank's exit status."""
    from .progress import ConsoleProgress

    shown = ConsoleProgress() if env.rank == 0 else None  # one rank shows the phases: lines never interleave

    def on_progress(phase: str, done: int, total: int) -> None:
        if shown is not None:
            shown(phase, done, total)

    try:
        with parallel_run(args, env, log, on_progress) as (pipe, context):
            layout = context.layout
            pipe.set_progress_bar_config(disable=True)
            total = len(tasks)
            parallel = {
                "world": layout.world,
                "ulysses": layout.ulysses,
                "cfg": layout.cfg,
                "layout": layout.describe(),
            }
            uses_pe = args.use_pe or any(getattr(t, "use_pe", False) for t in tasks)
            enhancer = EnhancerBatch(enhancer_config(args)) if uses_pe else None

            def job(index: int, resolved):
                context.mark()
                return run_job(
                    pipe,
                    resolved,
                    save_frames=args.save_frames if total == 1 else None,
                    enhancer=enhancer,
                    write=layout.is_leader,
                    log=log if layout.is_leader else None,
                    share=context.share,
                    extra_record=run_context(args, parallel),
                    on_progress=lambda *event: (context.mark(), on_progress(*event)),
                )

            runner = TaskListRunner(
                job,
                log,
                skip_existing=args.skip_existing,
                agree=context.agree,
                reports=layout.is_leader,
                checks_existing=layout.is_leader,
            )
            failures = runner.run(tasks, layout.task_indices(total))
            parts = context.finish({str(index): line for index, line in failures.items()})
            merged = {int(index): line for part in parts for index, line in part.items()}
            if layout.rank == 0:
                status = summarize(merged, total, log)
                log(shown.summary())
                return status
            return 1 if merged else 0
    except PeerTimeout as exc:
        log(f"error: {exc}")
        return 1
    except RuntimeError as exc:  # gloo and NCCL report a collective past its timeout as a RuntimeError
        if "timed out" not in str(exc).lower():
            raise
        log(
            f"error: rank {env.rank}: a peer of its group did not answer within --dist_timeout "
            f"({timeout_s(args):g} s): it is hung or stopped; giving up"
        )
        return 1
    except SetupError as exc:
        report_setup_error(exc, env.rank, log)
        return 2
