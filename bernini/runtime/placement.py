"""Memory placement: which modules live on the device, and when.

``none`` keeps everything on the execution device; ``model`` keeps idle models on the CPU and brings
each one over while it works (one expert resident at a time); ``blocks`` streams each expert block by
block through diffusers' group offloading, for GPUs smaller than one expert. ``auto`` picks by the
device's memory budget, with the estimates of :mod:`bernini.runtime.memory`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..errors import BerniniError

OFFLOAD_MODES = ("auto", "none", "model", "blocks")
SAFETY_MARGIN = 0.05  # of the budget, for the allocator's fragmentation and estimates that run short


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes a module holds as stored (parameters and buffers; fp8 / int8 / GGUF weights at their size)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def measured_sizes(
    experts: Sequence[torch.nn.Module],
    text_encoder: torch.nn.Module | None,
    vae: torch.nn.Module | None,
    planner: Sequence[torch.nn.Module] = (),
) -> ModelSizes:
    """:class:`ModelSizes` of loaded modules (``planner``: the full model's Qwen, connector and ViT decoder)."""
    blocks = [module_bytes(block) for expert in experts for block in getattr(expert, "blocks", [])]
    per_expert = [module_bytes(e) for e in experts]
    first_blocks = sum(module_bytes(b) for b in getattr(experts[0], "blocks", [])) if experts else 0
    return ModelSizes(
        experts=per_expert,
        expert_blocks=max(blocks, default=0),
        expert_other=(per_expert[0] - first_blocks) if experts else 0,
        text_encoder=module_bytes(text_encoder) if text_encoder is not None else 0,
        vae=module_bytes(vae) if vae is not None else 0,
        planner=sum(module_bytes(m) for m in planner),
    )


def decide_offload(offload: bool | str) -> str:
    """The mode ``offload`` names (a mode name or a bool) where there is no device budget to place under: ``auto``
    keeps everything where it is (``none``); with a budget :func:`choose_placement` decides."""
    if isinstance(offload, bool):
        return "model" if offload else "none"
    if offload not in OFFLOAD_MODES:
        raise BerniniError(f"unknown offload {offload!r}; choose one of: {', '.join(OFFLOAD_MODES)}")
    return "none" if offload == "auto" else offload


@dataclass(frozen=True)
class ModelSizes:
    """Bytes of each module as held (stored precision), and of one expert's blocks and the rest."""

    experts: list[int] = field(default_factory=list)
    expert_blocks: int = 0  # the largest block
    expert_other: int = 0  # an expert's weights outside its blocks
    text_encoder: int = 0
    vae: int = 0
    planner: int = 0  # the full model's planner parts: resident beside the experts only when everything fits


@dataclass(frozen=True)
class PlacementDecision:
    """Where each module works under a device budget: ``mode`` for the experts, the text encoder on the
    device or the CPU, and whether the VAE decodes in tiles."""

    mode: str
    text_encoder: str = "device"
    tiled_decode: bool = False
    budget: int | None = None
    reason: str = ""

    def describe(self) -> str:
        budget = "no budget" if self.budget is None else f"budget {self.budget / 1024**3:.1f} GiB"
        experts = {
            "none": "everything resident",
            "model": "one expert resident at a time",
            "blocks": "experts streamed block by block with prefetch",
        }.get(self.mode, self.mode)
        text = "UMT5 encodes on the device and leaves" if self.text_encoder == "device" else "UMT5 encodes on the CPU"
        decode = "tiled VAE decode" if self.tiled_decode else "whole-frame VAE decode"
        return f"placement ({budget}): {experts}; {text}; {decode}" + (f" ({self.reason})" if self.reason else "")


def choose_placement(
    budget: int | None,
    sizes: ModelSizes,
    activation: int,
    decode_workspace: int,
    tiled_workspace: int,
    text_activation: int,
    overhead: int,
    mode: str = "auto",
) -> PlacementDecision:
    """Keep resident what fits in ``budget`` bytes, stream the rest; ``mode`` other than ``auto`` is forced."""
    if mode not in OFFLOAD_MODES:
        raise BerniniError(f"unknown offload {mode!r}; choose one of: {', '.join(OFFLOAD_MODES)}")
    limit = float("inf") if budget is None else budget * (1 - SAFETY_MARGIN) - overhead
    everything = sum(sizes.experts) + sizes.text_encoder + sizes.vae + sizes.planner
    if mode == "auto":
        if everything + max(activation, decode_workspace) <= limit:
            mode, reason = "none", "all weights and activations fit"
        elif max(sizes.experts) + activation <= limit:
            mode, reason = "model", "one expert and its activations fit"
        else:
            mode, reason = "blocks", "one expert with its activations does not fit"
    else:
        reason = "asked for"
    resident = everything if mode == "none" else 0
    text = "device" if (resident or sizes.text_encoder) + text_activation <= limit else "cpu"
    tiled = (resident or sizes.vae) + decode_workspace > limit and tiled_workspace < decode_workspace
    return PlacementDecision(mode, text, tiled, budget, reason)


class Placement:
    """Moves modules between the CPU and the execution device according to one offload mode."""

    def __init__(
        self,
        mode: str,
        device: torch.device,
        experts: Sequence[torch.nn.Module],
        on_cpu: Sequence[torch.nn.Module] = (),
    ) -> None:
        self.mode = mode
        self.device = device
        self.experts = list(experts)
        self.on_cpu = list(on_cpu)  # modules that work on the CPU (UMT5 when the budget is short)
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
            elif any(module is m for m in self.on_cpu):
                module.to("cpu")
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
        if module is None or self.mode == "none" or any(module is m for m in self.on_cpu):
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
