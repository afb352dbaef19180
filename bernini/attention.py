"""Attention backends, probed once at start.

FlashAttention-3 (``flash_attn_interface``) on Hopper, else FlashAttention-2 (``flash_attn``), else
PyTorch's scaled_dot_product_attention. None of the fast ones is required; each is imported only if
it is installed and usable on the current device. All backends take and return ``[B, N, heads, D]``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
BACKENDS = ("auto", "fa3", "fa2", "sdpa")


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _flash(module_name: str) -> AttentionFn | None:
    try:
        module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - a broken optional install must not stop the run
        return None
    fn = getattr(module, "flash_attn_func", None)
    if fn is None:
        return None

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.dtype not in (torch.float16, torch.bfloat16):
            return sdpa_attention(q, k, v)
        out = fn(q, k, v)
        return out[0] if isinstance(out, tuple) else out

    return attention


@dataclass(frozen=True)
class AttentionBackend:
    name: str
    fn: AttentionFn

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.fn(q, k, v)


def _is_hopper(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] == 9


def select_backend(device: torch.device | str, preference: str = "auto") -> AttentionBackend:
    """Pick the fastest usable backend for ``device`` (or the one asked for) and log the choice."""
    from .errors import BerniniError

    device = torch.device(device)
    if preference not in BACKENDS:
        raise BerniniError(f"unknown attention backend {preference!r}; choose one of: {', '.join(BACKENDS)}")
    candidates: list[tuple[str, str]] = []
    if device.type == "cuda":
        if preference in ("auto", "fa3") and (preference == "fa3" or _is_hopper(device)):
            candidates.append(("fa3", "flash_attn_interface"))
        if preference in ("auto", "fa2"):
            candidates.append(("fa2", "flash_attn"))
    for name, module in candidates:
        fn = _flash(module)
        if fn is not None:
            logger.info("attention backend: %s", name)
            return AttentionBackend(name, fn)
        if preference == name:
            raise BerniniError(f"attention backend {name!r} requested but {module!r} is not importable here")
    if preference in ("fa3", "fa2"):
        raise BerniniError(f"attention backend {preference!r} needs a CUDA device")
    logger.info("attention backend: sdpa")
    return AttentionBackend("sdpa", sdpa_attention)
