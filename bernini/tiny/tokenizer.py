"""A tiny, offline, deterministic umt5/T5-style SentencePiece tokenizer for test bundles.

The real bundle's ``tokenizer/`` folder holds the umt5 SentencePiece tokenizer (``spiece.model``,
``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``). Tests cannot reach a model
hub, so :func:`write_tiny_t5_tokenizer` trains a real SentencePiece unigram model on a small corpus built
in code and writes the same four files, loadable with ``AutoTokenizer.from_pretrained`` in transformers
4.57.x and 5.x.

Layout (the T5 one):

* id 0 ``<pad>``, id 1 ``</s>`` (eos, appended to every sequence), id 2 ``<unk>``; no BOS.
* then the learned pieces; then ``extra_ids`` sentinels ``<extra_id_N>`` in reverse order
  (``<extra_id_0>`` is the last id), as T5 does. The default is ``extra_ids=0``: the text encoder never
  sees sentinels, and without them the SentencePiece model itself covers ids ``0 .. vocab_size - 1``.
* ``len(tokenizer) <= vocab_size`` always (SentencePiece pieces + sentinels), so a tiny
  ``UMT5EncoderModel`` with ``vocab_size`` embedding rows covers every id the tokenizer can produce.
  It equals ``vocab_size`` unless the corpus is too small to learn that many pieces
  (``hard_vocab_limit=False``), which does not happen for the default sizes.
* No byte fallback: it would cost 256 ids out of a vocabulary of a few hundred. Instead every
  character in the corpus (ASCII letters, digits, punctuation, some Chinese) is kept
  (``character_coverage=1.0``) and anything else (emoji, rare scripts) maps to ``<unk>`` (id 2), so
  every prompt tokenises without error.
"""

from __future__ import annotations

import io
import json
import os
import random
import string
from pathlib import Path

__all__ = ["write_tiny_t5_tokenizer", "build_tiny_corpus"]

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
MODEL_MAX_LENGTH = 512

# A private copy: the tokenizer bytes must not change when the task table is edited.
_PREFIXES: tuple[str, ...] = (
    "You are a helpful assistant.",
    "You are a helpful assistant specialized in text-to-image generation.",
    "You are a helpful assistant specialized in text-to-video generation.",
    "You are a helpful assistant specialized in image editing.",
    "You are a helpful assistant specialized in subject-to-image generation.",
    "You are a helpful assistant specialized in image-to-video generation.",
    "You are a helpful assistant specialized in video editing.",
    "You are a helpful assistant specialized in subject-to-video generation.",
    "You are a helpful assistant specialized in video editing on content propagation.",
    "You are a helpful assistant specialized in video editing with reference.",
    "You are a helpful assistant specialized in ads insertion.",
    "You are a helpful assistant for editing. You may need to adjust the subject's action or position.",
    "You are a helpful assistant for editing. You might need to adjust the video's style, lighting, colors, "
    "textures, and the subject's pose or action.",
)

_SUBJECTS: tuple[str, ...] = tuple(
    "a woman|a man|a young girl|an old man|a child|a dancer|a chef|a cat|a dog|a horse|a bird|"
    "a robot|an astronaut|a knight|two friends|a crowd of people|a surfer|a skateboarder|a musician|"
    "a fox|a panda|a dragon|a red car|a train".split("|")
)
_ACTIONS: tuple[str, ...] = tuple(
    "walks|runs|jumps|dances|smiles|turns around|waves|sits down|stands up|flies|swims|"
    "rides a bicycle|plays the guitar|drinks coffee|reads a book|laughs|looks at the camera|"
    "slowly raises a hand|spins|climbs a hill|cooks dinner|sings".split("|")
)
_PLACES: tuple[str, ...] = tuple(
    "on a beach|in a forest|in a city street|in the rain|under the stars|in a kitchen|on a mountain|"
    "in a snowy field|in a desert|near a river|in a neon-lit alley|inside a spaceship|at sunset|"
    "at night|in a garden full of flowers|on a busy market".split("|")
)
_COLOURS: tuple[str, ...] = tuple(
    "red|orange|yellow|green|blue|purple|pink|white|black|grey|golden|silver|brown|teal|crimson".split("|")
)
_OBJECTS: tuple[str, ...] = tuple(
    "dress|jacket|hat|umbrella|balloon|scarf|lantern|flower|cup|bag|helmet|kite|sweater|boat|house".split("|")
)
_CAMERA: tuple[str, ...] = tuple(
    "The camera pans left.|The camera pans right.|The camera slowly zooms in.|The camera zooms out.|"
    "Close-up shot.|Wide shot.|Aerial view.|Tracking shot.|Handheld camera.|Slow motion.|"
    "Static camera, shallow depth of field.|Cinematic lighting, 4K, high quality.|"
    "Dolly shot from a low angle.|Time-lapse of the sky.|Soft natural light.".split("|")
)
_STYLES: tuple[str, ...] = tuple(
    "photorealistic|anime style|oil painting|watercolor|3D render|film grain|vintage 1980s look|"
    "cyberpunk|pixel art|black-and-white documentary".split("|")
)
_EDITS: tuple[str, ...] = tuple(
    "Replace the {c} {o} with a {c2} {o2}.|Change the background to {p}.|Make it look {s}.|"
    "Remove the {o} from the scene.|Add a {c} {o} next to the subject.|Turn day into night.".split("|")
)
_CHINESE: tuple[str, ...] = (
    "一个女人在海边散步。",
    "一只猫在花园里奔跑。",
    "镜头缓慢推进，电影质感。",
    "夜晚的城市街道，霓虹灯闪烁。",
    "一个男孩在雪地里跳舞。",
    "红色的汽车在山路上行驶。",
    "高质量，细节丰富，光线柔和。",
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量。",
    "两个朋友在咖啡馆里聊天。",
    "宇航员在太空中漂浮。",
)
_ACCENTED = "àáâäçèéêíñóôöúüß ÀÉÖÜ café naïve Zürich São Paulo"
_NUMBERS = ("one", "two", "three", "five", "ten", "2", "3", "24", "30", "60", "1080p", "720p", "16:9", "9:16")


def build_tiny_corpus(seed: int = 0, num_sentences: int = 600) -> list[str]:
    """The training corpus: prompt-like English sentences, the task prefixes and some Chinese.

    Deterministic for a given ``seed`` (``random.Random(seed)`` only; no global state).
    """
    rng = random.Random(seed)
    lines: list[str] = []
    # Every printable ASCII character, so that ASCII prompts never hit <unk>.
    lines.append(string.ascii_letters + " " + string.digits + " " + string.punctuation)
    lines.append(_ACCENTED)
    lines.extend(" ".join(word.capitalize() for word in group) for group in (_COLOURS, _OBJECTS, _STYLES))
    lines.extend(_PREFIXES * 3)
    lines.extend(_CHINESE * 2)
    for _ in range(num_sentences):
        kind = rng.random()
        subj, act, place = rng.choice(_SUBJECTS), rng.choice(_ACTIONS), rng.choice(_PLACES)
        colour, obj = rng.choice(_COLOURS), rng.choice(_OBJECTS)
        if kind < 0.55:
            sentence = f"{subj.capitalize()} in a {colour} {obj} {act} {place}. {rng.choice(_CAMERA)}"
        elif kind < 0.75:
            edit = rng.choice(_EDITS).format(
                c=colour, o=obj, c2=rng.choice(_COLOURS), o2=rng.choice(_OBJECTS), p=place, s=rng.choice(_STYLES)
            )
            sentence = f"{rng.choice(_PREFIXES)} {edit}"
        elif kind < 0.9:
            sentence = (
                f"{rng.choice(_STYLES).capitalize()}, {rng.choice(_NUMBERS)} {subj.split(' ', 1)[-1]}s {act} "
                f"{place}, {colour} tones; {rng.choice(_CAMERA).lower()}"
            )
        else:
            sentence = f"{rng.choice(_CHINESE)} {subj.capitalize()} {act} {place}."
        lines.append(sentence)
    rng.shuffle(lines)
    return lines


def _train_spiece(corpus: list[str], piece_size: int, seed: int) -> bytes:
    import sentencepiece as spm

    if hasattr(spm, "set_random_generator_seed"):
        spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        model_type="unigram",
        vocab_size=piece_size,
        hard_vocab_limit=False,  # a smaller vocabulary than asked is fine: len(tokenizer) <= vocab_size
        character_coverage=1.0,
        byte_fallback=False,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        pad_piece=PAD_TOKEN,
        eos_piece=EOS_TOKEN,
        unk_piece=UNK_TOKEN,
        normalization_rule_name="nmt_nfkc",  # what the T5 / umt5 models use
        num_threads=1,  # determinism
        input_sentence_size=0,  # use every sentence, no sampling
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


class _SpmSource:
    """The attributes transformers' ``T5Converter`` reads from the slow ``T5Tokenizer`` it converts.

    transformers 5 has no slow T5 tokenizer class any more, so this stands in for one in both versions.
    """

    legacy = True  # the behaviour of the original T5 / umt5 tokenizers (Metaspace prepend_scheme "always")
    add_prefix_space = True

    def __init__(self, vocab_file: str, extra_ids: int) -> None:
        self.vocab_file = vocab_file
        self._extra_ids = extra_ids

    def convert_tokens_to_ids(self, token: str) -> int:
        if token == EOS_TOKEN:
            return EOS_ID
        raise KeyError(token)


def _special(content: str) -> dict[str, object]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def write_tiny_t5_tokenizer(
    out_dir: str | os.PathLike[str], vocab_size: int = 384, seed: int = 0, *, extra_ids: int = 0
) -> None:
    """Train a tiny umt5-style SentencePiece tokenizer and write it to ``out_dir``.

    Writes ``spiece.model``, ``tokenizer.json`` (converted from the SentencePiece model with
    transformers' ``T5Converter``), ``tokenizer_config.json`` and ``special_tokens_map.json``.
    The same ``(vocab_size, seed, extra_ids)`` gives byte-identical files. Every id the tokenizer
    can produce is ``< vocab_size``; see the module docstring for the layout.
    """
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import T5Converter

    if extra_ids < 0:
        raise ValueError(f"extra_ids must be >= 0, got {extra_ids}")
    piece_size = vocab_size - extra_ids
    corpus = build_tiny_corpus(seed)
    # Every corpus character is a piece, plus the three specials, "▁" and a few longer pieces.
    min_pieces = len(set("".join(corpus))) + 16
    if piece_size < min_pieces:
        raise ValueError(f"vocab_size - extra_ids must be at least {min_pieces}, got {piece_size}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spiece_path = out / "spiece.model"
    spiece_path.write_bytes(_train_spiece(corpus, piece_size, seed))

    import sentencepiece as spm

    n_pieces = spm.SentencePieceProcessor(model_file=str(spiece_path)).get_piece_size()
    sentinels = [f"<extra_id_{i}>" for i in range(extra_ids)]
    sentinel_ids = {tok: n_pieces + extra_ids - 1 - i for i, tok in enumerate(sentinels)}

    fast = T5Converter(_SpmSource(str(spiece_path), extra_ids)).converted()
    # Register the special tokens the way a saved T5TokenizerFast does (they are never split or normalised).
    fast.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)])
    fast.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in sentinels])
    for tok, expected in [(PAD_TOKEN, PAD_ID), (EOS_TOKEN, EOS_ID), (UNK_TOKEN, UNK_ID), *sentinel_ids.items()]:
        if fast.token_to_id(tok) != expected:
            raise RuntimeError(f"tokenizer layout error: {tok!r} has id {fast.token_to_id(tok)}, expected {expected}")
    if fast.get_vocab_size(with_added_tokens=True) > vocab_size:
        raise RuntimeError("tokenizer is larger than vocab_size")
    (out / "tokenizer.json").write_text(fast.to_str(pretty=True) + "\n", encoding="utf-8")

    added_tokens_decoder = {
        str(PAD_ID): _special(PAD_TOKEN),
        str(EOS_ID): _special(EOS_TOKEN),
        str(UNK_ID): _special(UNK_TOKEN),
    }
    for tok, idx in sorted(sentinel_ids.items(), key=lambda kv: kv[1]):
        added_tokens_decoder[str(idx)] = _special(tok)
    config = {
        "added_tokens_decoder": added_tokens_decoder,
        "additional_special_tokens": sentinels,
        "clean_up_tokenization_spaces": True,
        "eos_token": EOS_TOKEN,
        "extra_ids": extra_ids,
        "legacy": True,
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": PAD_TOKEN,
        "sp_model_kwargs": {},
        "tokenizer_class": "T5Tokenizer",
        "unk_token": UNK_TOKEN,
    }
    special_map = {
        "additional_special_tokens": sentinels,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": UNK_TOKEN,
    }
    for name, data in (("tokenizer_config.json", config), ("special_tokens_map.json", special_map)):
        (out / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
