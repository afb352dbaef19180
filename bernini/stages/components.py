"""What a pipeline is made of: :class:`Components` (the loaded modules and the facts of their source) and
:class:`Runtime` (where and how they run). The stages read both; only loading and ``pipe.to`` change them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..conditions import LatentCodec, LatentGrid
from ..models.attention import select_backend
from ..runtime.placement import Placement, PlacementDecision
from ..sampling.sampler import BranchRunner, Experts

if TYPE_CHECKING:
    from ..loaders.config import RendererConfig
    from ..loaders.loading import ModelSource
    from ..loaders.lora import LoraSpec
    from ..models.attention import AttentionBackend
    from ..models.transformer import BerniniTransformer
    from ..planner.loading import PlannerModules


def _call_here(call: Any) -> Any:
    return call()


@dataclass
class Components:
    """The renderer's two Wan2.2 experts (either may be absent), UMT5 and its tokenizer, the Wan VAE, the
    scheduler (``loaded_scheduler``: the bundle's own, whose config every built scheduler starts from), the full
    model's planner parts, and the facts of the source they came from (with the LoRAs merged since)."""

    transformer: Any
    transformer_2: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    source: ModelSource
    planner: PlannerModules | None = None
    loaded_scheduler: Any = None
    loras: list[LoraSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.loaded_scheduler is None:
            self.loaded_scheduler = self.scheduler

    @property
    def renderer_config(self) -> RendererConfig:
        return self.source.renderer

    @property
    def experts(self) -> list[BerniniTransformer]:
        return [e for e in (self.transformer, self.transformer_2) if e is not None]

    @property
    def planner_modules(self) -> list[torch.nn.Module]:
        """The full model's planner parts (Qwen2.5-VL, connector, ViT decoder); none for Bernini-R."""
        if self.planner is None:
            return []
        return [self.planner.qwen, self.planner.connector, self.planner.vit_decoder]

    def modules(self) -> list[torch.nn.Module]:
        renderer = [m for m in (self.transformer, self.transformer_2, self.text_encoder, self.vae) if m is not None]
        return renderer + self.planner_modules

    @property
    def latent_grid(self) -> LatentGrid:
        return LatentCodec.grid(self.vae.config, self.experts[0].config.patch_size)

    def make_experts(self, on_switch: Any = None) -> Experts:
        """The high- and low-noise experts and their switch (one expert: it runs every step)."""
        config = self.renderer_config
        high = self.transformer if self.transformer is not None else self.transformer_2
        low = self.transformer_2 if (self.transformer is not None and config.two_experts) else None
        return Experts(high=high, low=low, boundary=config.boundary_timestep, on_switch=on_switch)


@dataclass
class Runtime:
    """Where the components run: device and weight dtype, the memory placement (and the decision it came from),
    the attention kernel, how a branch's forward runs and how a task group shares the planner (both replaced by
    a parallel bring-up), the denoising bar's settings and the interrupt flag a step callback may set."""

    device: torch.device
    dtype: torch.dtype
    placement: Placement
    placement_decision: PlacementDecision
    attention_preference: str = "auto"
    attention_backend: AttentionBackend | None = None
    branch_runner: BranchRunner = field(default_factory=BranchRunner)
    share_planning: Any = _call_here
    progress_bar_config: dict[str, Any] = field(default_factory=lambda: {"disable": True})  # no bar unless asked
    interrupt: bool = False

    def configure_attention(self, experts: list[BerniniTransformer]) -> None:
        self.attention_backend = select_backend(self.device, self.attention_preference, self.dtype)
        for expert in experts:
            expert.configure(attention=self.attention_backend, execution_device=self.device)

    def progress_bar(self, iterable=None, total: int | None = None):
        from tqdm.auto import tqdm

        config = {"desc": "denoising", "unit": "step", "leave": False, **self.progress_bar_config}
        return tqdm(iterable, total=total, **config)
