"""What every front end shares: argument groups, turning arguments into requests, loading the model.

The ``bernini`` command, the upstream-compatible scripts, the torchrun driver, the demo and the
parallel self-check all build their parsers from these groups and load through :func:`load_pipeline`,
so a flag means the same thing everywhere.
"""

from __future__ import annotations

import argparse
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from ..case_files import load_case, load_task_list, numbered_output
from ..errors import BerniniError
from ..loaders.bundle import BundleSpec
from ..request import DEFAULT_OUTPUT, GenerationRequest
from ..resolved import ModelDefaults
from ..settings import spec_of, unwrap_optional
from .help import DefaultsHelpFormatter, document
from .values import degree, positive_number

DEFAULT_CONFIG = "configs/bernini_renderer_wan22"


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one ``error: ...`` line (argparse would print the whole usage block first).

    Abbreviated flags are rejected (``--out`` must not silently mean ``--output``), and help shows
    every flag's default.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


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
        "--allow_base_weights",
        action="store_true",
        help="run base Wan2.2 weights on purpose: a plain Wan2.2 bundle, or a config directory without "
        "--high_noise_ckpt/--low_noise_ckpt (refused otherwise)",
    )
    add_setting_flags(group, "use_unipc", "use_src_tgt_id", "interpolate_src_id", "max_trained_src_id")
    group.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N or mps (untested on Apple hardware; default: cuda when available)",
    )
    group.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32")
    group.add_argument(
        "--offload",
        default="auto",
        choices=("auto", "none", "model", "blocks"),
        help="none: all on the device; model: idle models wait on the CPU; blocks: experts stream block by "
        "block (GPUs smaller than one expert); auto: by the device memory",
    )
    group.add_argument(
        "--attention",
        default="auto",
        choices=("auto", "fa3", "fa2", "sage", "sdpa"),
        help="attention kernel through diffusers' dispatcher (auto: FA3 on Hopper, else FA2, else SDPA)",
    )
    group.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks (slow first step)")
    lora_help = "a LoRA file (diffusers/PEFT, kohya/ComfyUI or lightx2v keys) merged into {}; repeat for several"
    group.add_argument(
        "--lora", action="append", default=[], metavar="PATH[:SCALE]", help=lora_help.format("both experts")
    )
    group.add_argument(
        "--lora_high",
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        help=lora_help.format("the high-noise expert"),
    )
    group.add_argument(
        "--lora_low", action="append", default=[], metavar="PATH[:SCALE]", help=lora_help.format("the low-noise expert")
    )
    group.add_argument(
        "--quantize",
        default="none",
        choices=("none", "fp8", "int8"),
        help="weight-only quantise the experts' block linears on load (fp8 e4m3 or int8, per-channel scales); "
        "fp8/int8 checkpoints and GGUF files stay as stored (another mode with them is refused)",
    )
    group.add_argument(
        "--gpu_memory",
        type=positive_number,
        default=None,
        metavar="GB",
        help="device memory budget in GiB for --offload auto (default: the free memory)",
    )


def add_setting_flags(group: argparse._ActionsContainer, *names: str, given_only: bool = True, **helps: str) -> None:
    """The flags of the request settings ``names``, generated from their declarations on
    :class:`GenerationRequest`. Every flag defaults to None, "not given" (the help shows the built-in default the
    merge falls back to; ``given_only``: kept for older callers, always so); ``helps``: a front end's own help text
    for a setting."""
    declared = {f.name: f for f in GenerationRequest.settings()}
    types = GenerationRequest.setting_types()
    for name in names:
        spec = spec_of(declared[name])
        kind, optional = unwrap_optional(types[name])
        kwargs: dict[str, Any] = {"default": None}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if optional else "store_true"
        elif typing.get_origin(kind) is list:
            kwargs["nargs"] = "+"
            item = typing.get_args(kind)[0]
            if item in (int, float):
                kwargs["type"] = item
        elif kind in (int, float):
            kwargs["type"] = kind
        flags = spec.flags or (f"--{name}",)
        text = helps.get(name, spec.help)
        builtin = spec.builtin()
        if text is not None and builtin is not None and "default" not in text.lower():
            text = f"{text} (default: {builtin})".replace("%", "%%")
        group.add_argument(*flags, dest=name, help=text, **kwargs, **spec.cli)


def add_generation_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inputs")
    add_setting_flags(group, "prompt", "task_type", "guidance_mode", "video", "image", "images", "output")
    add_setting_flags(group, "extend")
    group.add_argument("--case", default=None, help="a case file (JSON object)")
    group.add_argument("--inputs", default=None, help="a task list (.jsonl or .json array)")
    group.add_argument("--save_frames", default=None, metavar="DIR", help="also write every frame as PNG into DIR")
    group.add_argument("--skip_existing", action="store_true", help="skip tasks whose output and sidecar exist")
    group.add_argument("--overwrite", action="store_true", help="replace existing outputs (refused otherwise)")
    gen = parser.add_argument_group("generation")
    add_setting_flags(
        gen,
        "seed",
        "num_frames",
        "num_inference_steps",
        "flow_shift",
        "omega_vid",
        "omega_img",
        "omega_txt",
        "omega_scale",
        "eta",
        "norm_threshold",
        "momentum",
        "fps",
        "max_image_size",
        "height",
        "width",
        "neg_prompt",
        "system_prompt",
    )
    full = parser.add_argument_group(
        "full Bernini (planner)", "read by a full bundle only; its shipped per-task settings fill what is not given"
    )
    add_setting_flags(full, "omega_tgt", "planning_step", "vit_denoising_step", "vit_txt_cfg", "vit_img_cfg")
    full.add_argument(
        "--bernini_version",
        choices=("v1", "v2"),
        default=None,
        help="which full model's shipped settings apply (default: config.json's bernini_version, else v2 for a "
        "path ending in -v2, else v1)",
    )
    fast = parser.add_argument_group("fast paths")
    add_setting_flags(fast, "preset", "cache", "cache_threshold", "cache_calibration", "batch_branches")
    long_video = parser.add_argument_group("long video (context windows; see docs/long_video.md)")
    add_setting_flags(long_video, "window_frames", "window_overlap")
    pe = add_pe_args(parser, "rewrite prompts with an OpenAI-compatible model")
    pe.add_argument("--pe_only", action="store_true", help="print the enhanced prompt (or case) and stop")
    parser.add_argument(
        "--dry_run", action="store_true", help="print the placement and expected peak memory per phase; load nothing"
    )
    add_parallel_args(parser)
    document(parser)


def add_pe_args(parser: argparse.ArgumentParser, use_help: str) -> argparse._ArgumentGroup:
    pe = parser.add_argument_group("prompt enhancer")
    add_setting_flags(pe, "use_pe", "pe_model", use_pe=use_help)
    pe.add_argument(
        "--pe_timeout", type=float, default=None, help="seconds per request (default: $BERNINI_PE_TIMEOUT, else 60)"
    )
    pe.add_argument(
        "--pe_budget",
        type=float,
        default=None,
        help="seconds for all attempts on one prompt (default: $BERNINI_PE_BUDGET, else 180)",
    )
    return pe


def add_parallel_args(parser: argparse.ArgumentParser) -> None:
    par = parser.add_argument_group("parallel (torchrun)")
    par.add_argument("--ulysses", type=degree, default=1, help="Ulysses sequence-parallel degree")
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


def requests_from_args(args: argparse.Namespace) -> list[GenerationRequest | BerniniError]:
    """Tasks from ``--inputs``, ``--case`` or the flags, with per-task outputs that never collide.

    A flag not given is None on the request (the flags default to None). A task list's keys are the user's,
    like flags; a case file's values are the ``case`` layer under the flags (a preset or a full model's shipped
    settings may override them, never a flag)."""
    if args.case and args.inputs:
        raise BerniniError("--case cannot be combined with --inputs")
    base: dict[str, Any] = {
        name: getattr(args, name) for name in GenerationRequest.field_names() if hasattr(args, name)
    }
    if args.inputs:
        tasks = load_task_list(args.inputs)
        output = args.output or DEFAULT_OUTPUT
        own = [str(i + 1) for i, t in enumerate(tasks) if not isinstance(t, BerniniError) and t.get("output")]
        if args.output and own:
            raise BerniniError(
                f"--output {args.output} names the outputs of the task list (numbered from it), but task(s) "
                f"{', '.join(own[:5])} set their own 'output'; drop --output or those outputs"
            )
        out: list[GenerationRequest | BerniniError] = []
        for index, task in enumerate(tasks):
            if isinstance(task, BerniniError):
                out.append(task)
                continue
            merged = {**base, **{k: v for k, v in task.items() if v is not None}}
            merged["output"] = task.get("output") or numbered_output(output, index, len(tasks))
            out.append(GenerationRequest(**merged))
        return out
    case = load_case(args.case) if args.case else {}
    if not (base.get("prompt") or case.get("prompt")):
        raise BerniniError("a prompt is required: pass --prompt TEXT, --case FILE or --inputs FILE")
    if not (base.get("output") or case.get("output")):
        base["output"] = DEFAULT_OUTPUT
    return [GenerationRequest(**base, case=case)]


def quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def default_config() -> str | None:
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_dir() else None


def bundle_spec(args: argparse.Namespace) -> BundleSpec | None:
    """The local bundle ``--config`` names, read once for the whole run (None: a repo id, or no config)."""
    spec = args.config or default_config()
    return BundleSpec.find(spec) if spec is not None else None


def model_defaults(args: argparse.Namespace, bundle: BundleSpec | None = None) -> ModelDefaults | None:
    """The bundle's defaults when its config is on disk (read without torch); else the pipeline fills them."""
    bundle = bundle if bundle is not None else bundle_spec(args)
    if bundle is None or not bundle.root.is_dir():
        return None
    try:
        if bundle.is_full:
            version = bundle.version(override=getattr(args, "bernini_version", None))
            return ModelDefaults.from_renderer_config(bundle.full_renderer_config(), version)
        config = bundle.renderer_config()
    except BerniniError:
        return None  # the loader reports a broken config in its own words
    return ModelDefaults.from_renderer_config(config) if config is not None else None


def load_pipeline(args: argparse.Namespace, device: str | None = None, on_progress=None, bundle=None):
    """The pipeline ``args`` name; ``bundle``: the :class:`~bernini.loaders.bundle.BundleSpec` the run already read."""
    from ..pipeline import BerniniPipeline

    return BerniniPipeline.from_pretrained(
        bundle if bundle is not None else args.config or default_config(),
        dtype=args.dtype,
        device=device or args.device,
        high_noise_ckpt=args.high_noise_ckpt,
        low_noise_ckpt=args.low_noise_ckpt,
        offload=args.offload,
        attention=args.attention,
        compile=args.compile,
        allow_base_weights=getattr(args, "allow_base_weights", False),
        loras=lora_specs(args),
        quantize=getattr(args, "quantize", "none"),
        gpu_memory=getattr(args, "gpu_memory", None),
        on_progress=on_progress,
        bernini_version=getattr(args, "bernini_version", None),
    )


def lora_specs(args: argparse.Namespace) -> list:
    """``--lora`` / ``--lora_high`` / ``--lora_low PATH[:SCALE]`` as :class:`~bernini.loaders.lora.LoraSpec` values."""
    from ..loaders.lora import LoraSpec

    specs = list(getattr(args, "replayed_loras", None) or [])  # a replay's, in the recorded order
    for flag, expert in (("lora", "both"), ("lora_high", "high"), ("lora_low", "low")):
        specs += [LoraSpec.parse(value, expert) for value in getattr(args, flag, None) or []]
    return specs


def enhancer_config(args: argparse.Namespace, environ: Mapping[str, str] = os.environ):
    """The prompt enhancer's settings from ``--pe_model`` and the ``BERNINI_PE_*`` / OpenAI variables."""
    from ..enhancer import EnhancerConfig

    return EnhancerConfig.from_env(
        getattr(args, "pe_model", None),
        environ,
        timeout_s=getattr(args, "pe_timeout", None),
        budget_s=getattr(args, "pe_budget", None),
    )


def required_enhancer_config(args: argparse.Namespace, environ: Mapping[str, str] = os.environ):
    """:func:`enhancer_config`, refusing in one line (before anything loads) when no endpoint is configured."""
    from ..enhancer import enhancer_available

    config = enhancer_config(args, environ)
    if not enhancer_available(config):
        raise BerniniError(
            "--use_pe needs an endpoint: set BERNINI_PE_BASE_URL (an OpenAI-compatible server) and/or "
            "BERNINI_PE_API_KEY (or OPENAI_API_KEY), or drop --use_pe"
        )
    return config


def describe_loaded(pipe, seconds: float) -> str:
    return (
        f"loaded {pipe.source.spec} in {seconds:.1f} s: device {pipe.device}, "
        f"{str(pipe.dtype).replace('torch.', '')}, attention {pipe.attention_backend.name}, offload {pipe.offload}"
        f"\n{pipe.placement_decision.describe()}"
    )


def run_context(args: argparse.Namespace, parallel: dict[str, Any] | None = None) -> dict[str, Any]:
    """What only the front end knows, for the sidecar: the command line, the working directory, the parallel
    layout, and the sidecar a replay came from."""
    context: dict[str, Any] = {
        "command_line": getattr(args, "command_line", None),
        "cwd": str(Path.cwd()),
        "parallel": parallel or {"world": 1},
    }
    if getattr(args, "replayed", None):
        context["replay_of"] = args.replayed
    return context
