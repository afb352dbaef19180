"""Device and dtype arguments as users write them (``auto``, ``cuda:1``, ``bf16``…), parsed once."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import BerniniError

DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


NO_FLOAT64 = frozenset({"mps"})
"""Device types without float64 tensors (Apple's Metal backend)."""


def supports_float64(device: torch.device | str) -> bool:
    return torch.device(device).type not in NO_FLOAT64


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bf16 on accelerators (Apple MPS included), fp32 on CPU, unless asked otherwise; never float64 where the
    device lacks it."""
    if dtype is None or dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        parsed = dtype
    else:
        try:
            parsed = DTYPES[str(dtype).lower()]
        except KeyError:
            raise BerniniError(f"unknown dtype {dtype!r}; choose one of: auto, bf16, fp16, fp32") from None
    if parsed == torch.float64 and not supports_float64(device):
        raise BerniniError(f"device {device} has no float64; use --dtype bf16, fp16 or fp32")
    return parsed


def parse_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise BerniniError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise BerniniError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise BerniniError(f"device {device!r} requested but Apple MPS is not available here; use --device cpu")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise BerniniError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or mps")
    return parsed


def device_from_map(device_map: Any) -> str | torch.device:
    """diffusers' ``device_map``: one device (``"cuda"``, ``"cuda:1"``, ``"cpu"``) is a placement we can honour;
    sharding strategies (``"balanced"``, ``"auto"``, per-module dicts) are refused in one line."""
    if isinstance(device_map, torch.device):
        return device_map
    if isinstance(device_map, str) and device_map not in ("auto", "balanced"):
        try:
            return torch.device(device_map)
        except (RuntimeError, TypeError):
            pass
    raise BerniniError(
        f"device_map={device_map!r} is not supported: bernini places whole models itself; pass one device "
        "(device_map='cuda' or device='cuda:N') and offload='model' or 'blocks' for a smaller GPU"
    )
