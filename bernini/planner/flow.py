"""The ViT-embedding decoder (spec §3.2): a flow-matching MLP with adaLN, sampled with three-way CFG.

Parameter names match the checkpoint's ``vit_decoder.net.`` keys (``DiffLoss_FM`` holding a
``SimpleMLPAdaLN``). The network predicts a velocity; the sampler integrates it with Euler steps on a
shift-2 flow schedule whose σ table is computed in bfloat16, as the reference's scheduler does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SIGMA_MIN = 0.003 / 1.002
SCHEDULE_SHIFT = 2.0
TIME_FEATURES = 256


def timestep_features(t: torch.Tensor, features: int = TIME_FEATURES) -> torch.Tensor:
    """A ``features``-wide sinusoid of ``t`` (cos half, then sin half), computed in fp32, cast to ``t``'s dtype."""
    half = features // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).to(t.dtype)


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIME_FEATURES, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t).to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """``h + gate ⊙ MLP(LN(h)·(1 + scale) + shift)`` with ``(shift, scale, gate)`` from the condition."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))  # noqa: N815 - checkpoint name

    def forward(self, hidden: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(condition).chunk(3, dim=-1)
        return hidden + gate * self.mlp(self.in_ln(hidden) * (1 + scale) + shift)


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))  # noqa: N815 - checkpoint name

    def forward(self, hidden: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(condition).chunk(2, dim=-1)
        return self.linear(self.norm_final(hidden) * (1 + scale) + shift)


class VelocityNet(nn.Module):
    """``v = net(x, t, c)``: y = TimeEmb(t) + Linear(c), h = Linear(x), ResBlocks, final adaLN layer."""

    def __init__(self, target_channels: int, z_channels: int, width: int, depth: int = 16) -> None:
        super().__init__()
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.input_proj = nn.Linear(target_channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, target_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        embedded = self.time_embed(t.expand(x.shape[0])) + self.cond_embed(condition)
        hidden = self.input_proj(x)
        for block in self.res_blocks:
            hidden = block(hidden, embedded)
        return self.final_layer(hidden, embedded)


class VitDecoder(nn.Module):
    """The checkpoint's ``vit_decoder`` (its ``net`` is the velocity network)."""

    def __init__(self, target_channels: int = 3584, z_channels: int = 3584, width: int = 4096, depth: int = 16):
        super().__init__()
        self.net = VelocityNet(target_channels, z_channels, width, depth)


def flow_sigmas(steps: int) -> torch.Tensor:
    """bf16 σ for ``steps`` Euler steps: ``σ = 2s / (1 + s)``, ``s = linspace(1, σ_min, steps + 1)[:-1]``."""
    raw = torch.linspace(1.0, SIGMA_MIN, steps + 1, dtype=torch.bfloat16)[:-1]
    return SCHEDULE_SHIFT * raw / (1 + (SCHEDULE_SHIFT - 1) * raw)


def guided_velocity(velocity: torch.Tensor, rows: int, text_scale: float, image_scale: float | None) -> torch.Tensor:
    """Combine the branch velocities of one batched call.

    Three-way (``image_scale`` set, ``text_scale`` > 1): rows are [cond; uncond; text-only] and
    ``g = v_u + s_i (v_t − v_u) + s_t (v_c − v_t)``: ``vit_img_cfg`` (s_i) scales the text direction,
    ``vit_txt_cfg`` (s_t) the visual-source one. Two-way (no ``image_scale``): [cond; uncond],
    ``g = v_u + s_t (v_c − v_u)``. ``text_scale`` ≤ 1: the cond rows alone.
    """
    if text_scale <= 1:
        return velocity
    if image_scale is None:
        cond, uncond = velocity.split(rows)
        return uncond + text_scale * (cond - uncond)
    cond, uncond, text_only = velocity.split(rows)
    return uncond + image_scale * (text_only - uncond) + text_scale * (cond - text_only)


@torch.no_grad()
def sample_embeddings(
    net: nn.Module,
    conditions: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    text_scale: float = 1.2,
    image_scale: float | None = 1.0,
) -> torch.Tensor:
    """Decode ``n`` slots from ``conditions`` ``[3, n, D]`` (cond, uncond, text-only) and ``noise`` ``[n, D]``.

    The same ``x`` feeds every branch; all branches run as one batched call per step.
    """
    rows = noise.shape[0]
    if text_scale <= 1:
        branches = conditions[:1]
    elif image_scale is None:
        branches = conditions[:2]
    else:
        branches = conditions[:3]
    z = branches.reshape(-1, branches.shape[-1])
    x = noise.to(device=z.device, dtype=z.dtype)
    sigmas = flow_sigmas(steps)
    timesteps = 1000 * sigmas
    ends = torch.cat([sigmas[1:], torch.zeros(1, dtype=sigmas.dtype)])
    for index in range(steps):
        t = timesteps[index : index + 1].to(device=z.device, dtype=z.dtype)
        velocity = net(x.repeat(branches.shape[0], 1), t, z)
        step = (ends[index] - sigmas[index]).to(z.device)
        x = x + guided_velocity(velocity, rows, text_scale, image_scale) * step
    return x
