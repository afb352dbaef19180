"""The renderer expert: Wan2.2's DiT over a packed sequence of latent segments.

``BerniniTransformer`` *is* diffusers' ``WanTransformer3DModel`` (same modules, same parameter names,
same config, so diffusers-format weights load unchanged) with one addition, :meth:`forward_packed`:
``[condition 1 | ... | condition K | noisy target]`` go through the same patch embedding, each with
its own segment-aware RoPE, share one timestep embedding, attend to each other bidirectionally, and
only the target tokens go through the output head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
from diffusers import WanTransformer3DModel

from .attention import SDPA, AttentionBackend, AttentionFn
from .rope import apply_rope, packed_rope
from .segment import Segment

_UNCHANGED: Any = object()


class SequenceParallel(Protocol):
    """What the renderer needs from a sequence-parallel group (see ``bernini.runtime.parallel``)."""

    world_size: int

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Pad ``dim`` to a multiple of world_size and keep this rank's contiguous chunk."""

    def gather(self, x: torch.Tensor, dim: int, length: int) -> torch.Tensor:
        """All-gather the chunks along ``dim`` and drop the padding beyond ``length``."""

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fn: AttentionFn, length: int
    ) -> torch.Tensor:
        """Self-attention over the full sequence from this rank's token shard ``[B, n, heads, D]``."""


class PackedRope(NamedTuple):
    """The rotary tables of one packed forward, handed to every block's self-attention.

    ``length`` is the unpadded packed length, which sequence-parallel attention needs to drop the
    padding its sharding added; it travels with the tables instead of through shared state.
    """

    cos: torch.Tensor
    sin: torch.Tensor
    length: int


@dataclass
class Runtime:
    """Run-time services of an expert, set explicitly with :meth:`BerniniTransformer.configure`."""

    attention: AttentionBackend = SDPA
    sequence_parallel: SequenceParallel | None = None
    execution_device: torch.device | None = None
    rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    rope_cache_size: int = 8

    def rope_tables(
        self, grids: list[tuple[int, int, int]], source_ids: list[float], head_dim: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos / sin of a packed layout on ``device``, kept for reuse.

        Every step of a generation asks for the same few layouts (one per combo); without the cache each
        forward rebuilds a float64 table for every token on the CPU and copies it to the device."""
        key = (tuple(grids), tuple(source_ids), head_dim, device)
        tables = self.rope_cache.get(key)
        if tables is None:
            cos, sin = packed_rope(grids, source_ids, head_dim)
            tables = (cos.to(device), sin.to(device))
            while len(self.rope_cache) >= self.rope_cache_size:
                self.rope_cache.pop(next(iter(self.rope_cache)))
            self.rope_cache[key] = tables
        return tables


class PackedAttnProcessor:
    """Wan attention with Bernini's runtime: chosen backend, optional Ulysses for self-attention."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: PackedRope | tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        is_self = encoder_hidden_states is None
        context = hidden_states if is_self else encoder_hidden_states
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(context)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(context).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:  # a PackedRope, or diffusers' own (cos, sin) in its standard forward
            query = apply_rope(query, rotary_emb[0], rotary_emb[1])
            key = apply_rope(key, rotary_emb[0], rotary_emb[1])
        parallel = self.runtime.sequence_parallel
        if is_self and parallel is not None and parallel.world_size > 1 and isinstance(rotary_emb, PackedRope):
            out = parallel.attention(query, key, value, self.runtime.attention, rotary_emb.length)
        else:
            out = self.runtime.attention(query, key, value)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


class BerniniTransformer(WanTransformer3DModel):
    """A Wan2.2 expert that also runs packed multi-segment sequences (:meth:`forward_packed`)."""

    _runtime: Runtime | None = None

    @property
    def runtime(self) -> Runtime:
        """Run-time services; installing them swaps in :class:`PackedAttnProcessor` on every block."""
        if self._runtime is None:
            self._runtime = Runtime()
            for block in self.blocks:
                block.attn1.set_processor(PackedAttnProcessor(self._runtime))
                block.attn2.set_processor(PackedAttnProcessor(self._runtime))
        return self._runtime

    def configure(
        self,
        *,
        attention: AttentionBackend = _UNCHANGED,
        sequence_parallel: SequenceParallel | None = _UNCHANGED,
        execution_device: torch.device | None = _UNCHANGED,
    ) -> None:
        """Set the attention backend, the sequence-parallel group (None: off) and the execution device used
        by every block; what is not passed stays as it is."""
        if attention is not _UNCHANGED:
            self.runtime.attention = attention
        if sequence_parallel is not _UNCHANGED:
            self.runtime.sequence_parallel = sequence_parallel
        if execution_device is not _UNCHANGED:
            self.runtime.execution_device = execution_device

    @property
    def head_dim(self) -> int:
        return int(self.config.attention_head_dim)

    def embed_segments(self, segments: Sequence[Segment]) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
        dtype = self.patch_embedding.weight.dtype
        tokens, grids = [], []
        for segment in segments:
            embedded = self.patch_embedding(segment.latent.to(dtype))  # [B, dim, t, h, w]: the token grid
            tokens.append(embedded.flatten(2).transpose(1, 2))
            grids.append(tuple(embedded.shape[2:]))
        return torch.cat(tokens, dim=1).contiguous(), grids

    @property
    def execution_device(self) -> torch.device:
        """Where inputs must go: the configured device (weights may sit on the CPU under offloading)."""
        return self.runtime.execution_device or self.device

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        conditions: Sequence[Segment] | None = None,
    ):
        """diffusers' forward, or the packed one when ``conditions`` is given.

        Routing the packed path through ``forward`` keeps module hooks (group offloading, compile
        wrappers) working for it too.
        """
        if conditions is None:
            return super().forward(
                hidden_states,
                timestep,
                encoder_hidden_states,
                encoder_hidden_states_image,
                return_dict,
                attention_kwargs,
            )
        return self._forward_packed(conditions, hidden_states, timestep, encoder_hidden_states)

    def forward_packed(
        self,
        conditions: Sequence[Segment],
        target: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
    ) -> torch.Tensor:
        """Velocity for ``target`` ``[B, C, T, H, W]`` given clean ``conditions`` packed before it.

        ``timestep`` has shape ``[B]``; one embedding is shared by every token of a sample.
        """
        return self(target, timestep, encoder_hidden_states, conditions=list(conditions))

    def _forward_packed(
        self,
        conditions: Sequence[Segment],
        target: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
    ) -> torch.Tensor:
        batch, _, frames, height, width = target.shape
        p_t, p_h, p_w = self.config.patch_size
        segments = [*conditions, Segment(target, 0.0)]
        hidden_states, grids = self.embed_segments(segments)
        ids = [s.source_id for s in segments]
        cos, sin = self.runtime.rope_tables(grids, ids, self.head_dim, hidden_states.device)
        length = hidden_states.shape[1]
        target_tokens = (frames // p_t) * (height // p_h) * (width // p_w)

        temb, timestep_proj, context, _ = self.condition_embedder(
            timestep, encoder_hidden_states.to(hidden_states.dtype)
        )
        timestep_proj = timestep_proj.unflatten(1, (6, -1))

        parallel = self.runtime.sequence_parallel
        sharded = parallel is not None and parallel.world_size > 1
        if sharded:
            hidden_states = parallel.shard(hidden_states, 1)
            cos, sin = parallel.shard(cos, 1), parallel.shard(sin, 1)
        rope = PackedRope(cos, sin, length)
        for block in self.blocks:
            hidden_states = block(hidden_states, context, timestep_proj, rope)
        if sharded:
            hidden_states = parallel.gather(hidden_states, 1, length)

        hidden_states = hidden_states[:, length - target_tokens :]
        shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        hidden_states = (self.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(
            batch, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1
        ).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return hidden_states.flatten(6, 7).flatten(4, 5).flatten(2, 3)
