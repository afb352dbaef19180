"""``bernini estimate`` (formerly ``bernini plan``, still accepted) and ``bernini generate --dry_run``: the
placement and memory estimate printed before anything loads.

``--dry_run`` sizes each task as the run would: its media are probed (header and first frame) and go through the
same geometry rule as the conditions stage (:func:`bernini.conditions.run_geometry`), on the bundle's latent grid."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ..loaders.bundle import BundleSpec
from .values import positive_number


def add_estimate_parser(sub) -> argparse.ArgumentParser:
    from ..request import GenerationRequest

    defaults = GenerationRequest.builtin()
    plan = sub.add_parser(
        "estimate",
        aliases=["plan"],
        help="print the placement and expected peak device/host memory per phase of a size given by flags "
        "(generate --dry_run sizes a run from its media)",
    )
    plan.add_argument(
        "--config",
        "--model",
        dest="config",
        default=None,
        help="bundle (default: A14B shapes); a full Bernini bundle adds its planner phase",
    )
    plan.add_argument("--num_frames", type=int, default=defaults["num_frames"], help="frames of the target")
    plan.add_argument("--height", type=int, default=defaults["height"], help="target height in pixels")
    plan.add_argument("--width", type=int, default=defaults["width"], help="target width in pixels")
    plan.add_argument("--source_videos", type=int, default=1, help="videos packed beside the target (v2v: 1)")
    plan.add_argument("--images", type=int, default=0, help="reference images packed beside the target")
    plan.add_argument(
        "--window_frames",
        type=int,
        default=None,
        help="context windows of this many frames: an expert forward packs one window (default: the whole clip)",
    )
    plan.add_argument(
        "--quantize",
        default="none",
        choices=("none", "fp8", "int8"),
        help="weight format of the experts' block linears",
    )
    plan.add_argument("--dtype", default="bf16", help="compute dtype of the dense weights")
    plan.add_argument("--gpu_memory", type=positive_number, default=None, metavar="GB", help="device budget in GiB")
    plan.add_argument(
        "--offload",
        default="auto",
        choices=("auto", "none", "model", "blocks"),
        help="placement policy (auto: by budget)",
    )
    return plan


def _local(config: str | BundleSpec | None) -> BundleSpec | None:
    """The bundle ``config`` names when it is a local directory (read once), else None."""
    if isinstance(config, BundleSpec):
        return config if Path(config.spec).expanduser().is_dir() else None
    root = Path(config).expanduser() if config else None
    return BundleSpec.read(root, str(config)) if root is not None and root.is_dir() else None


def shapes_for(config: str | BundleSpec | None, experts: int | None = None):
    """The bundle's module configs when ``config`` is a local bundle, else the published A14B shapes."""
    from ..runtime.memory import Shapes

    bundle = _local(config)
    if bundle is None:
        return Shapes()
    renderer = bundle.renderer_config()
    parts_from = bundle
    if renderer is not None and not (bundle.root / "vae").is_dir() and renderer.wan22_base:
        base = Path(renderer.wan22_base).expanduser()
        parts_from = BundleSpec(base, str(base))  # only its module configs are read
    parts = {name: parts_from.module_config(name) for name in ("transformer", "text_encoder", "vae")}
    if any(v is None for v in parts.values()):
        return Shapes()
    if experts is None:
        experts = 2 if renderer is None or renderer.two_experts else 1
    return Shapes(parts["transformer"], parts["text_encoder"], parts["vae"], experts)


def full_shapes_for(config: str | BundleSpec | None):
    """The full model's module configs when ``config`` is a local full Bernini bundle (its ``mllm/`` Qwen config,
    connector and decoder widths from ``config.json``, the decoder depth from the checkpoint), else None."""
    from ..planner.loading import FullBundle
    from ..planner.memory import FullShapes
    from ..runtime.memory import Shapes

    bundle = _local(config)
    if bundle is None or not bundle.is_full:
        return None
    full = FullBundle.open(bundle)
    qwen = bundle.module_config("mllm") or {}
    hidden = int(qwen.get("hidden_size") or qwen.get("text_config", {}).get("hidden_size"))
    connector, decoder = bundle.planner_widths(hidden)
    renderer = Shapes(
        bundle.json("transformer_config.json"),
        bundle.module_config("t5_text_encoder"),
        bundle.module_config("vae"),
        2,
    )
    return FullShapes(
        qwen=qwen,
        connector=connector,
        decoder={**decoder, "depth": full.decoder_depth()},
        renderer=renderer,
    )


def print_full_estimate(shapes, request, dtype, log: Callable[[str], None] = print) -> bool:
    """The planner and render phases of a full bundle (``shapes``: its :func:`full_shapes_for`; True), or nothing
    when there is none (False)."""
    from ..planner.memory import estimate_full_memory

    if shapes is None:
        return False
    for line in estimate_full_memory(request, shapes, dtype).lines():
        log(line)
    return True


def budget_bytes(gpu_memory: float | None) -> int | None:
    """``--gpu_memory`` in GiB; by default the free memory of the current CUDA device (none without one)."""
    from ..runtime.memory import device_budget

    return device_budget(gpu_memory)


def print_estimate(plan, log: Callable[[str], None] = print) -> None:
    for line in plan.lines():
        log(line)


def run_estimate(args: argparse.Namespace) -> int:
    import torch

    from ..long_video import checked_window_frames
    from ..runtime.devices import parse_dtype
    from ..runtime.memory import Request, estimate_memory

    windows = None if args.window_frames is None else checked_window_frames(args.window_frames)
    request = Request(args.num_frames, args.height, args.width, args.source_videos, args.images, windows)
    bundle = _local(args.config)  # read once for both questions
    if print_full_estimate(full_shapes_for(bundle), request, parse_dtype(args.dtype, torch.device("cuda"))):
        return 0
    plan = estimate_memory(
        request,
        shapes=shapes_for(bundle),
        dtype=parse_dtype(args.dtype, torch.device("cuda")),
        quantize=args.quantize,
        gpu_memory=budget_bytes(args.gpu_memory),
        mode=args.offload,
    )
    print_estimate(plan)
    return 0


def latent_grid(shapes):
    """The latent grid of a bundle's VAE and expert configs, read without loading (AutoencoderKLWan's defaults fill
    what the VAE config leaves out, as when it loads)."""
    import inspect
    from types import SimpleNamespace

    from diffusers import AutoencoderKLWan

    from ..conditions import LatentCodec

    parameters = inspect.signature(AutoencoderKLWan.__init__).parameters.values()
    vae = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return LatentCodec.grid(SimpleNamespace(**{**vae, **shapes.vae}), shapes.transformer.get("patch_size", (1, 2, 2)))


def dry_run(
    args: argparse.Namespace,
    tasks: list,
    log: Callable[[str], None] = print,
    error: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    bundle: BundleSpec | None = None,
) -> int:
    """``generate --dry_run``: each planned task sized from its probed media as the run sizes it (the same notes),
    and its memory plan; tasks numbered as ``generate`` numbers them; nothing loads."""
    import torch

    from ..conditions import probed_geometry
    from ..errors import BerniniError
    from ..runtime.devices import parse_dtype
    from ..runtime.memory import Request, estimate_memory
    from .options import default_config

    config = args.config or default_config()
    if bundle is None or bundle.spec != config:
        bundle = _local(config)
    shapes = shapes_for(bundle)
    full = full_shapes_for(bundle)
    grid = latent_grid(full.renderer if full is not None else shapes)
    dtype = parse_dtype(args.dtype if args.dtype != "auto" else "bf16", torch.device("cpu"))
    failures = 0
    for index, task in enumerate(tasks):
        label = f"task {index + 1}/{len(tasks)}"
        try:
            if isinstance(task, BerniniError):
                raise task
            (frames, height, width), adjustments = probed_geometry(task, grid)
        except BerniniError as exc:
            error(f"error: {label}: {exc}")
            failures += 1
            continue
        media = task.media
        windows = task.windows.frames if task.windows is not None else None
        request = Request(frames, height, width, len(media.video), media.references, windows)
        log(f"{label}: {task.task.name} {frames}x{height}x{width}")
        for adjustment in (*task.adjustments, *adjustments):
            log(adjustment.note())
        if print_full_estimate(full, request, dtype, log):
            continue
        plan = estimate_memory(
            request,
            shapes=shapes,
            dtype=dtype,
            quantize=args.quantize,
            gpu_memory=budget_bytes(getattr(args, "gpu_memory", None)),
            mode=args.offload if isinstance(args.offload, str) else "auto",
        )
        print_estimate(plan, log)
    return 1 if failures else 0
