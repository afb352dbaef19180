"""Attention kernels through diffusers' attention dispatcher, chosen once per pipeline.

``auto`` picks FlashAttention-3 on Hopper, else FlashAttention-2, else PyTorch SDPA; ``sage`` is used
only when asked for. The fast kernels need a CUDA device and half-precision activations: an fp32
run gets SDPA under ``auto`` (and the choice says so) and a one-line error when one is forced. None of
the fast packages is required; each is detected at run time. Tensors are ``[B, N, heads, D]``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from ..errors import BerniniError

logger = logging.getLogger(__name__)

# our name → (diffusers AttentionBackendName value, availability probe in diffusers.utils)
KERNELS: dict[str, tuple[str, str | None]] = {
    "fa3": ("_flash_3", "is_flash_attn_3_available"),
    "fa2": ("flash", "is_flash_attn_available"),
    "sage": ("sage", "is_sageattention_available"),
    "sdpa": ("native", None),
}
BACKENDS = ("auto", *KERNELS)
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
HALF_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class AttentionBackend:
    """One kernel: ``name`` is what the sidecar records, ``dispatch_name`` what diffusers dispatches."""

    name: str = "sdpa"
    dispatch_name: str = "native"

    def __call__(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return dispatch_attention_fn(query, key, value, backend=self.dispatch_name)


SDPA = AttentionBackend()


def kernel_available(name: str) -> bool:
    probe = KERNELS[name][1]
    if probe is None:
        return True
    try:
        utils = importlib.import_module("diffusers.utils")
        return bool(getattr(utils, probe)())
    except Exception:  # noqa: BLE001 - a broken optional install must not stop the run
        return False


def _is_hopper(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] == 9


def select_backend(
    device: torch.device | str, preference: str = "auto", dtype: torch.dtype = torch.bfloat16
) -> AttentionBackend:
    """The kernel that will actually run for ``device`` and ``dtype`` (or the one asked for)."""
    device = torch.device(device)
    if preference not in BACKENDS:
        raise BerniniError(f"unknown attention backend {preference!r}; choose one of: {', '.join(BACKENDS)}")
    if preference not in ("auto", "sdpa"):
        if device.type != "cuda":
            raise BerniniError(f"attention backend {preference!r} needs a CUDA device; use --attention sdpa")
        if dtype not in HALF_PRECISION:
            raise BerniniError(
                f"attention backend {preference!r} needs bf16 or fp16 weights, not {str(dtype).replace('torch.', '')}; "
                "pass --dtype bf16 or --attention sdpa"
            )
        if not kernel_available(preference):
            raise BerniniError(f"attention backend {preference!r} requested but its package is not installed here")
        chosen = preference
    elif preference == "auto" and device.type == "cuda" and dtype in HALF_PRECISION:
        order = ("fa3", "fa2") if _is_hopper(device) else ("fa2",)
        chosen = next((name for name in order if kernel_available(name)), "sdpa")
    else:
        chosen = "sdpa"
    logger.info("attention backend: %s", chosen)
    return AttentionBackend(chosen, KERNELS[chosen][0])
