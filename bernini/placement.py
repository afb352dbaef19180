"""Memory placement: which modules live on the device, and when.

``none`` keeps everything on the execution device; ``model`` keeps idle models on the CPU and brings
each one over while it works (one expert resident at a time); ``blocks`` streams each expert block by
block through diffusers' group offloading, for GPUs smaller than one expert. ``auto`` picks by the
device's memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from .errors import BerniniError

OFFLOAD_MODES = ("auto", "none", "model", "blocks")
ACTIVATION_HEADROOM = 8 * 1024**3  # activations of a ~67k-token packed sequence, the VAE decode workspace


def module_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def decide_offload(
    offload: bool | str, device: torch.device, modules: Sequence[torch.nn.Module], experts: Sequence[torch.nn.Module]
) -> str:
    """The offload mode for ``offload`` (a mode name, ``auto`` or a bool) on ``device``."""
    if isinstance(offload, bool):
        return "model" if offload else "none"
    if offload not in OFFLOAD_MODES:
        raise BerniniError(f"unknown offload {offload!r}; choose one of: {', '.join(OFFLOAD_MODES)}")
    if offload != "auto":
        return offload
    if device.type != "cuda":
        return "none"
    everything = sum(module_bytes(m) for m in modules)
    expert = max(module_bytes(e) for e in experts)
    total = torch.cuda.get_device_properties(device).total_memory
    if everything * 1.1 + ACTIVATION_HEADROOM < total:
        return "none"
    if expert * 1.1 + ACTIVATION_HEADROOM < total:
        return "model"
    return "blocks"


class Placement:
    """Moves modules between the CPU and the execution device according to one offload mode."""

    def __init__(self, mode: str, device: torch.device, experts: Sequence[torch.nn.Module]) -> None:
        self.mode = mode
        self.device = device
        self.experts = list(experts)
        self._streamed: set[int] = set()

    @property
    def home(self) -> torch.device:
        """Where a module waits while idle."""
        return torch.device("cpu") if self.mode != "none" else self.device

    def settle(self, modules: Sequence[torch.nn.Module]) -> None:
        """Put every module where it waits (streamed experts get their group offloading hooks)."""
        for module in modules:
            if self.mode == "blocks" and self._is_expert(module):
                self._stream_blocks(module)
            else:
                module.to(self.home)

    def _is_expert(self, module: torch.nn.Module) -> bool:
        return any(module is expert for expert in self.experts)

    def _stream_blocks(self, expert: torch.nn.Module) -> None:
        """diffusers' block-level group offloading: weights live on the CPU, each block visits the device."""
        if id(expert) in self._streamed:
            return
        expert.to("cpu")
        cuda = self.device.type == "cuda"
        expert.enable_group_offload(
            onload_device=self.device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=cuda,
            non_blocking=cuda,
        )
        self._streamed.add(id(expert))

    def activate(self, module: torch.nn.Module | None, active: bool) -> None:
        """Bring ``module`` to the device (or send it home) when the mode moves whole models."""
        if module is None or self.mode == "none":
            return
        if self.mode == "blocks" and self._is_expert(module):
            return
        module.to(self.device if active else torch.device("cpu"))

    @contextmanager
    def active(self, module: torch.nn.Module | None) -> Iterator[None]:
        self.activate(module, True)
        try:
            yield
        finally:
            self.activate(module, False)

    def swap(self, old: torch.nn.Module | None, new: torch.nn.Module | None) -> None:
        self.activate(old, False)
        self.activate(new, True)
