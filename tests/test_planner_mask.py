"""The planner's hybrid attention mask: a brute-force check of spec §2.5 on random layouts."""

import random

import pytest
import torch

from bernini.planner.mask import TokenType, additive_mask, segment_ids, visibility


def random_layout(rng: random.Random, targets: int = 1) -> tuple[list[int], list[int]]:
    """Text, then sources (each wrapped in vision start/end text tokens), more text, then target items."""
    types, items = [], []
    item = 0

    def text(count):
        types.extend([TokenType.TEXT] * count)
        items.extend([0] * count)

    def visual(kind, count):
        nonlocal item
        text(1)
        types.extend([kind] * count)
        items.extend([item] * count)
        item += 1
        text(1)

    text(rng.randint(1, 5))
    for _ in range(rng.randint(0, 3)):
        visual(TokenType.SOURCE, rng.randint(1, 6))
    text(rng.randint(1, 5))
    for _ in range(targets):
        visual(TokenType.TARGET, rng.randint(1, 6))
    return types, items


def expected(types, segments, q, k) -> bool:
    if types[k] in (TokenType.TEXT, TokenType.SOURCE) and k <= q:
        return True
    return types[q] == types[k] and types[q] in (TokenType.TARGET, TokenType.PLANNING) and segments[q] == segments[k]


@pytest.mark.parametrize("seed", range(20))
def test_visibility_matches_the_rule_everywhere(seed):
    rng = random.Random(seed)
    types, items = random_layout(rng, targets=1 + seed % 2)
    segments = segment_ids(types, items)
    visible = visibility(types, segments)
    length = len(types)
    for q in range(length):
        for k in range(length):
            assert bool(visible[q, k]) == expected(types, segments, q, k), (q, k)
    assert bool(visible.diagonal().all())


def test_consequences_named_by_the_spec():
    types, items = random_layout(random.Random(3))
    segments = segment_ids(types, items)
    visible = visibility(types, segments)
    sources = [i for i, t in enumerate(types) if t == TokenType.SOURCE]
    targets = [i for i, t in enumerate(types) if t == TokenType.TARGET]
    last = len(types) - 1  # the vision_end after the target
    assert types[last] == TokenType.TEXT and not visible[last, targets].any()
    assert visible[targets][:, targets].all()  # bidirectional within the target item
    for a in sources:
        for b in sources:
            assert bool(visible[a, b]) == (b <= a)  # sources stay causal among themselves
    assert visible[targets][:, : targets[0]].all()  # every slot sees the whole prefix


def test_additive_form_is_zero_or_the_lowest_value():
    types, items = random_layout(random.Random(5))
    mask = additive_mask(types, segment_ids(types, items), torch.bfloat16)
    assert mask.shape == (1, 1, len(types), len(types)) and mask.dtype == torch.bfloat16
    visible = visibility(types, segment_ids(types, items))
    assert torch.equal(mask[0, 0] == 0, visible)
    assert (mask[0, 0][~visible] == torch.finfo(torch.bfloat16).min).all()
