"""Ulysses sequence parallelism for the packed self-attention (DeepSpeed-Ulysses style).

Each rank of a group of U holds a contiguous 1/U of the packed tokens (padded to a multiple of U)
through every per-token operation (projections, RoPE, cross-attention, FFN). Self-attention needs
the whole sequence, so around it one all-to-all trades the token split for a head split: every rank
then sees all tokens for H/U heads, drops the padding (so padded tokens are never attended to), runs
the ordinary attention backend, re-pads and trades back. Only plain ``torch.distributed`` calls are
used: ``all_to_all_single`` (NCCL, and gloo on CPU, which implements it) and ``all_gather``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ...models.attention import AttentionFn


def _split(length: int, parts: int) -> tuple[int, int]:
    """Tokens per rank and the padding that makes ``length`` a multiple of ``parts``."""
    per = -(-length // parts)
    return per, per * parts - length


class UlyssesGroup:
    """The :class:`bernini.models.transformer.SequenceParallel` of one Ulysses process group."""

    def __init__(self, group: dist.ProcessGroup | None, world_size: int, rank: int) -> None:
        self.group = group
        self.world_size = world_size
        self.rank = rank

    @classmethod
    def of(cls, group: dist.ProcessGroup) -> UlyssesGroup:
        return cls(group, dist.get_world_size(group), dist.get_rank(group))

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Pad ``dim`` with zeros to a multiple of the group size and keep this rank's chunk."""
        per, pad = _split(x.shape[dim], self.world_size)
        if pad:
            shape = list(x.shape)
            shape[dim] = pad
            x = torch.cat([x, x.new_zeros(shape)], dim=dim)
        return x.narrow(dim, self.rank * per, per).contiguous()

    def gather(self, x: torch.Tensor, dim: int, length: int) -> torch.Tensor:
        """All ranks' chunks concatenated along ``dim``, padding beyond ``length`` dropped."""
        x = x.contiguous()
        chunks = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(chunks, x, group=self.group)
        return torch.cat(chunks, dim=dim).narrow(dim, 0, length)

    def _all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        """Send ``x[i]`` to rank i; return what rank i sent us at index i (dim 0 is the group size)."""
        x = x.contiguous()
        out = torch.empty_like(x)  # after contiguous(): empty_like keeps a permuted input's strides
        dist.all_to_all_single(out, x, group=self.group)
        return out

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fn: AttentionFn, length: int
    ) -> torch.Tensor:
        """Full-sequence attention for this rank's token shard ``[B, n, H, D]``; returns ``[B, n, H, D]``."""
        batch, local, heads, dim = q.shape
        size = self.world_size
        if heads % size:
            raise ValueError(f"{heads} heads cannot be split over a Ulysses group of {size}")
        part = heads // size
        # [3, B, n, U, H/U, D] -> [U, 3, B, n, H/U, D]: chunk i holds the heads rank i will own.
        qkv = torch.stack([q, k, v]).view(3, batch, local, size, part, dim).permute(3, 0, 1, 2, 4, 5)
        received = self._all_to_all(qkv)  # [U (token chunk), 3, B, n, H/U, D]
        full = received.permute(1, 2, 0, 3, 4, 5).reshape(3, batch, size * local, part, dim)
        full = full[:, :, :length]
        out = fn(*(t if t.is_contiguous() else t.contiguous() for t in full.unbind(0)))
        padded = out.new_zeros(batch, size * local, part, dim)
        padded[:, :length] = out
        # [B, U, n, H/U, D] -> [U, B, n, H/U, D]: token chunk i goes back to rank i.
        back = self._all_to_all(padded.view(batch, size, local, part, dim).transpose(0, 1))
        return back.permute(1, 2, 0, 3, 4).reshape(batch, local, heads, dim)
