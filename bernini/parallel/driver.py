"""``bernini generate`` / ``infer_multi_gpu.py`` under torchrun: checks and the run's life cycle.

Flow: refuse bad degrees (identically on every rank, before any collective or heavy import) → join
the process group → load the pipeline on ``cuda:LOCAL_RANK`` (or the CPU) and agree that every rank
loaded → install the Ulysses and CFG runners → each task group runs its share of the task list
(:mod:`bernini.parallel.worker`) → global rank 0 prints the summary → leave the process group.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import BerniniError, WeightsError
from ..request import GenerationRequest
from .layout import LaunchEnv, Layout, check_degrees

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 600.0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cfg_degree(args: argparse.Namespace) -> int:
    value = getattr(args, "cfg_parallel", None)
    if value is True:
        return 2
    return int(value or 1)


def timeout_s(args: argparse.Namespace) -> float:
    value = getattr(args, "dist_timeout", None)
    value = DEFAULT_TIMEOUT_S if value is None else float(value)
    if value <= 0:
        raise BerniniError(f"--dist_timeout must be positive, got {value}")
    return value


def _local_expert_configs(spec: str) -> list[Path] | None:
    """The experts' config files of a local bundle or config dir, found without importing torch."""
    from ..config import renderer_config_for

    root = Path(spec).expanduser()
    root = root.parent if root.is_file() else root
    renderer = renderer_config_for(root) if root.is_dir() else None
    if renderer is None:
        return None
    components = root
    if not all((root / n).is_dir() for n in ("tokenizer", "text_encoder", "vae")):
        components = Path(renderer.wan22_base).expanduser()
    skips = {"transformer": renderer.skip_transformer_1, "transformer_2": renderer.skip_transformer_2}
    files = [components / name / "config.json" for name, skip in skips.items() if not skip]
    return files if files and all(f.is_file() for f in files) else None


def model_heads(config: str | None) -> int:
    """Attention heads of the experts, read from their config files (no weights, no torch if local)."""
    from ..cli import default_config
    from ..config import read_json

    spec = config or default_config()
    files = _local_expert_configs(spec) if spec else None
    if files is None:  # a hub id or an unusual layout: let the loader resolve it (and report problems)
        from ..loading import expert_names, resolve_model

        source = resolve_model(spec)
        files = [source.components / name / "config.json" for name in expert_names(source.renderer)]
    try:
        counts = {int(read_json(f)["num_attention_heads"]) for f in files}
    except (KeyError, TypeError, ValueError):
        raise WeightsError(f"{files[0]} has no usable num_attention_heads") from None
    if len(counts) != 1:
        raise BerniniError(f"the experts disagree on their head count ({sorted(counts)}); cannot shard heads")
    return counts.pop()


def run_parallel(args: argparse.Namespace, requests: list[GenerationRequest | BerniniError]) -> int:
    """Entry point from ``bernini.cli.run_generate`` when torchrun or the parallel flags ask for it."""
    env = LaunchEnv()
    try:
        env = LaunchEnv.from_environ()
        ulysses, cfg = int(args.ulysses), cfg_degree(args)
        check_degrees(env.world, ulysses, cfg, model_heads(args.config))
        timeout = timeout_s(args)
    except BerniniError as exc:  # the same on every rank: say it once
        if env.rank == 0:
            _stderr(f"error: {exc}")
        return 2
    from . import groups as pg

    try:
        device = pg.rank_device(args.device, env.local_rank)
    except BerniniError as exc:  # may concern some ranks only; torchrun stops the others
        _stderr(f"error: rank {env.rank}: {exc}")
        return 2
    from . import worker

    layout = Layout(env.world, env.rank, ulysses, cfg)
    distributed = env.world > 1
    if distributed:
        pg.init(env, device, timeout)
    try:
        groups = pg.build(layout, timeout) if distributed else pg.Groups(layout, None, None, None, None)
        if layout.rank == 0:
            logger.info("parallel layout: %s", layout.describe())
            if env.spans_nodes(ulysses):
                _stderr(
                    f"warning: --ulysses {ulysses} does not divide the {env.local_world} processes per node; "
                    "some Ulysses groups span two machines and their all-to-alls cross the network"
                )
        try:
            pipe = worker.load(args, device, groups.control, layout.rank)
        except BerniniError as exc:
            if layout.rank == 0:
                _stderr(f"error: {exc}")
            return 2
        pipe.progress_bar = layout.rank == 0
        worker.install(pipe, groups)
        job = worker.generation_job(pipe, args, groups, len(requests))
        failures = worker.run_tasks(requests, groups, job, args.skip_existing)
        return worker.summarize(failures, len(requests), groups)
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
