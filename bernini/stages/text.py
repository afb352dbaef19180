"""The prompt stages: the prompt enhancer (when the call brings one) and UMT5 on the plan's T5 texts."""

from __future__ import annotations

import torch

from ..adjustments import Adjustment
from ..sampling.guidance import Text
from ..text import encode_text as umt5
from ..text import token_counts
from .batch import RenderBatch
from .components import Components, Runtime


def enhance_prompt(batch: RenderBatch) -> RenderBatch:
    """The enhancer sees the plan and the source videos' previews; its prompt replaces the plan's."""
    assert batch.enhance is not None
    prompt, batch.enhancement = batch.enhance(batch.resolved, batch.previews)
    batch.resolved = batch.resolved.with_prompt(prompt)
    return batch


def encode_text(batch: RenderBatch, components: Components, runtime: Runtime) -> RenderBatch:
    resolved = batch.resolved
    batch.report("text", 0, 1)
    batch.text = encode_prompts(components, runtime, resolved.t5_text, resolved.t5_negative_text)
    batch.adjustments.extend(text_adjustments(components, resolved.t5_text, resolved.t5_negative_text))
    batch.report("text", 1, 1)
    return batch


def encode_prompts(components: Components, runtime: Runtime, positive: str, negative: str) -> dict[Text, torch.Tensor]:
    text_encoder = components.text_encoder
    with runtime.placement.active(text_encoder):
        device = next(text_encoder.parameters()).device
        embeds = umt5(
            [positive, negative],
            components.tokenizer,
            text_encoder,
            components.renderer_config.max_sequence_length,
            device,
        )
    return {Text.PROMPT: embeds[:1].cpu(), Text.NEGATIVE: embeds[1:].cpu()}


def text_adjustments(components: Components, positive: str, negative: str) -> list[Adjustment]:
    """Prompts longer than the text encoder reads are cut; say by how much."""
    limit = components.renderer_config.max_sequence_length
    counts = token_counts([positive, negative], components.tokenizer)
    why = f"the text encoder reads at most {limit} tokens; the rest was cut"
    return [
        Adjustment(f"{name} tokens", count, limit, why)
        for name, count in zip(("prompt", "neg_prompt"), counts, strict=True)
        if count > limit
    ]
