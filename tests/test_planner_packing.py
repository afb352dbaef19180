"""Planner packing per task (spec §2.1–2.3, §6.2 item 1) and mRoPE positions (§2.6, §6.2 item 3)."""

import pytest
import torch

from bernini.planner.geometry import VitGrid
from bernini.planner.mask import TokenType
from bernini.planner.packing import SpecialIds, VisualItem, mllm_system_prompt, pack_branches

IDS = SpecialIds()
IM_END = 151645


class WordTokenizer:
    """Whitespace word ids (stands in for Qwen's tokenizer, which splits the same way around special tokens)."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text: str) -> list[int]:
        return [self.vocab.setdefault(word, 1000 + len(self.vocab)) for word in text.split()]


VIDEO = VisualItem(True, VitGrid(2, 4, 6))  # 2 × 2 × 3 = 12 tokens
CLIP = VisualItem(True, VitGrid(1, 2, 4))  # 2 tokens
IMAGE = VisualItem(False, VitGrid(1, 4, 4))  # 4 tokens
SHAPES = {
    "t2i": ([], VisualItem(False, VitGrid(1, 2, 2))),
    "i2i": ([IMAGE], IMAGE),
    "t2v": ([], VIDEO),
    "v2v": ([VIDEO], VIDEO),
    "r2v": ([IMAGE, IMAGE, IMAGE], VIDEO),
    "rv2v": ([VIDEO, IMAGE], VIDEO),
    "ads2v": ([VIDEO, CLIP], VIDEO),
}


@pytest.mark.parametrize("task", list(SHAPES))
def test_packing_per_task(task):
    tokenize = WordTokenizer()
    sources, target = SHAPES[task]
    branches = pack_branches(tokenize, task, "make it red", "ugly blurry", sources, target)
    for name, branch in branches.items():
        ids, types = branch.input_ids, branch.token_types
        assert IM_END not in ids
        headers = [i for i, token in enumerate(ids) if token == IDS.im_start]
        assert len(headers) == 3  # system, user, assistant: the user turn carries text in every branch here
        assert ids[headers[0] + 1] == tokenize("system")[0] and ids[headers[2] + 1] == tokenize("assistant")[0]
        targets = [i for i, t in enumerate(types) if t == TokenType.TARGET]
        assert len(targets) == target.grid.tokens and targets[0] > headers[2]
        pad = IDS.video_pad if target.video else IDS.image_pad
        assert {ids[i] for i in targets} == {pad}
        assert ids[targets[0] - 1] == IDS.vision_start and ids[targets[-1] + 1] == IDS.vision_end
        assert targets[-1] + 2 == len(ids)
        assert {branch.token_items[i] for i in targets} == {len(sources)}  # ids count dropped items too
        source_tokens = [i for i, t in enumerate(types) if t == TokenType.SOURCE]
        if name == "cond":
            assert len(source_tokens) == sum(item.grid.tokens for item in sources)
            for item_id, item in enumerate(sources):
                positions = [i for i in source_tokens if branch.token_items[i] == item_id]
                assert len(positions) == item.grid.tokens
                assert {ids[i] for i in positions} == {IDS.video_pad if item.video else IDS.image_pad}
        else:
            assert source_tokens == []
        text = tokenize("ugly blurry") if name == "uncond" else tokenize("make it red")
        start = next(i for i in range(len(ids)) if ids[i : i + len(text)] == text)
        assert start > headers[1] and start < headers[2]
        assert ids[headers[0] + 2 : headers[0] + 2 + len(tokenize(mllm_system_prompt(task)))] == tokenize(
            mllm_system_prompt(task)
        )
    assert branches["cond"].length > branches["text"].length or not sources


def test_empty_negative_prompt_drops_the_user_turn():
    tokenize = WordTokenizer()
    branches = pack_branches(tokenize, "v2v", "prompt", "x", [VIDEO], VIDEO)
    assert branches["uncond"].input_ids.count(IDS.im_start) == 2
    assert branches["text"].input_ids.count(IDS.im_start) == 3


def test_system_prompts_fall_back_to_default():
    assert mllm_system_prompt("mv2v") == mllm_system_prompt("ads2v") == "You are a helpful assistant."
    assert mllm_system_prompt("rv2v").endswith("video editing with reference.")


def test_positions_of_the_spec_example():
    tokenize = WordTokenizer()
    branch = pack_branches(tokenize, "t2v", "", "", [], VisualItem(True, VitGrid(2, 4, 4)))["cond"]
    ids = branch.input_ids
    start = ids.index(IDS.video_pad)
    positions = branch.positions()
    # rebuild the spec's layout: 16 text tokens, vision_start at 16, the video from 17
    offset = start - 17
    t, h, w = (positions[axis, 0, start : start + 8] - offset for axis in range(3))
    assert set(t.tolist()) == {17, 19} and set(h.tolist()) == {17, 18} and set(w.tolist()) == {17, 18}
    assert positions[0, 0, start + 8].item() - offset == 20  # vision_end resumes at max + 1
    assert torch.equal(positions[:, 0, :start], torch.arange(start).expand(3, -1))


def test_positions_equal_transformers_4_57_get_rope_index():
    """The rule Qwen2.5-VL was trained with; transformers 5 changed it (text after a visual item resumes at
    start + max(h, w) / merge, not at max + 1), so the comparison runs on the upstream pin only."""
    transformers = pytest.importorskip("transformers")
    if not transformers.__version__.startswith("4."):
        pytest.skip(f"transformers {transformers.__version__}: get_rope_index follows a newer rule; see docstring")
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    config = Qwen2_5_VLConfig(
        hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vision_config={"depth": 1, "hidden_size": 32, "num_heads": 2, "out_hidden_size": 64, "tokens_per_second": 2},
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
    )  # fmt: skip
    with torch.device("meta"):
        model = Qwen2_5_VLModel(config)
    tokenize = WordTokenizer()
    for task, (sources, target) in SHAPES.items():
        for branch in pack_branches(tokenize, task, "make it red", "ugly blurry", sources, target).values():
            stock, _ = model.get_rope_index(
                torch.tensor([branch.input_ids]),
                image_grid_thw=branch.grids(video=False),
                video_grid_thw=branch.grids(video=True),
                attention_mask=torch.ones(1, branch.length, dtype=torch.long),
            )
            assert torch.equal(stock, branch.positions()), (task, branch.name)
