"""The tiny offline umt5/T5 tokenizer used by the test bundles."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bernini.tiny.tokenizer import write_tiny_t5_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
VOCAB_SIZE = 384

PROMPTS = [
    "hello world",
    "You are a helpful assistant specialized in text-to-video generation. A cat runs on a beach at sunset.",
    "You are a helpful assistant for editing. Replace the red hat with a blue umbrella.",
    "A woman in a golden dress dances in the rain. The camera slowly zooms in. Cinematic lighting, 4K.",
    "一只猫在花园里奔跑，镜头缓慢推进。",
    "Mixed 中文 and English: 一个男孩 jumps over a fence 🐶🎉",
    "emoji only 🚀🌈✨",
    "  leading and   repeated   spaces\nnew line\ttab  ",
    "Ünïcödé naïve café in Zürich — “quotes” … ½ ①",
    "ALL CAPS PROMPT WITH NUMBERS 1080p 16:9 at 24 fps!!!",
    "Привет мир, مرحبا, こんにちは, 안녕하세요",
    "",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_t5_tok")
    write_tiny_t5_tokenizer(out, vocab_size=VOCAB_SIZE, seed=0)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir)


def test_writes_the_bundle_files(tok_dir: Path) -> None:
    for name in FILES:
        assert (tok_dir / name).is_file(), name
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "T5Tokenizer"
    assert config["extra_ids"] == 0
    special = json.loads((tok_dir / "special_tokens_map.json").read_text())
    assert special["eos_token"] == "</s>" and special["pad_token"] == "<pad>" and special["unk_token"] == "<unk>"


def test_special_ids_and_size(tok, tok_dir: Path) -> None:
    import sentencepiece as spm

    assert type(tok).__name__ in ("T5Tokenizer", "T5TokenizerFast")
    assert (tok.pad_token, tok.pad_token_id) == ("<pad>", 0)
    assert (tok.eos_token, tok.eos_token_id) == ("</s>", 1)
    assert (tok.unk_token, tok.unk_token_id) == ("<unk>", 2)
    assert tok.bos_token is None and tok.bos_token_id is None
    assert len(tok) == VOCAB_SIZE
    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "spiece.model"))
    assert sp.get_piece_size() == VOCAB_SIZE
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)


def test_deterministic(tok_dir: Path, tmp_path: Path) -> None:
    write_tiny_t5_tokenizer(tmp_path / "again", vocab_size=VOCAB_SIZE, seed=0)
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (tok_dir / name).read_bytes(), name
    write_tiny_t5_tokenizer(tmp_path / "other", vocab_size=VOCAB_SIZE, seed=1)
    assert (tmp_path / "other" / "spiece.model").read_bytes() != (tok_dir / "spiece.model").read_bytes()


def test_every_id_below_vocab_size(tok) -> None:
    batch = tok(PROMPTS, padding=True, truncation=True, max_length=512)
    for text, ids in zip(PROMPTS, batch["input_ids"], strict=True):
        assert ids, text
        assert all(0 <= i < VOCAB_SIZE for i in ids), (text, ids)
    # Characters never seen in training (emoji) become <unk> rather than failing.
    emoji_ids = tok("🚀", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id in emoji_ids
    # ASCII and the Chinese of the corpus never do.
    for text in PROMPTS[:5]:
        assert tok.unk_token_id not in tok(text)["input_ids"], text


def test_tiny_umt5_embeds_every_id(tok) -> None:
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=VOCAB_SIZE, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    model = UMT5EncoderModel(config).eval()
    batch = tok(PROMPTS, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert out.shape == (len(PROMPTS), 64, 8)


def test_fast_matches_sentencepiece(tok, tok_dir: Path) -> None:
    """The fast tokenizer.json gives the ids of the SentencePiece model (what the slow T5Tokenizer runs)."""
    import sentencepiece as spm
    import transformers

    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "spiece.model"))
    classes = [transformers.T5TokenizerFast, transformers.T5Tokenizer]
    loaded = [cls.from_pretrained(tok_dir) for cls in classes]
    for text in PROMPTS:
        expected = sp.encode(text) + [1]
        assert tok(text)["input_ids"] == expected, text
        for t in loaded:
            assert t(text)["input_ids"] == expected, (type(t).__name__, text)
    # Special tokens written in the text are kept whole by every class.
    ids = [t("x<pad>y </s> z")["input_ids"] for t in [tok, *loaded]]
    assert all(i == ids[0] for i in ids) and ids[0].count(0) == 1 and ids[0].count(1) == 2


def test_padding_and_eos(tok) -> None:
    enc = tok(
        "hello world",
        padding="max_length",
        max_length=16,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert len(ids) == len(mask) == 16
    n = sum(mask)
    assert ids[n - 1] == 1 and all(i == 0 for i in ids[n:]) and 0 not in ids[:n]
    assert mask == [1] * n + [0] * (16 - n)
    assert n == sum(1 for i in ids if i != 0)
    # Truncation keeps the eos at the end.
    long = tok(" ".join(["a red car drives"] * 50), max_length=16, truncation=True)["input_ids"]
    assert len(long) == 16 and long[-1] == 1


def test_extra_ids_layout(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    write_tiny_t5_tokenizer(tmp_path, vocab_size=VOCAB_SIZE, seed=0, extra_ids=3)
    t = AutoTokenizer.from_pretrained(tmp_path)
    assert len(t) == VOCAB_SIZE
    assert t.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_1>", "<extra_id_2>"]) == [383, 382, 381]
    ids = t("a <extra_id_0> b")["input_ids"]
    assert 383 in ids and max(ids) < VOCAB_SIZE


def test_rejects_too_small_vocab(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        write_tiny_t5_tokenizer(tmp_path, vocab_size=64)


_TF457_SCRIPT = r"""
import filecmp, json, sys, tempfile
import transformers
from transformers import AutoTokenizer, T5Tokenizer, T5TokenizerFast
from bernini.tiny.tokenizer import write_tiny_t5_tokenizer

tok_dir, vocab_size = sys.argv[1], int(sys.argv[2])
expected = json.loads(sys.argv[3])
assert transformers.__version__.startswith("4."), transformers.__version__
auto = AutoTokenizer.from_pretrained(tok_dir)
fast = T5TokenizerFast.from_pretrained(tok_dir)
slow = T5Tokenizer.from_pretrained(tok_dir)
assert type(auto).__name__ == "T5TokenizerFast", type(auto)
for t in (auto, fast, slow):
    assert (t.pad_token_id, t.eos_token_id, t.unk_token_id, t.bos_token_id) == (0, 1, 2, None)
    assert len(t) == vocab_size, len(t)
    for text, ids in expected.items():
        got = t(text)["input_ids"]
        assert got == ids, (type(t).__name__, text, got, ids)
    enc = t("hello world", padding="max_length", max_length=16, truncation=True,
            add_special_tokens=True, return_attention_mask=True)
    n = sum(enc["attention_mask"])
    assert enc["input_ids"][n - 1] == 1 and enc["input_ids"][n:] == [0] * (16 - n)
with tempfile.TemporaryDirectory() as d:
    write_tiny_t5_tokenizer(d, vocab_size=vocab_size, seed=0)
    for name in ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert filecmp.cmp(f"{d}/{name}", f"{tok_dir}/{name}", shallow=False), name
print("ok", transformers.__version__)
"""


def test_transformers_457_subprocess(tok, tok_dir: Path) -> None:
    """Set BERNINI_TF457_PYTHON to an interpreter with transformers 4.57.x to run this check."""
    python = os.environ.get("BERNINI_TF457_PYTHON")
    if not python:
        pytest.skip("BERNINI_TF457_PYTHON not set")
    texts = [*PROMPTS, "x<pad>y </s> z"]
    expected = {text: tok(text)["input_ids"] for text in texts}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [python, "-c", _TF457_SCRIPT, str(tok_dir), str(VOCAB_SIZE), json.dumps(expected)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().startswith("ok 4."), proc.stdout
