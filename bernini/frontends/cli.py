"""The ``bernini`` command: ``generate`` (upstream's flags), ``convert``, ``estimate`` (``plan``), ``tiny-bundle``,
``tasks``, ``demo``, ``serve`` and ``submit``.

A front end: it parses flags with the shared groups (:mod:`bernini.frontends.options`), plans every
task before the model loads, and runs the list through the shared task runner, or hands it to the
torchrun front end when a parallel run is asked for.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..errors import BerniniError
from ..sampling.guidance import GUIDANCE_MODES
from .convert import add_convert_parser, run_convert
from .estimate import add_estimate_parser, dry_run, run_estimate
from .options import (
    OneLineErrorParser,
    add_generation_args,
    add_model_args,
    bundle_spec,
    describe_loaded,
    load_pipeline,
    model_defaults,
    quiet_libraries,
    requests_from_args,
    required_enhancer_config,
    run_context,
)

if TYPE_CHECKING:  # the runner brings torch; --help and --version must not
    from ..runner import Task

logger = logging.getLogger("bernini")


def _add_verbose(parser: argparse.ArgumentParser, default: Any = False) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="log more; default: off")


def build_parser(generate_prog: str | None = None) -> argparse.ArgumentParser:
    """``bernini``'s parser; ``generate_prog`` names the generate command in its help and errors
    (``infer_single_gpu.py`` for the upstream scripts)."""
    parser = OneLineErrorParser(prog=generate_prog or "bernini", description="Bernini-R video generation and editing")
    parser.add_argument("--version", action="version", version=f"bernini {__version__}")
    _add_verbose(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")
    generate = sub.add_parser(
        "generate", prog=generate_prog, help="generate from flags, a case file or a task list (see docs/cli.md)"
    )
    add_model_args(generate)
    add_generation_args(generate)
    generate.add_argument(
        "--replay",
        default=None,
        metavar="OUTPUT.json",
        help="run again what a sidecar records, frame for frame (the enhancer is not called again)",
    )
    tiny = sub.add_parser("tiny-bundle", help="write a tiny random bundle in an upstream layout")
    tiny.add_argument("directory", help="folder to write (created if missing)")
    tiny.add_argument(
        "--layout",
        default="diffusers",
        choices=("diffusers", "separate", "single", "wan22", "full"),
        help="diffusers: Bernini-R-Diffusers; separate: config dir + Wan2.2 base + high/low checkpoints; "
        "single: the 1.3B single-expert layout; wan22: a plain Wan2.2 bundle (base weights); "
        "full: the full Bernini (planner + renderer) in the Bernini-Diffusers layout",
    )
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    tasks = sub.add_parser("tasks", help="list the tasks, their inputs and guidance modes with their defaults")
    add_convert_parser(sub)
    add_estimate_parser(sub)
    demo = sub.add_parser("demo", help="start the Gradio demo (bernini demo --help for its flags)")
    demo.add_argument("demo_args", nargs=argparse.REMAINDER, help="the demo's own flags")
    for name, what in (("serve", "serve jobs over HTTP (docs/serving.md)"), ("submit", "send jobs to a server")):
        stub = sub.add_parser(name, help=what, add_help=False)
        stub.add_argument(
            "rest", nargs=argparse.REMAINDER, help=f"the {name} command's own flags (bernini {name} --help)"
        )
    for child in (generate, tiny, tasks):  # -v also after the command; SUPPRESS keeps one given before it
        _add_verbose(child, argparse.SUPPRESS)
    return parser


def next_step(path: Path, layout: str) -> str:
    """What to run with a freshly written tiny bundle."""
    extra = ""
    if layout == "separate":
        ckpts = path.parent.parent / "Bernini-R"
        extra = (
            f" --high_noise_ckpt {ckpts / 'bernini_renderer_high'} --low_noise_ckpt {ckpts / 'bernini_renderer_low'}"
        )
    elif layout == "wan22":
        extra = " --allow_base_weights"
    elif layout == "full":
        extra = " --planning_step 4 --vit_denoising_step 2"
    return (
        f"next: bernini generate --config {path}{extra} --prompt 'a red fox runs across a snowy field' "
        "--num_frames 9 --height 64 --width 96 --num_inference_steps 4 --output outputs/tiny.mp4"
    )


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_pe_only(args: argparse.Namespace, tasks: list[Task]) -> int:
    """``--pe_only``: print each enhanced prompt (or the case file with it) for review, generate nothing."""
    from ..enhancer import case_with_prompt
    from ..io.media import preprocess_video, to_preview_frames
    from ..runner import make_enhancer

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
    from ..runner import EnhancerBatch, TaskListRunner, resolve_tasks, run_job, summarize

    if args.replay:
        from .replay import replay_requests

        requests = replay_requests(args)
    else:
        requests = requests_from_args(args)
    bundle = bundle_spec(args)  # the bundle's files are read once, here, for the whole run
    tasks = resolve_tasks(requests, model_defaults(args, bundle))
    if len(tasks) == 1 and isinstance(tasks[0], BerniniError):
        raise tasks[0]
    uses_pe = args.pe_only or any(not isinstance(t, BerniniError) and t.use_pe for t in tasks)
    enhancer = EnhancerBatch(required_enhancer_config(args)) if uses_pe else None
    quiet_libraries()
    if getattr(args, "dry_run", False):
        return dry_run(args, tasks, bundle=bundle)
    if args.pe_only:
        return run_pe_only(args, tasks)
    tasks, runnable = preflight_outputs(args, tasks)
    if not runnable:  # nothing to run: never load the model
        failures = TaskListRunner(lambda i, p: None, _stderr, skip_existing=args.skip_existing).run(tasks)
        return 2 if summarize(failures, len(tasks), _stderr) else 0
    from .launch import launch_env, parallel_requested

    env = launch_env()
    if parallel_requested(args, env):
        from .torchrun import run_parallel

        return run_parallel(args, tasks, env, _stderr)
    from .progress import ConsoleProgress, SizeAdvice

    progress, advice = ConsoleProgress(sys.stderr), SizeAdvice()
    start = time.perf_counter()
    pipe = load_pipeline(args, on_progress=progress, bundle=bundle)
    pipe.set_progress_bar_config(disable=True)  # the console hook shows denoising instead
    _stderr(describe_loaded(pipe, time.perf_counter() - start))

    def job(index: int, resolved):
        note = advice(pipe, resolved)
        if note:
            _stderr(note)
        return run_job(
            pipe,
            resolved,
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


def preflight_outputs(args: argparse.Namespace, tasks: list[Task]) -> tuple[list[Task], list[int]]:
    """Check every output before loading (see :mod:`bernini.preflight`); the upstream scripts overwrite."""
    from ..preflight import check_outputs

    script = getattr(args, "upstream_script", None)
    checked = check_outputs(
        tasks,
        overwrite=args.overwrite or script is not None,
        skip_existing=args.skip_existing,
        save_frames=args.save_frames if len(tasks) == 1 else None,
    )
    if len(tasks) == 1 and isinstance(checked.tasks[0], BerniniError):
        raise checked.tasks[0]
    if checked.replaced and not args.overwrite:
        count, first = len(checked.replaced), checked.replaced[0]
        if script is not None:
            _stderr(
                f"note: {script} replaces existing outputs as upstream's does ({count} file(s), e.g. {first}); "
                "`bernini generate` keeps them unless --overwrite"
            )
        else:
            _stderr(f"note: --skip_existing redoes {count} unfinished output(s) without a sidecar, e.g. {first}")
    return checked.tasks, checked.runnable


def task_inputs(spec: dict[str, Any]) -> str:
    """A task's inputs in flag form, e.g. ``--video (1+), --image, --images (optional)``."""
    parts = ["--prompt"]
    if spec["video"] != "none":
        parts.append("--video (1+)")
    if spec["image"]:
        parts.append("--image")
    if spec["images"] != "none":
        parts.append("--images")
    return " ".join(parts)


def full_model_mode(task: str) -> str:
    """The guidance mode the full model's shipped settings give ``task`` (``v1 X / v2 Y`` where the releases differ)."""
    from ..sampling.full_presets import FULL_PRESETS, VERSIONS

    modes = {version: FULL_PRESETS[version][task].guidance_mode for version in VERSIONS}
    if len(set(modes.values())) == 1:
        return next(iter(modes.values()))
    return " / ".join(f"{version} {mode}" for version, mode in modes.items())


def print_tasks() -> int:
    from ..sampling.guidance import FULL_MODEL_MODES
    from ..tasks import TASKS, tasks_table

    table = tasks_table()
    full = {name: full_model_mode(name) for name in table}
    width = max(len("full model"), *(len(mode) for mode in full.values()))
    print(f"{'task':6s} {'Bernini-R':9s} {'full model':{width}s} what it does")
    for name, spec in table.items():
        needs = TASKS[name]
        required = "needs a source image" if needs.needs_image else ""
        required = required or ("needs --image or --images" if needs.needs_references else "")
        output = "one frame (PNG)" if spec["single_frame"] else "video (MP4)"
        print(
            f"{name:6s} {spec['guidance_mode']:9s} {full[name]:{width}s} {spec['description']}; "
            f"inputs: {task_inputs(spec)}" + (f" ({required})" if required else "") + f"; output: {output}"
        )
    print(
        "guidance modes, Bernini-R: "
        + ", ".join(f"{name} ({_forwards(mode.forwards_per_step)})" for name, mode in GUIDANCE_MODES.items())
    )
    print(
        "guidance modes, full model (a --config whose config.json says model_type bernini; zero-weight and "
        "repeated branches are skipped): "
        + ", ".join(f"{name} (up to {_forwards(mode.forwards_per_step)})" for name, mode in FULL_MODEL_MODES.items())
    )
    return 0


def _forwards(count: int) -> str:
    return f"{count} forward{'s' if count != 1 else ''}/step"


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the process is so it unwinds like Ctrl-C: temporary files go, nothing partial
    stays. The exit status is ``128 + signum``, as if the signal had killed the process."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = int(signum)


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(signum)


TERMINATING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
"""Handled like Ctrl-C: SIGHUP too, so closing the terminal (or losing the SSH session) leaves nothing partial."""


def main(argv: Sequence[str] | None = None, upstream_script: str | None = None) -> int:
    command_line = shlex.join(sys.argv if argv is None else ["bernini", *argv])
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:  # argparse's REMAINDER rejects a leading --flag; the demo parses its own flags
        from .demo import main as demo_main

        return demo_main(argv[1:])
    if argv[:1] == ["serve"]:
        from .serve.server import main as serve_main

        return serve_main(argv[1:])
    if argv[:1] == ["submit"]:
        from .serve.client import main as submit_main

        return submit_main(argv[1:])
    parser = build_parser(upstream_script)
    args = parser.parse_args(argv)
    args.upstream_script = upstream_script
    args.command_line = command_line
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:  # a signal already ignored stays ignored (``nohup`` ignores SIGHUP so that the run outlives the terminal)
        previous = {
            signum: signal.signal(signum, _terminate)
            for signum in TERMINATING_SIGNALS
            if signal.getsignal(signum) is not signal.SIG_IGN
        }
    except ValueError:  # not the main thread (an embedding application): leave its handlers alone
        return run_command(args)
    try:
        return run_command(args)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; user errors exit 2, Ctrl-C 130, SIGTERM 143, SIGHUP 129, each with one line."""
    try:
        if args.command == "tiny-bundle":
            from ..tiny.bundle import write_tiny_bundle

            quiet_libraries()
            if args.layout == "full":
                from ..tiny.full import write_tiny_full_bundle

                path = write_tiny_full_bundle(args.directory, args.seed)
            else:
                path = write_tiny_bundle(args.directory, args.layout, args.seed)
            print(path)
            _stderr(next_step(path, args.layout))
            return 0
        if args.command == "tasks":
            return print_tasks()
        if args.command in ("estimate", "plan"):
            return run_estimate(args)
        if args.command == "convert":
            quiet_libraries()
            return run_convert(args, _stderr)
        if args.command == "demo":
            from .demo import main as demo_main

            return demo_main(args.demo_args)
        return run_generate(args)
    except BerniniError as exc:
        _stderr(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _stderr("interrupted; no partial output was kept")
        return 130
    except Terminated as exc:
        try:  # after a hang-up the terminal may be gone: the exit status still says what happened
            _stderr(f"terminated ({signal.Signals(exc.signum).name}); no partial output was kept")
        except OSError:
            pass
        return 128 + exc.signum


def upstream_script_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``infer_single_gpu.py`` / ``infer_multi_gpu.py``: the same flags as ``bernini generate``.

    As upstream's scripts, they replace existing outputs (with one ``note:`` line saying so).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    return main(["generate", *argv], upstream_script=prog or Path(sys.argv[0]).name or "infer_single_gpu.py")


if __name__ == "__main__":
    sys.exit(main())
