"""The connector (spec §1.3): the planner's hidden states into the DiT's text space (``proj_gen``) and into
the ViT decoder's condition (``pred_vit``). Parameter names match the ``connector.`` checkpoint keys."""

from __future__ import annotations

import torch
from torch import nn


class FP32RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (weight applied in fp32), returned in the input's dtype; eps 1e-6."""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        values = hidden.float()
        values = values * torch.rsqrt(values.pow(2).mean(-1, keepdim=True) + self.eps)
        return (values * self.weight.float()).to(hidden.dtype)


class MLPConnector(nn.Module):
    """``proj_gen``: Linear → GELU → RMSNorm → Linear (planner width ``in_dim`` → DiT text width ``out_gen``);
    ``pred_vit``: Linear → GELU → Linear → RMSNorm → Linear (``in_dim`` → ViT-decoder condition width ``out_vit``;
    every layer after the first is ``out_vit`` wide, as the reference's). The widths are the released config's
    ``connector_cfg.out_dim_for_gen`` / ``out_dim_for_vit`` (:func:`bernini.loaders.full_config.planner_widths`)."""

    def __init__(self, in_dim: int = 3584, out_gen: int = 4096, out_vit: int = 3584) -> None:
        super().__init__()
        self.proj_gen = nn.Sequential(
            nn.Linear(in_dim, out_gen), nn.GELU(), FP32RMSNorm(out_gen), nn.Linear(out_gen, out_gen)
        )
        self.pred_vit = nn.Sequential(
            nn.Linear(in_dim, out_vit),
            nn.GELU(),
            nn.Linear(out_vit, out_vit),
            FP32RMSNorm(out_vit),
            nn.Linear(out_vit, out_vit),
        )

    def _own(self, hidden: torch.Tensor, branch: nn.Sequential) -> torch.Tensor:
        first = branch[0].weight
        return hidden.to(device=first.device, dtype=first.dtype)

    def generation_context(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj_gen(self._own(hidden, self.proj_gen))

    def vit_condition(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.pred_vit(self._own(hidden, self.pred_vit))
