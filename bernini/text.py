"""Text conditioning: the per-task T5 prefix, prompt cleaning and UMT5 encoding."""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING

from .tasks import t5_prefix

if TYPE_CHECKING:
    import torch


def clean_prompt(text: str) -> str:
    """ftfy fix, HTML-unescape twice, collapse whitespace, strip (as Wan does)."""
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def t5_text(prompt: str, task_type: str, system_prompt: str = "") -> str:
    """The exact positive text the encoder sees: prefix glued to the cleaned prompt, no separator."""
    return (system_prompt or t5_prefix(task_type)) + clean_prompt(prompt)


def token_counts(texts: list[str], tokenizer) -> list[int]:
    """How many tokens each text has before the encoder's cut (special tokens included)."""
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=True, truncation=False).input_ids]


def encode_text(
    texts: list[str], tokenizer, text_encoder, max_length: int = 512, device: torch.device | str | None = None
) -> torch.Tensor:
    """UMT5 embeddings ``[B, max_length, dim]`` with the rows past each text's length zeroed."""
    import torch

    device = device or next(text_encoder.parameters()).device
    tokens = tokenizer(
        texts,
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    with torch.no_grad():
        hidden = text_encoder(ids, mask).last_hidden_state.float()
    lengths = mask.gt(0).sum(dim=1)
    keep = torch.arange(max_length, device=device)[None, :] < lengths[:, None]
    return hidden * keep[..., None]
