"""Segment-aware 3D RoPE (the "source id" rotary embedding).

Every segment of the packed sequence gets Wan's 3D RoPE with positions restarting at 0, and the
whole rotation of a segment is advanced by a constant phase ``s * omega_k`` where ``s`` is the
segment's source id (target 0, conditions 1..K) and ``omega_k = theta ** (-2k / head_dim)`` is a
1-D RoPE over the full head dimension. Source id 0 is the identity, so a target-only forward is
stock Wan2.2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ROPE_THETA = 10000.0


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels given to the (t, h, w) axes, as in Wan: h = w = 2 * (d // 6), t takes the rest."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _axis_freqs(dim: int, theta: float = ROPE_THETA) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def source_id_freqs(head_dim: int, theta: float = ROPE_THETA) -> torch.Tensor:
    """omega_k for the head_dim / 2 complex pairs."""
    return _axis_freqs(head_dim, theta)


def rope_angles(grid: tuple[int, int, int], head_dim: int, source_id: float = 0.0) -> torch.Tensor:
    """Float64 rotation angles ``[F*H*W, head_dim // 2]`` of one segment's patch grid (raster order)."""
    frames, height, width = grid
    t_dim, h_dim, w_dim = axis_dims(head_dim)
    ft = torch.outer(torch.arange(frames, dtype=torch.float64), _axis_freqs(t_dim))
    fh = torch.outer(torch.arange(height, dtype=torch.float64), _axis_freqs(h_dim))
    fw = torch.outer(torch.arange(width, dtype=torch.float64), _axis_freqs(w_dim))
    angles = torch.cat(
        [
            ft[:, None, None, :].expand(frames, height, width, -1),
            fh[None, :, None, :].expand(frames, height, width, -1),
            fw[None, None, :, :].expand(frames, height, width, -1),
        ],
        dim=-1,
    ).reshape(frames * height * width, head_dim // 2)
    if source_id:
        angles = angles + float(source_id) * source_id_freqs(head_dim)
    return angles


def packed_rope(
    grids: Sequence[tuple[int, int, int]], source_ids: Sequence[float], head_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin tables ``[1, N, 1, head_dim]`` (pairs interleaved) for a packed sequence of segments."""
    angles = torch.cat([rope_angles(g, head_dim, s) for g, s in zip(grids, source_ids, strict=True)], dim=0)
    cos = angles.cos().repeat_interleave(2, dim=1).float()
    sin = angles.sin().repeat_interleave(2, dim=1).float()
    return cos[None, :, None, :], sin[None, :, None, :]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of ``x`` ``[B, N, heads, head_dim]`` (Wan's complex-pair convention)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c = cos[..., 0::2]
    s = sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out.type_as(x)


def assign_source_ids(count: int, interpolate: bool = True, max_trained: int = 5) -> list[float]:
    """Ids 1..n for n conditions; ``linspace(1, max_trained, n)`` when n exceeds ``max_trained``."""
    if count <= 0:
        return []
    if interpolate and count > max_trained:
        return torch.linspace(1.0, float(max_trained), count, dtype=torch.float64).tolist()
    return [float(i) for i in range(1, count + 1)]
