"""``bernini convert``: its flags and the command (the work is :func:`bernini.loaders.convert.convert`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_convert_parser(sub) -> argparse.ArgumentParser:
    convert = sub.add_parser(
        "convert", help="write the model in another layout (diffusers bundle, Comfy single files, GGUF, quantised)"
    )
    convert.add_argument("--config", "--model", dest="config", default=None, help="source bundle or config")
    convert.add_argument("--high_noise_ckpt", default=None, help="source high-noise expert (any layout)")
    convert.add_argument("--low_noise_ckpt", default=None, help="source low-noise expert (any layout)")
    convert.add_argument(
        "--to",
        dest="layout",
        required=True,
        choices=("diffusers", "comfy", "gguf"),
        help="diffusers: a bundle (pre-quantised with --quantize); comfy: single files in the original Wan names; "
        "gguf: GGUF files (--gguf_type)",
    )
    convert.add_argument("--output", required=True, help="a new (or empty) directory")
    convert.add_argument("--dtype", default="bf16", help="dtype of the dense tensors written: bf16, fp16 or fp32")
    convert.add_argument(
        "--quantize",
        default="none",
        choices=("none", "fp8", "int8"),
        help="store the block linears quantised (a pre-quantised bundle; comfy: fp8_scaled)",
    )
    convert.add_argument(
        "--gguf_type",
        default="Q8_0",
        help="GGUF type of the block linears: Q8_0, Q5_1, Q5_0, Q4_1, Q4_0, F16, BF16 (K-quants are read, not written)",
    )
    return convert


def run_convert(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    import torch

    from ..loaders.convert import convert
    from ..runtime.devices import parse_dtype

    written = convert(
        args.config,
        args.output,
        args.layout,
        high_noise_ckpt=args.high_noise_ckpt,
        low_noise_ckpt=args.low_noise_ckpt,
        dtype=parse_dtype(args.dtype, torch.device("cpu")),
        quantize=args.quantize,
        gguf_type=args.gguf_type,
        log=log,
    )
    print(args.output)
    return 0 if written else 1
