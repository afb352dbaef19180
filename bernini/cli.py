"""The ``bernini`` command: ``generate`` (upstream's flags), ``tiny-bundle``, ``tasks`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

from .errors import BerniniError
from .request import (
    CASE_KEYS,
    WAN_NEGATIVE_PROMPT,
    GenerationRequest,
    load_case,
    load_task_list,
    numbered_output,
    validate,
)
from .tasks import GUIDANCE_MODES, TASKS

logger = logging.getLogger("bernini")
DEFAULT_OUTPUT = "outputs/output.mp4"
DEFAULT_CONFIG = "configs/bernini_renderer_wan22"
IGNORED_FULL_BERNINI = ("omega_tgt", "planning_step", "vit_txt_cfg", "vit_img_cfg", "vit_denoising_step")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--config",
        "--model",
        dest="config",
        default=None,
        help="bundle directory, config directory or Hugging Face repo id (default: "
        f"{DEFAULT_CONFIG} when it exists, else ByteDance/Bernini-R-Diffusers)",
    )
    group.add_argument("--high_noise_ckpt", default=None, help="separate high-noise expert (dir, index, file, repo id)")
    group.add_argument("--low_noise_ckpt", default=None, help="separate low-noise expert (dir, index, file, repo id)")
    group.add_argument(
        "--use_unipc",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="UniPC (default) or flow-match Euler with --no-use_unipc",
    )
    group.add_argument(
        "--use_src_tgt_id",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="segment-aware source-id RoPE phase (default on)",
    )
    group.add_argument(
        "--interpolate_src_id",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fractional ids linspace(1, max) for more than --max_trained_src_id conditions",
    )
    group.add_argument("--max_trained_src_id", type=int, default=5)
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda when available)")
    group.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32")
    group.add_argument(
        "--offload",
        default="auto",
        choices=("auto", "none", "model", "blocks"),
        help="none: all on the device; model: idle models wait on the CPU; blocks: experts stream block by "
        "block (GPUs smaller than one expert); auto: by the device memory",
    )
    group.add_argument("--attention", default="auto", choices=("auto", "fa3", "fa2", "sdpa"))
    group.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks (slow first step)")


def add_generation_args(parser: argparse.ArgumentParser) -> None:
    d = GenerationRequest()
    group = parser.add_argument_group("inputs")
    group.add_argument("--prompt", default=None)
    group.add_argument(
        "--task_type",
        default=None,
        choices=sorted(TASKS),
        help="default: the case's, else inferred from the media given",
    )
    group.add_argument(
        "--guidance_mode", default=None, choices=GUIDANCE_MODES, help="default: the case's, else the task's default"
    )
    group.add_argument("--video", nargs="+", default=None)
    group.add_argument("--image", default=None)
    group.add_argument("--images", nargs="+", default=None)
    group.add_argument("--output", default=None, help=f"output file (default {DEFAULT_OUTPUT}; .png for one frame)")
    group.add_argument("--case", default=None, help="a case file (JSON object)")
    group.add_argument("--inputs", default=None, help="a task list (.jsonl or .json array)")
    group.add_argument("--save_frames", default=None, metavar="DIR", help="also write every frame as PNG into DIR")
    group.add_argument("--skip_existing", action="store_true", help="skip tasks whose output and sidecar exist")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--seed", type=int, default=d.seed)
    gen.add_argument("--num_frames", type=int, default=d.num_frames)
    gen.add_argument("--num_inference_steps", type=int, default=d.num_inference_steps)
    gen.add_argument("--flow_shift", type=float, default=d.flow_shift)
    gen.add_argument("--omega_vid", "--omega_V", dest="omega_vid", type=float, default=d.omega_vid)
    gen.add_argument("--omega_img", "--omega_I", dest="omega_img", type=float, default=d.omega_img)
    gen.add_argument("--omega_txt", "--omega_TI", dest="omega_txt", type=float, default=d.omega_txt)
    gen.add_argument("--omega_scale", type=float, default=d.omega_scale)
    gen.add_argument("--eta", type=float, default=d.eta)
    gen.add_argument("--norm_threshold", type=float, nargs="+", default=list(d.norm_threshold))
    gen.add_argument("--momentum", type=float, default=d.momentum)
    gen.add_argument("--fps", type=float, default=d.fps)
    gen.add_argument("--max_image_size", type=int, default=d.max_image_size)
    gen.add_argument("--height", type=int, default=d.height)
    gen.add_argument("--width", type=int, default=d.width)
    gen.add_argument("--neg_prompt", default=WAN_NEGATIVE_PROMPT)
    gen.add_argument("--system_prompt", default="", help="T5 prefix (default: the task's)")
    for name in IGNORED_FULL_BERNINI:
        gen.add_argument(f"--{name}", type=float, default=None, help=argparse.SUPPRESS)
    pe = add_pe_args(parser, "rewrite prompts with an OpenAI-compatible model")
    pe.add_argument("--pe_only", action="store_true", help="print the enhanced prompt (or case) and stop")
    add_parallel_args(parser)


def add_pe_args(parser: argparse.ArgumentParser, use_help: str) -> argparse._ArgumentGroup:
    pe = parser.add_argument_group("prompt enhancer")
    pe.add_argument("--use_pe", action="store_true", help=use_help)
    pe.add_argument("--pe_model", default=None, help="model name (default: $BERNINI_PE_MODEL or the built-in one)")
    return pe


def add_parallel_args(parser: argparse.ArgumentParser) -> None:
    par = parser.add_argument_group("parallel (torchrun)")
    par.add_argument("--ulysses", type=int, default=1, help="Ulysses sequence-parallel degree")
    par.add_argument(
        "--cfg_parallel",
        type=int,
        nargs="?",
        const=2,
        default=None,
        metavar="C",
        help="run the guidance branches on C ranks (default 2 when given)",
    )
    par.add_argument("--dist_timeout", type=float, default=600.0, help="seconds a collective may wait for a peer")


class _OneLineErrors(argparse.ArgumentParser):
    """Usage errors as one ``error: ...`` line (argparse would print the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(prog="bernini", description="Bernini-R video generation and editing")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    generate = sub.add_parser("generate", help="generate from flags, a case file or a task list")
    add_model_args(generate)
    add_generation_args(generate)
    tiny = sub.add_parser("tiny-bundle", help="write a tiny random bundle in an upstream layout")
    tiny.add_argument("directory")
    tiny.add_argument("--layout", default="diffusers", choices=("diffusers", "separate", "single", "wan22"))
    tiny.add_argument("--seed", type=int, default=0)
    sub.add_parser("tasks", help="list the tasks and guidance modes with their defaults")
    demo = sub.add_parser("demo", help="start the Gradio demo")
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)
    return parser


def _given(argv: Sequence[str], *names: str) -> bool:
    return any(arg == name or arg.startswith(name + "=") for arg in argv for name in names)


def requests_from_args(args: argparse.Namespace) -> list[GenerationRequest | BerniniError]:
    """Tasks from ``--inputs``, ``--case`` or the flags, with per-task outputs that never collide."""
    if args.case and args.inputs:
        raise BerniniError("--case cannot be combined with --inputs")
    base: dict[str, Any] = {f.name: getattr(args, f.name) for f in fields(GenerationRequest) if hasattr(args, f.name)}
    for key in ("video", "images"):
        base[key] = base.get(key) or []
    if args.inputs:
        tasks = load_task_list(args.inputs)
        output = args.output or DEFAULT_OUTPUT
        out: list[GenerationRequest | BerniniError] = []
        for index, task in enumerate(tasks):
            if isinstance(task, BerniniError):
                out.append(task)
                continue
            merged = {**base, **{k: v for k, v in task.items() if v is not None}}
            merged["output"] = task.get("output") or numbered_output(output, index, len(tasks))
            out.append(GenerationRequest(**merged))
        return out
    if args.case:
        case = load_case(args.case)
        for key in CASE_KEYS:
            flag_value = getattr(args, key, None)
            if key in case and not (flag_value not in (None, []) and key in args.explicit):
                base[key] = case[key]
    if not base.get("prompt"):
        raise BerniniError("a prompt is required: pass --prompt TEXT, --case FILE or --inputs FILE")
    base["output"] = base.get("output") or DEFAULT_OUTPUT
    return [GenerationRequest(**base)]


def _explicit_flags(argv: Sequence[str]) -> set[str]:
    names = {"task_type", "guidance_mode", "prompt", "video", "image", "images", "output"}
    return {n for n in names if _given(argv, f"--{n}")}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def default_config() -> str | None:
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_dir() else None


def load_pipeline(args: argparse.Namespace):
    from .pipeline import BerniniPipeline

    return BerniniPipeline.from_pretrained(
        args.config or default_config(),
        dtype=args.dtype,
        device=args.device,
        high_noise_ckpt=args.high_noise_ckpt,
        low_noise_ckpt=args.low_noise_ckpt,
        offload=args.offload,
        attention=args.attention,
        compile=args.compile,
    )


def run_pe_only(args: argparse.Namespace, requests: list[GenerationRequest | BerniniError]) -> int:
    """``--pe_only``: print each enhanced prompt (or the case file with it) for review, generate nothing."""
    from .enhancer import case_with_prompt
    from .media import preprocess_video, to_preview_frames
    from .runner import make_enhancer

    enhance = make_enhancer(args.pe_model, _stderr)
    failures = 0
    for request in requests:
        try:
            if isinstance(request, BerniniError):
                raise request
            request = validate(request)
            previews = [
                to_preview_frames(preprocess_video(item, request.fps, request.num_frames, request.max_image_size))
                for item in request.video
            ]
        except BerniniError as exc:
            _stderr(f"error: {exc}")
            failures += 1
            continue
        prompt, _ = enhance(request, previews)
        if args.case:
            case = case_with_prompt(json.loads(Path(args.case).read_text(encoding="utf-8")), prompt)
            print(json.dumps(case, indent=2, ensure_ascii=False))
        else:
            print(prompt)
    return 1 if failures else 0


def _checked(request: GenerationRequest | BerniniError) -> GenerationRequest | BerniniError:
    """Validate a task and probe its media files before any model loads; a failure stays in its slot."""
    if isinstance(request, BerniniError):
        return request
    from .media import probe_media

    try:
        request = validate(request)
        for kind, items in (("video", request.video), ("image", [request.image]), ("image", request.images)):
            for item in items:
                if item is not None:
                    probe_media(item, kind)
    except BerniniError as exc:
        return exc
    return request


def run_generate(args: argparse.Namespace) -> int:
    ignored = [n for n in IGNORED_FULL_BERNINI if getattr(args, n, None) is not None]
    if ignored:
        _stderr(f"note: {', '.join('--' + n for n in ignored)} only affect the full Bernini model; ignored")
    requests = requests_from_args(args)
    if len(requests) == 1 and isinstance(requests[0], GenerationRequest):
        validate(requests[0])  # fail on bad input before the slow imports and model load
    requests = [_checked(r) for r in requests]
    if len(requests) == 1 and isinstance(requests[0], BerniniError):
        raise requests[0]
    _quiet_libraries()
    if args.pe_only:
        return run_pe_only(args, requests)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 or args.ulysses > 1 or args.cfg_parallel:
        from .parallel.driver import run_parallel

        return run_parallel(args, requests)
    if all(isinstance(r, BerniniError) for r in requests):
        return 1 if run_batch(None, requests, args) else 0
    start = time.perf_counter()
    pipe = load_pipeline(args)
    _stderr(
        f"loaded {pipe.source.spec} in {time.perf_counter() - start:.1f} s: device {pipe.device}, "
        f"{str(pipe.dtype).replace('torch.', '')}, attention {pipe.attention_backend.name}, "
        f"offload {pipe.offload}"
    )
    failures = run_batch(pipe, requests, args)
    return 1 if failures else 0


def run_batch(pipe, requests: list, args: argparse.Namespace, *, write: bool = True, share=None) -> list[str]:
    """Run tasks in order; a bad task is reported and the rest go on. Returns the failure lines."""
    from .runner import existing_output, run_job

    failures: list[str] = []
    total = len(requests)
    for index, request in enumerate(requests):
        label = f"task {index + 1}/{total}"
        if isinstance(request, BerniniError):
            failures.append(f"{label}: {request}")
            _stderr(f"error: {label}: {request}")
            continue
        if args.skip_existing and request.output and existing_output(request.output):
            _stderr(f"{label}: {request.output} exists, skipped")
            continue
        try:
            result = run_job(
                pipe,
                request,
                save_frames=args.save_frames if total == 1 else None,
                use_pe=args.use_pe,
                pe_model=args.pe_model,
                write=write,
                log=_stderr,
                share=share,
            )
        except BerniniError as exc:
            failures.append(f"{label}: {exc}")
            _stderr(f"error: {label}: {exc}")
            continue
        if result.output is not None:
            _stderr(f"{label}: wrote {result.output}")
    if total > 1:
        done = total - len(failures)
        _stderr(f"summary: {done} of {total} task(s) succeeded" + (f", {len(failures)} failed:" if failures else ""))
        for line in failures:
            _stderr(f"  {line}")
    return failures


def print_tasks() -> int:
    from .pipeline import tasks_table
    from .tasks import FORWARDS_PER_STEP

    for name, spec in tasks_table().items():
        print(f"{name:6s} guidance {spec['guidance_mode']:9s} {spec['description']}")
    print("guidance modes: " + ", ".join(f"{m} ({FORWARDS_PER_STEP[m]} forwards/step)" for m in GUIDANCE_MODES))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:  # argparse's REMAINDER rejects a leading --flag; the demo parses its own flags
        from .demo import main as demo_main

        return demo_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    args.explicit = _explicit_flags(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        if args.command == "tiny-bundle":
            from .tiny import write_tiny_bundle

            _quiet_libraries()
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
