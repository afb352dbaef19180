"""``bernini generate`` / ``infer_multi_gpu.py`` under torchrun: a thin adapter over the job engine.

Every rank plans the same task list (the same arguments) and joins the job through the shared bring-up
(:mod:`bernini.frontends.launch`). In each task group the leader goes through its share of the list with the
shared task runner and hands each task it runs to the group's other ranks over the group protocol of
:class:`bernini.jobs.JobGroup` (announce, follow, the leader's stop decision obeyed at every step, shutdown at
the end of the list). Before a handed task runs, the group agrees on it: a task some rank could not plan or
probe (a file missing on its node) fails on all of them. Only the leader decodes, writes and reports.
Global rank 0 prints the summary; it waits for the other groups only while they keep making progress (every
step and task boundary is a mark), so a hung rank costs at most ``--dist_timeout``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..errors import BerniniError
from ..jobs import JobGroup
from ..runner import EnhancerBatch, Hold, Task, TaskListRunner, summarize
from ..runtime.parallel.groups import PeerTimeout
from .launch import SetupError, parallel_run, setup_failed, timeout_s
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

            group = JobGroup(context.task_channel())

            def job(index: int, resolved):
                context.mark()
                return group.run(
                    pipe,
                    resolved,
                    save_frames=args.save_frames if total == 1 else None,
                    enhancer=enhancer,
                    log=log if layout.is_leader else _silent,
                    extra_record=run_context(args, parallel),
                    on_progress=lambda *event: (context.mark(), on_progress(*event)),
                )

            if layout.is_leader:

                def lead(index: int, resolved):
                    group.announce("task", {"index": index, "plan": resolved})
                    hold = context.agree(None)  # a follower's own verdict (its node lacks a file) stops the task
                    if hold is not None:
                        raise BerniniError(hold.message)
                    return job(index, resolved)

                runner = TaskListRunner(lead, log, skip_existing=args.skip_existing)
                failures = runner.run(tasks, layout.task_indices(total))
                group.shutdown()
            else:  # a follower runs what its leader hands it; the leader reports the group's tasks

                def follow(message: dict[str, Any]):
                    own = tasks[message["index"]]  # planned and probed on this rank
                    if context.agree(Hold("error", str(own)) if isinstance(own, BerniniError) else None) is None:
                        return job(message["index"], message["plan"])

                group.follow("task", follow, survive_crashes=False)
                failures = {}
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
        return setup_failed(exc, env.rank, log)


def _silent(_line: str) -> None:
    """A follower's log: its leader reports the group's tasks."""
