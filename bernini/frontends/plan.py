"""``bernini plan`` and ``bernini generate --dry_run``: the memory plan printed before anything loads."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .values import positive_number

GIB = 1024**3


def add_plan_parser(sub) -> argparse.ArgumentParser:
    plan = sub.add_parser("plan", help="print the placement and expected peak device/host memory per phase")
    plan.add_argument(
        "--config",
        "--model",
        dest="config",
        default=None,
        help="bundle (default: A14B shapes); a full Bernini bundle adds its planner phase",
    )
    plan.add_argument("--num_frames", type=int, default=81, help="frames of the target")
    plan.add_argument("--height", type=int, default=480, help="target height in pixels")
    plan.add_argument("--width", type=int, default=832, help="target width in pixels")
    plan.add_argument("--source_videos", type=int, default=1, help="videos packed beside the target (v2v: 1)")
    plan.add_argument("--images", type=int, default=0, help="reference images packed beside the target")
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


def _config(folder: Path) -> dict[str, Any] | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return {
        k: v for k, v in data.items() if not k.startswith("_") and k not in ("architectures", "transformers_version")
    }


def shapes_for(config: str | None, experts: int | None = None):
    """The bundle's module configs when ``config`` is a local bundle, else the published A14B shapes."""
    from ..config import renderer_config_for
    from ..memory_plan import Shapes

    root = Path(config).expanduser() if config else None
    if root is None or not root.is_dir():
        return Shapes()
    renderer = renderer_config_for(root)
    base = root
    if renderer is not None and not (root / "vae").is_dir() and renderer.wan22_base:
        base = Path(renderer.wan22_base).expanduser()
    parts = {name: _config(base / name) for name in ("transformer", "text_encoder", "vae")}
    if any(v is None for v in parts.values()):
        return Shapes()
    if experts is None:
        experts = 2 if renderer is None or renderer.two_experts else 1
    return Shapes(parts["transformer"], parts["text_encoder"], parts["vae"], experts)


def full_shapes_for(config: str | None):
    """The full model's module configs when ``config`` is a local full Bernini bundle (its ``mllm/`` Qwen config,
    connector and decoder widths from ``config.json``, the decoder depth from the checkpoint), else None."""
    from ..full_config import is_full_bundle
    from ..memory_plan import Shapes
    from ..planner.loading import FullBundle
    from ..planner.memory import FullShapes

    root = Path(config).expanduser() if config else None
    if root is None or not root.is_dir() or not is_full_bundle(root):
        return None
    bundle = FullBundle.open(root)
    qwen = _config(root / "mllm") or {}
    hidden = int(qwen.get("hidden_size") or qwen.get("text_config", {}).get("hidden_size"))
    connector, decoder = bundle.config.get("connector_cfg", {}), bundle.config.get("clip_diff_cfg", {})
    renderer = Shapes(
        json.loads((root / "transformer_config.json").read_text(encoding="utf-8")),
        _config(root / "t5_text_encoder"),
        _config(root / "vae"),
        2,
    )
    return FullShapes(
        qwen=qwen,
        connector={
            "in_dim": hidden,
            "out_gen": connector.get("out_gen", 4096),
            "out_vit": connector.get("out_vit", hidden),
        },
        decoder={
            "target_channels": decoder.get("target_channels", hidden),
            "z_channels": decoder.get("z_channels", hidden),
            "width": decoder.get("width", 4096),
            "depth": bundle.decoder_depth(),
        },
        renderer=renderer,
    )


def print_full_plan(config: str | None, request, dtype, log: Callable[[str], None] = print) -> bool:
    """The planner and render phases of a full bundle (True), or nothing when ``config`` is not one (False)."""
    from ..planner.memory import plan_full_memory

    shapes = full_shapes_for(config)
    if shapes is None:
        return False
    for line in plan_full_memory(request, shapes, dtype).lines():
        log(line)
    return True


def budget_bytes(gpu_memory: float | None) -> int | None:
    """``--gpu_memory`` in GiB; by default the free memory of the current CUDA device (none without one)."""
    if gpu_memory is not None:
        return int(gpu_memory * GIB)
    import torch

    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0]
    return None


def print_plan(plan, log: Callable[[str], None] = print) -> None:
    for line in plan.lines():
        log(line)


def run_plan(args: argparse.Namespace) -> int:
    import torch

    from ..devices import parse_dtype
    from ..memory_plan import Request, plan_memory

    request = Request(args.num_frames, args.height, args.width, args.source_videos, args.images)
    if print_full_plan(args.config, request, parse_dtype(args.dtype, torch.device("cuda"))):
        return 0
    plan = plan_memory(
        request,
        shapes=shapes_for(args.config),
        dtype=parse_dtype(args.dtype, torch.device("cuda")),
        quantize=args.quantize,
        gpu_memory=budget_bytes(args.gpu_memory),
        mode=args.offload,
    )
    print_plan(plan)
    return 0


def dry_run(args: argparse.Namespace, tasks: list, log: Callable[[str], None] = print) -> int:
    """``generate --dry_run``: the plan of each planned task, from its geometry and media; nothing loads."""
    import torch

    from ..devices import parse_dtype
    from ..errors import BerniniError
    from ..memory_plan import Request, plan_memory
    from .options import default_config

    shapes = shapes_for(args.config or default_config())
    failures = 0
    for index, task in enumerate(tasks):
        if isinstance(task, BerniniError):
            log(f"task {index}: error: {task}")
            failures += 1
            continue
        media, geometry = task.media, task.geometry
        request = Request(geometry.frames, geometry.height, geometry.width, len(media.video), media.references)
        dtype = parse_dtype(args.dtype if args.dtype != "auto" else "bf16", torch.device("cpu"))
        log(f"task {index}: {task.task.name} {geometry.frames}x{geometry.height}x{geometry.width}")
        if print_full_plan(args.config or default_config(), request, dtype, log):
            continue
        plan = plan_memory(
            request,
            shapes=shapes,
            dtype=dtype,
            quantize=args.quantize,
            gpu_memory=budget_bytes(getattr(args, "gpu_memory", None)),
            mode=args.offload if isinstance(args.offload, str) else "auto",
        )
        print_plan(plan, log)
    return 1 if failures else 0
