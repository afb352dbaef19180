"""The ``bernini`` command: ``generate`` (upstream's flags), ``tiny-bundle``, ``tasks`` and ``demo``.

A front end: it parses flags with the shared groups (:mod:`bernini.frontends.options`), plans every
task before the model loads, and runs the list through the shared task runner, or hands it to the
torchrun front end when a parallel run is asked for.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import BerniniError
from .frontends.options import (
    OneLineErrorParser,
    add_generation_args,
    add_model_args,
    describe_loaded,
    explicit_flags,
    full_bernini_flags,
    load_pipeline,
    model_defaults,
    quiet_libraries,
    requests_from_args,
    required_enhancer_config,
    run_context,
)
from .guidance import GUIDANCE_MODES
from .runner import EnhancerBatch, Task, TaskListRunner, plan_tasks, run_job, summarize

logger = logging.getLogger("bernini")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="bernini", description="Bernini-R video generation and editing")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    generate = sub.add_parser("generate", help="generate from flags, a case file or a task list")
    add_model_args(generate)
    add_generation_args(generate)
    generate.add_argument(
        "--replay",
        default=None,
        metavar="OUTPUT.json",
        help="run again what a sidecar records, frame for frame (the enhancer is not called again)",
    )
    tiny = sub.add_parser("tiny-bundle", help="write a tiny random bundle in an upstream layout")
    tiny.add_argument("directory")
    tiny.add_argument("--layout", default="diffusers", choices=("diffusers", "separate", "single", "wan22"))
    tiny.add_argument("--seed", type=int, default=0)
    sub.add_parser("tasks", help="list the tasks and guidance modes with their defaults")
    demo = sub.add_parser("demo", help="start the Gradio demo")
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)
    return parser


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_pe_only(args: argparse.Namespace, tasks: list[Task]) -> int:
    """``--pe_only``: print each enhanced prompt (or the case file with it) for review, generate nothing."""
    from .enhancer import case_with_prompt
    from .media import preprocess_video, to_preview_frames
    from .runner import make_enhancer

    enhance = make_enhancer(required_enhancer_config(args), _stderr)
    failures = 0
    for task in tasks:
        if isinstance(task, BerniniError):
            _stderr(f"error: {task}")
            failures += 1
            continue
        media = task.media
        try:
            previews = [
                to_preview_frames(preprocess_video(item, media.fps, task.geometry.frames, media.max_image_size))
                for item in media.video
            ]
        except BerniniError as exc:
            _stderr(f"error: {exc}")
            failures += 1
            continue
        prompt, _ = enhance(task, previews)
        if args.case:
            case = case_with_prompt(json.loads(Path(args.case).read_text(encoding="utf-8")), prompt)
            print(json.dumps(case, indent=2, ensure_ascii=False))
        else:
            print(prompt)
    return 1 if failures else 0


def run_generate(args: argparse.Namespace) -> int:
    ignored = full_bernini_flags(args)
    if ignored:
        _stderr(f"note: {', '.join(ignored)} only affect the full Bernini model; ignored")
    if args.replay:
        from .frontends.replay import replay_requests

        requests = replay_requests(args)
    else:
        requests = requests_from_args(args)
    tasks = plan_tasks(requests, model_defaults(args))
    if len(tasks) == 1 and isinstance(tasks[0], BerniniError):
        raise tasks[0]
    uses_pe = args.pe_only or any(not isinstance(t, BerniniError) and t.use_pe for t in tasks)
    enhancer = EnhancerBatch(required_enhancer_config(args)) if uses_pe else None
    quiet_libraries()
    if args.pe_only:
        return run_pe_only(args, tasks)
    from .frontends.launch import launch_env, parallel_requested

    env = launch_env()
    if parallel_requested(args, env):
        from .frontends.torchrun import run_parallel

        return run_parallel(args, tasks, env, _stderr)
    if all(isinstance(t, BerniniError) for t in tasks):
        return summarize(TaskListRunner(lambda i, p: None, _stderr).run(tasks), len(tasks), _stderr)
    from .frontends.progress import ConsoleProgress, SizeAdvice

    progress, advice = ConsoleProgress(sys.stderr), SizeAdvice()
    start = time.perf_counter()
    pipe = load_pipeline(args, on_progress=progress)
    pipe.set_progress_bar_config(disable=True)  # the console hook shows denoising instead
    _stderr(describe_loaded(pipe, time.perf_counter() - start))

    def job(index: int, plan):
        note = advice(pipe, plan)
        if note:
            _stderr(note)
        return run_job(
            pipe,
            plan,
            save_frames=args.save_frames if len(tasks) == 1 else None,
            enhancer=enhancer,
            log=_stderr,
            extra_record=run_context(args),
            on_progress=progress,
        )

    failures = TaskListRunner(job, _stderr, skip_existing=args.skip_existing).run(tasks)
    status = summarize(failures, len(tasks), _stderr)
    _stderr(progress.summary())
    return status


def print_tasks() -> int:
    from .pipeline import tasks_table

    for name, spec in tasks_table().items():
        print(f"{name:6s} guidance {spec['guidance_mode']:9s} {spec['description']}")
    print(
        "guidance modes: "
        + ", ".join(f"{name} ({mode.forwards_per_step} forwards/step)" for name, mode in GUIDANCE_MODES.items())
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    command_line = shlex.join(sys.argv if argv is None else ["bernini", *argv])
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:  # argparse's REMAINDER rejects a leading --flag; the demo parses its own flags
        from .demo import main as demo_main

        return demo_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    args.explicit = explicit_flags(argv)
    args.command_line = command_line
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        if args.command == "tiny-bundle":
            from .tiny import write_tiny_bundle

            quiet_libraries()
            path = write_tiny_bundle(args.directory, args.layout, args.seed)
            print(path)
            return 0
        if args.command == "tasks":
            return print_tasks()
        if args.command == "demo":
            from .demo import main as demo_main

            return demo_main(args.demo_args)
        return run_generate(args)
    except BerniniError as exc:
        _stderr(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _stderr("interrupted")
        return 130


def upstream_script_main(argv: Sequence[str] | None = None) -> int:
    """``infer_single_gpu.py`` / ``infer_multi_gpu.py``: the same flags as ``bernini generate``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return main(["generate", *argv])


if __name__ == "__main__":
    sys.exit(main())
