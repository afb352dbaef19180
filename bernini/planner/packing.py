"""The planner's input packing (spec §2.1–2.3, §2.6): one token stream per branch, with its token types,
target slots, attention mask and 3-D mRoPE positions.

Each message is ``<|im_start|>`` + tokens(role + "\\n") + tokens(content.strip()); no ``<|im_end|>``, no
BOS, and a message whose content is empty is left out. A visual item is ``<|vision_start|>`` + one pad
token per merged ViT token (``<|image_pad|>`` or ``<|video_pad|>``) + ``<|vision_end|>``. Text is
tokenised piece by piece between the special tokens, which is how the tokenizer splits the reference's
single string. Item ids count every visual item in conversation order, dropped ones included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..tasks import T5_PREFIXES
from .geometry import MERGE, VitGrid
from .mask import TokenType, additive_mask, segment_ids

MLLM_SYSTEM_TASKS = ("default", "t2i", "t2v", "i2i", "v2v", "r2v", "rv2v")
"""The planner's system prompts: the same sentences as these tasks' T5 prefixes; other tasks use ``default``."""
BRANCHES = ("cond", "text", "uncond")
TOKENS_PER_SECOND = 2


def mllm_system_prompt(task: str) -> str:
    return T5_PREFIXES[task if task in MLLM_SYSTEM_TASKS else "default"]


@dataclass(frozen=True)
class SpecialIds:
    """Qwen2.5-VL's special token ids (the real ones by default)."""

    im_start: int = 151644
    vision_start: int = 151652
    vision_end: int = 151653
    image_pad: int = 151655
    video_pad: int = 151656


@dataclass(frozen=True)
class VisualItem:
    video: bool
    grid: VitGrid


@dataclass
class PackedBranch:
    """One branch's tokens; ``items`` are the visual items present, as (conversation id, item, is target)."""

    name: str
    input_ids: list[int] = field(default_factory=list)
    token_types: list[int] = field(default_factory=list)
    token_items: list[int] = field(default_factory=list)
    items: list[tuple[int, VisualItem, bool]] = field(default_factory=list)

    def add_text(self, ids: Sequence[int]) -> None:
        self.input_ids.extend(ids)
        self.token_types.extend([TokenType.TEXT] * len(ids))
        self.token_items.extend([-1] * len(ids))

    def add_visual(self, item_id: int, item: VisualItem, target: bool, ids: SpecialIds) -> None:
        self.add_text([ids.vision_start])
        count = item.grid.tokens
        self.input_ids.extend([ids.video_pad if item.video else ids.image_pad] * count)
        self.token_types.extend([TokenType.TARGET if target else TokenType.SOURCE] * count)
        self.token_items.extend([item_id] * count)
        self.items.append((item_id, item, target))
        self.add_text([ids.vision_end])

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def target_mask(self) -> torch.Tensor:
        return torch.tensor([t == TokenType.TARGET for t in self.token_types], dtype=torch.bool)

    @property
    def source_mask(self) -> torch.Tensor:
        return torch.tensor([t == TokenType.SOURCE for t in self.token_types], dtype=torch.bool)

    def attention_mask(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return additive_mask(self.token_types, segment_ids(self.token_types, self.token_items), dtype)

    def positions(self, tokens_per_second: int = TOKENS_PER_SECOND) -> torch.Tensor:
        """``(3, 1, L)`` mRoPE positions as Qwen2.5-VL was trained with (transformers 4.57's rule): text
        advances by one on all three axes; a visual item starting after text at ``s`` gets
        ``s + (t·tokens_per_second, h, w)`` per merged token (images: t = 0); text resumes at the max + 1."""
        rows: list[list[int]] = []
        nxt, index = 0, 0
        while index < self.length:
            if self.token_types[index] in (TokenType.SOURCE, TokenType.TARGET):
                item_id = self.token_items[index]
                item = next(entry[1] for entry in self.items if entry[0] == item_id)
                frames, height, width = item.grid.temporal, item.grid.height // MERGE, item.grid.width // MERGE
                stride = tokens_per_second if item.video else 0
                for t in range(frames):
                    for h in range(height):
                        for w in range(width):
                            rows.append([nxt + t * stride, nxt + h, nxt + w])
                index += frames * height * width
                nxt = max(max(row) for row in rows) + 1
            else:
                rows.append([nxt, nxt, nxt])
                nxt += 1
                index += 1
        return torch.tensor(rows, dtype=torch.long).T[:, None, :]

    def grids(self, video: bool) -> torch.Tensor | None:
        """The ``(T, H, W)`` ViT grids of this branch's image (or video) items, in order, for the vision tower."""
        found = [[i.grid.temporal, i.grid.height, i.grid.width] for _, i, _ in self.items if i.video == video]
        return torch.tensor(found, dtype=torch.long) if found else None


Tokenize = Callable[[str], list[int]]


def pack_branches(
    tokenize: Tokenize,
    task: str,
    prompt: str,
    negative_prompt: str,
    sources: Sequence[VisualItem],
    target: VisualItem,
    ids: SpecialIds = SpecialIds(),
) -> dict[str, PackedBranch]:
    """The cond (prompt + sources), text-only (prompt, no sources) and uncond (negative prompt if longer
    than one character, no sources) branches; the target is kept in all three."""
    texts = {"cond": prompt, "text": prompt, "uncond": negative_prompt if len(negative_prompt) > 1 else ""}
    branches = {}
    for name in BRANCHES:
        branch = PackedBranch(name)
        keep_sources = name == "cond"
        header = [ids.im_start, *tokenize("system\n")]
        branch.add_text(header + tokenize(mllm_system_prompt(task).strip()))
        visible = list(sources) if keep_sources else []
        text = texts[name].rstrip() if visible else texts[name].strip()
        if visible or text:
            branch.add_text([ids.im_start, *tokenize("user\n")])
            for item_id, item in enumerate(sources):
                if keep_sources:
                    branch.add_visual(item_id, item, False, ids)
            if text:
                branch.add_text(tokenize(text))
        branch.add_text([ids.im_start, *tokenize("assistant\n")])
        branch.add_visual(len(sources), target, True, ids)
        branches[name] = branch
    return branches
