"""The planner's hybrid attention mask (spec §2.5): causal over text and source ViT tokens, bidirectional
among the slots of one target item."""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

import torch


class TokenType(IntEnum):
    TEXT = 0  # text and structural tokens (role headers, vision start / end)
    PLANNING = 1  # defined by the training template, unused at inference
    SOURCE = 2  # a source item's ViT token
    TARGET = 3  # a target slot


def segment_ids(types: Sequence[int], item_ids: Sequence[int]) -> list[int]:
    """Text tokens get their own position; ViT tokens ``item_id + 1`` (``item_ids`` is ignored for text)."""
    pairs = enumerate(zip(types, item_ids, strict=True))
    return [position if kind == TokenType.TEXT else item + 1 for position, (kind, item) in pairs]


def visibility(types: Sequence[int], segments: Sequence[int]) -> torch.Tensor:
    """Boolean ``[L, L]``: may query ``q`` (row) see key ``k`` (column)."""
    kind = torch.as_tensor(list(types), dtype=torch.long)
    seg = torch.as_tensor(list(segments), dtype=torch.long)
    length = kind.numel()
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    prefix_key = (kind == TokenType.TEXT) | (kind == TokenType.SOURCE)
    same_segment = seg[:, None] == seg[None, :]
    both_target = (kind[:, None] == TokenType.TARGET) & (kind[None, :] == TokenType.TARGET)
    both_planning = (kind[:, None] == TokenType.PLANNING) & (kind[None, :] == TokenType.PLANNING)
    return (prefix_key[None, :] & causal) | ((both_target | both_planning) & same_segment)


def additive_mask(types: Sequence[int], segments: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[1, 1, L, L]`` with 0 where visible and the dtype's lowest value elsewhere (Qwen's 4-D mask form)."""
    visible = visibility(types, segments)
    mask = torch.zeros(visible.shape, dtype=dtype)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[None, None]
