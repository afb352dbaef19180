"""Prompt enhancer (``--use_pe``): rewrite a user prompt with an OpenAI-compatible chat model.

Bernini-R was trained on long, explicit prompts (an edit instruction plus a description of the
target, including what stays unchanged). Short user prompts work noticeably worse, so the
upstream project recommends rewriting them with a vision-language model first. This module does
that through the official ``openai`` SDK against any chat-completions endpoint.

Design rules:

* Configuration is an explicit :class:`EnhancerConfig`; nothing is read from the environment at
  call time (only :meth:`EnhancerConfig.from_env` reads it, and only when asked).
* The enhancer never loses a generation: every failure (network, HTTP error, malformed reply,
  unreadable media, even a bug in here) returns the raw prompt with a one-line warning.
* The API key never leaves the HTTP ``Authorization`` header: it is hidden from ``repr`` and
  scrubbed from every message built from an exception or a server reply.
* The library prints nothing; progress goes to an optional ``log`` callable.

Retry policy: rate limits (429), 408/409, server errors (5xx), timeouts and connection errors
are retried with exponential backoff (``backoff_s * 2**k``, capped at 30 s, or the server's
``Retry-After`` if longer) for at most ``max_attempts`` requests and never past ``budget_s``.
A reply that is empty or lacks a usable ``rewritten_text`` is retried **once**, immediately:
sampling is random and a second draw usually succeeds, while further retries mostly burn time.
Other HTTP errors (400/401/403/404/422 …) fall back at once.

The wall-time bound relies on the SDK's per-request timeout, which httpx applies to each network
operation (connect, each read, write); a server trickling bytes could exceed it, which no
OpenAI-compatible server does in practice.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
from PIL import Image

from .errors import BerniniError

__all__ = [
    "DEFAULT_PE_MODEL",
    "JSON_TASKS",
    "TEMPLATES",
    "EnhanceResult",
    "EnhancerConfig",
    "ImageLike",
    "Template",
    "case_with_prompt",
    "enhance_prompt",
    "enhancer_available",
    "parse_rewritten_text",
]

DEFAULT_PE_MODEL = "gpt-5.4-2026-03-05"
"""The upstream default enhancer model."""

ImageLike: TypeAlias = "str | os.PathLike[str] | Image.Image | np.ndarray"

_DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Sent when no key is configured, e.g. for a local vLLM/Ollama server; the SDK refuses no key at all.
_NO_KEY_PLACEHOLDER = "EMPTY"
_MAX_BACKOFF_S = 30.0
# Do not start a request with less time than this left in the budget.
_MIN_ATTEMPT_S = 0.05
_RETRYABLE_STATUS = frozenset({408, 409, 429})
_MAX_DETAIL_CHARS = 160


# ----------------------------------------------------------------------------------------------
# Configuration and result


@dataclass(frozen=True)
class EnhancerConfig:
    """Where and how to call the enhancer model.

    ``base_url`` None means the public OpenAI endpoint; ``api_key`` None sends a placeholder key,
    which local OpenAI-compatible servers accept.
    """

    model: str = DEFAULT_PE_MODEL
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    max_attempts: int = 4
    budget_s: float = 180.0
    backoff_s: float = 1.0
    max_completion_tokens: int = 8192

    def __post_init__(self) -> None:
        if not self.model or not str(self.model).strip():
            raise BerniniError("prompt enhancer model name is empty; pass --pe_model or set BERNINI_PE_MODEL")
        if self.max_attempts < 1:
            raise BerniniError(f"prompt enhancer max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("timeout_s", "budget_s"):
            if not getattr(self, name) > 0:
                raise BerniniError(f"prompt enhancer {name} must be > 0, got {getattr(self, name)}")
        if self.backoff_s < 0:
            raise BerniniError(f"prompt enhancer backoff_s must be >= 0, got {self.backoff_s}")
        if self.max_completion_tokens < 1:
            raise BerniniError(f"prompt enhancer max_completion_tokens must be >= 1, got {self.max_completion_tokens}")

    def __repr__(self) -> str:
        key = "'***'" if self.api_key else "None"
        return (
            f"EnhancerConfig(model={self.model!r}, base_url={_safe_url(self.base_url)!r}, api_key={key}, "
            f"timeout_s={self.timeout_s}, max_attempts={self.max_attempts}, budget_s={self.budget_s}, "
            f"backoff_s={self.backoff_s}, max_completion_tokens={self.max_completion_tokens})"
        )

    @classmethod
    def from_env(cls, pe_model: str | None = None, env: Mapping[str, str] | None = None) -> EnhancerConfig:
        """Build a config from ``--pe_model`` and the environment.

        Base URL: ``BERNINI_PE_BASE_URL``, else ``OPENAI_BASE_URL``. Key: ``BERNINI_PE_API_KEY``, else
        ``OPENAI_API_KEY``. Model: ``pe_model``, else ``BERNINI_PE_MODEL``, else :data:`DEFAULT_PE_MODEL`.
        Empty values count as unset.
        """
        env = os.environ if env is None else env

        def first(*values: str | None) -> str | None:
            for value in values:
                if value is not None and value.strip():
                    return value.strip()
            return None

        return cls(
            model=first(pe_model, env.get("BERNINI_PE_MODEL")) or DEFAULT_PE_MODEL,
            base_url=first(env.get("BERNINI_PE_BASE_URL"), env.get("OPENAI_BASE_URL")),
            api_key=first(env.get("BERNINI_PE_API_KEY"), env.get("OPENAI_API_KEY")),
        )


@dataclass(frozen=True)
class EnhanceResult:
    """The prompt to use, and how it was obtained.

    ``prompt`` is the rewritten prompt when ``enhanced`` is true, else the original one; ``warning``
    is one line explaining a fallback (None on success or when there was nothing to do).
    """

    prompt: str
    original: str
    enhanced: bool
    model: str
    warning: str | None
    attempts: int
    seconds: float


def enhancer_available(config: EnhancerConfig) -> bool:
    """Whether an endpoint is configured at all (a base URL or an API key)."""
    return bool(config.base_url or config.api_key)


def case_with_prompt(case: Mapping[str, Any], prompt: str) -> dict[str, Any]:
    """A copy of a case-file dict with its prompt replaced (for ``--pe_only`` review output)."""
    out = copy.deepcopy(dict(case))
    out["prompt"] = prompt
    return out


# ----------------------------------------------------------------------------------------------
# Templates


@dataclass(frozen=True)
class Template:
    """How to ask the enhancer to rewrite one task type's prompt.

    ``instruction`` goes before the user's prompt in the user message; when empty (t2v, t2i) the
    user message is the prompt alone and all guidance is in ``system``. ``media`` lists what is
    attached, always in the order videos, ``image``, ``images``:

    * ``"frames"``: 3 evenly spaced frames of every video;
    * ``"image"``: the single ``image``, described to the model as ``image_role``;
    * ``"refs"``: ``image`` then ``images`` as one list of references named image0, image1, …;
    * ``"keyframes"``: ``image`` then ``images`` as first / (middle) / last frames.
    """

    system: str
    instruction: str
    json_output: bool
    media: tuple[str, ...] = ()
    image_role: str = "the source image"


_ASSISTANT = "You are a helpful assistant."

_JSON_REPLY = (
    'Reply with a JSON object and nothing else, of the form {"rewritten_text": "<your prompt>"}, '
    "with the prompt as one English string."
)


def _director_system(still: bool) -> str:
    """The t2v system message; ``still`` gives the t2i variant (static state instead of motion)."""
    medium = "image" if still else "video"
    lead = (
        "Note: the result is a single still image, not a video. There is no motion over time and no camera "
        "movement.\n\n"
        if still
        else ""
    )
    motion = (
        "Describe only the static state of the scene at one moment: poses, positions, gestures and expressions."
        if still
        else "Describe how the action unfolds step by step, in the order it happens, with natural and physically "
        "plausible movement of the subjects (and of the camera, if the user asks for it)."
    )
    if still:
        examples = (
            "Input: a fox in the snow\n"
            "Output: A red fox stands alert in fresh, knee-deep snow at the edge of a pine forest, its thick "
            "orange coat dusted with white flakes and its bushy tail curled around its legs. Its amber eyes look "
            "straight at the viewer and its ears point forward. Soft morning sunlight comes from the left and "
            "casts long blue shadows across the snow. Behind it the sky is a clear, deep blue. Medium shot, "
            "eye-level angle, centered composition, crisp natural colors.\n\n"
            "Input: watercolor style, an old lighthouse\n"
            "Output: Watercolor style. A weathered white lighthouse with a red lantern room rises from a rocky "
            "headland, paint peeling from its stone walls and a small keeper's cottage with a slate roof at its "
            "base. Waves break into white foam on the dark rocks below. Warm late-afternoon light from the right "
            "gives the tower a golden edge under a clear, deep blue sky. Wide shot, low camera angle, loose wet "
            "brushstrokes and soft bleeding edges."
        )
    else:
        examples = (
            "Input: a cat playing piano\n"
            "Output: A fluffy grey tabby cat with white paws sits on a velvet stool in front of a polished black "
            "grand piano in a cozy living room. It lifts its right paw and presses a few keys, pauses and tilts "
            "its head at the sound, then taps a quick run of notes with both front paws while its tail sways "
            "behind it. Warm daylight enters through a tall window on the left and falls softly across the keys. "
            "Medium shot, eye-level camera, centered composition.\n\n"
            "Input: anime style, a girl running to catch a train\n"
            "Output: Anime style. A teenage girl with a short black bob, a navy school uniform and a red scarf "
            "runs along a busy platform, her schoolbag bouncing against her hip. She weaves past commuters, "
            "reaches the edge of the platform as the doors of a silver commuter train begin to close, and slips "
            "through just in time, then leans against the door catching her breath. Bright midday sun, clear "
            "deep blue sky above the station roof, wide shot, slightly low camera angle."
        )
    rules = [
        "Keep every subject, action and detail the user gave. Enrich them with concrete appearance (age, "
        "clothing, colors, materials, expressions) but do not add new main subjects or change the story.",
        "Pick at most four cinematic settings that suit the scene from: time of day, light source, light "
        "intensity, color tone, light angle, shot size, camera angle, composition. Unless the user says "
        "otherwise, use daytime, a medium or wide shot and a centered composition.",
        motion,
        "If the prompt starts with a style tag (for example 'anime style' or 'oil painting'), keep it as the "
        "first words of your prompt.",
        "Whenever the sky is visible, make it a clear, deep blue sky unless the user asks for other weather.",
        "Content safety: turn sexual content, nudity, graphic violence, gore or hateful imagery into a "
        "tasteful, non-explicit version that keeps the harmless intent (people fully clothed, harm implied "
        "rather than shown).",
        "Write one paragraph of plain English prose, 60 to 200 words. Output only the rewritten prompt: no "
        "title, list, quotes or comments.",
    ]
    numbered = "\n".join(f"{i}. {rule}" for i, rule in enumerate(rules, 1))
    return (
        f"{lead}You are a film director writing prompts for a text-to-{medium} model. Turn the user's idea into "
        f"one vivid, concrete prompt the model can render faithfully.\n\nRules:\n{numbered}\n\nExamples:\n\n"
        f"{examples}"
    )


_V2V = """\
You are given the start, middle and end frames of a video and a request to edit that video. Rewrite the \
request into a precise English instruction for a video-editing model.

First decide which kind of edit it is: replacing an object or person, adding something, deleting something, \
removing subtitles or captions, turning a depth map or sketch into a realistic video, colorizing, inpainting \
a region, detecting or highlighting objects, changing the style, a mix of several of these, a change of \
camera motion, a change of perspective, a focus shift, or something else. Word the instruction to fit that \
kind.

Write it as modification plus preservation: first say exactly what changes, then what stays the same (the \
other subjects, their motion, the background, lighting and camera work, as relevant). Replace vague \
references such as "it", "the thing" or "that person" with the concrete instance you see in the frames, \
for example "the man in the grey hoodie on the left". Give new content enough detail (color, material, \
shape, size, position) to be drawn. A camera change is described in a single sentence.

Example. Request: "give him sunglasses". Output: "Add a pair of black rectangular sunglasses to the young \
man with short brown hair in the center of the frame, resting naturally on his nose and ears and following \
his head movements. Keep his face, clothing and motion, the park background and the camera movement \
unchanged."

Answer in English only, with the rewritten instruction and nothing else."""

_I2I = """\
You are given an image and a request to edit it. Rewrite the request into a precise English instruction \
for an image-editing model.

First decide which kind of edit it is: replacing an object or person, adding something, deleting \
something, removing text or captions, turning a depth map or sketch into a realistic image, colorizing, \
inpainting a region, outpainting (extending the canvas), relighting, changing a pose or facial expression, \
changing the viewpoint, changing the focus or depth of field, detecting or highlighting objects, changing \
the style, a mix of several of these, or something else. Word the instruction to fit that kind.

Write it as modification plus preservation: first say exactly what changes, then what stays the same (the \
other subjects, the background, lighting and composition, as relevant). Replace vague references such as \
"it" or "that person" with the concrete instance you see, for example "the woman in the yellow raincoat on \
the right". Give new content enough detail (color, material, shape, size, position) to be drawn.

Example. Request: "give him sunglasses". Output: "Add a pair of black rectangular sunglasses to the young \
man with short brown hair in the center of the image, resting naturally on his nose and ears. Keep his \
face, expression and clothing, the park background and the lighting unchanged."

Answer in English only, with the rewritten instruction and nothing else."""

_R2V = f"""\
You write prompts for a model that generates a video from reference images. The references are named \
image0, image1, … in the order they are attached. Rewrite the user's request into a two-part English \
prompt.

Part 1: one short instruction saying which subject, object or place comes from which reference, naming \
each as image0, image1, … (for example "The woman from image0 walks the dog from image1 along the beach \
from image2.").

Part 2: a sentence beginning "Generate a video where" that describes the appearance of every referenced \
subject as it is in its image (face, hair, clothing, colors, distinctive details; stay faithful to the \
reference and add nothing that contradicts it), then the scene and setting, then the motion step by step \
in the order it happens.

Mention every reference that is attached and no other. Keep the user's intent: add detail, not a new story.

{_JSON_REPLY}"""

_R2I = f"""\
You write prompts for a model that generates a still image from reference images. The references are \
named image0, image1, … in the order they are attached. Rewrite the user's request into a two-part English \
prompt.

Part 1: one short instruction saying which subject, object or place comes from which reference, naming \
each as image0, image1, … (for example "The woman from image0 holds the cat from image1 in the kitchen \
from image2.").

Part 2: a sentence beginning "Generate an image where" that describes the appearance of every referenced \
subject as it is in its image (face, hair, clothing, colors, distinctive details; stay faithful to the \
reference and add nothing that contradicts it), then the scene and setting, the poses and the composition. \
There is no motion: describe one moment.

Mention every reference that is attached and no other. Keep the user's intent: add detail, not a new story.

{_JSON_REPLY}"""

_RV2V = f"""\
You are given the start, middle and end frames of a source video, then one or more reference images, and \
a request to edit the video using the references. Write one English paragraph for a reference-based \
video-editing model: first the edit instruction, then a description of the edited video.

- Use the verb that matches the intent: "add" puts something new into the scene, "replace" swaps an \
existing thing for the referenced one. Never describe an addition as a replacement or the reverse.
- The new object may have a different shape or size than the one it replaces; say so instead of forcing \
it into the old outline. If the subject's action or position must change, say how.
- Describe the referenced item faithfully from its image: colors, patterns, materials, logos, shape.
- Left and right are as seen on the screen, from the viewer's side.
- State explicitly what stays unchanged: the other people and objects, their motion, the background, the \
lighting and the camera movement.
- Do not use parentheses.

{_JSON_REPLY}"""

_ADS2V = """\
You are given frames of two videos: video 1 is the video to edit, video 2 shows the advertised content (a \
product, logo or brand item) to insert into it. Using the user's request, write one short English \
sentence that says what to insert and where, in the style "Add <brand item> on <location>", for example \
"Add the red Coca-Cola can on the wooden table next to the laptop." Name the item by its brand and look, \
and the location by what is visible in video 1. Output only that sentence."""

_VI2V = """\
You are given the start, middle and end frames of a source video and an edited version of its first \
frame. The edit must be carried through the whole video. Compare the edited frame with the source's first \
frame and decide which kind of edit it is:

1. Propagation: a global change (style, colors, look of the whole frame) or a change best described as \
"repeat this edit in every frame". Output exactly: edit the video following the first frame.
2. Insertion: the edited frame contains a new object or person that the source does not. Output one \
sentence "Add <the new thing, described in detail> <where it is>."
3. Replacement: something in the source was swapped for something else. Output one sentence "Replace \
<the original thing> with <the new thing, described in detail>."

Use the user's request as a hint when it is given. Answer in English, with only the resulting sentence."""

_I2V = """\
You write prompts for an image-to-video model. You are given one, two or three keyframes and the user's \
request.

- One keyframe: it is the first frame. Describe the video that starts from it: the subjects as they \
appear, then how they move (and how the camera moves, if at all), step by step.
- Two keyframes: the first and the last frame. Describe a natural transition from the first to the last: \
what moves, changes or appears, in order.
- Three keyframes: the first, middle and last frame. Describe the motion through all three, in order.

Keep the appearance of everything as it is in the keyframes and do not introduce new subjects. Write one \
paragraph of plain English, 40 to 150 words, and output only the prompt."""


_V2V_TEMPLATE = Template(_ASSISTANT, _V2V, json_output=False, media=("frames",))
_RV2V_TEMPLATE = Template(_ASSISTANT, _RV2V, json_output=True, media=("frames", "refs"))

TEMPLATES: dict[str, Template] = {
    "t2v": Template(_director_system(still=False), "", json_output=False),
    "t2i": Template(_director_system(still=True), "", json_output=False),
    "i2i": Template(_ASSISTANT, _I2I, json_output=False, media=("image",), image_role="the image to edit"),
    "v2v": _V2V_TEMPLATE,
    "mv2v": _V2V_TEMPLATE,
    "r2v": Template(_ASSISTANT, _R2V, json_output=True, media=("refs",)),
    "r2i": Template(_ASSISTANT, _R2I, json_output=True, media=("refs",)),
    "rv2v": _RV2V_TEMPLATE,
    "vrc2v": _RV2V_TEMPLATE,
    "ads2v": Template(_ASSISTANT, _ADS2V, json_output=False, media=("frames",)),
    "vi2v": Template(
        _ASSISTANT, _VI2V, json_output=False, media=("frames", "image"), image_role="the edited first frame"
    ),
    "i2v": Template(_ASSISTANT, _I2V, json_output=False, media=("keyframes",)),
}
"""Rewrite template per task type (mv2v shares v2v's, vrc2v shares rv2v's)."""

JSON_TASKS: frozenset[str] = frozenset(name for name, tpl in TEMPLATES.items() if tpl.json_output)


# ----------------------------------------------------------------------------------------------
# Media encoding

# Formats chat endpoints accept as-is; anything else PIL can read is re-encoded as PNG.
_PASSTHROUGH_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}


class _MediaProblem(Exception):
    """An input that cannot be encoded for the enhancer; becomes a fallback warning."""


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _png_bytes(image: Image.Image) -> bytes:
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "1"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _array_to_pil(array: np.ndarray, what: str) -> Image.Image:
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise _MediaProblem(f"{what} must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise _MediaProblem(f"{what} must be HxW, HxWx3 or HxWx4, got shape {tuple(array.shape)}")
    return Image.fromarray(np.ascontiguousarray(array))


def _encode_image(image: ImageLike, what: str) -> str:
    """A data URI for one image: files keep their bytes and real MIME type, the rest becomes PNG."""
    if isinstance(image, Image.Image):
        return _data_uri("image/png", _png_bytes(image))
    if isinstance(image, np.ndarray):
        return _data_uri("image/png", _png_bytes(_array_to_pil(image, what)))
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            with Image.open(io.BytesIO(data)) as img:
                fmt = (img.format or "").upper()
                mime = _PASSTHROUGH_MIME.get(fmt)
                if mime is None and fmt == "MPO":  # multi-picture JPEG from phones; the first picture is JPEG
                    mime = "image/jpeg"
                if mime is not None:
                    return _data_uri(mime, data)
                img.load()
                return _data_uri("image/png", _png_bytes(img))
        except (OSError, ValueError) as exc:
            raise _MediaProblem(f"cannot read {what} {path!r}: {type(exc).__name__}: {exc}") from None
    raise _MediaProblem(f"{what} has unsupported type {type(image).__name__}")


def _frame_indices(n: int) -> list[int]:
    """Three evenly spaced frame indices: first, middle and last (``round(i*(n-1)/2)``)."""
    return [int(round(i * (n - 1) / 2)) for i in range(3)]


def _video_frame_uris(video: np.ndarray, what: str) -> list[str]:
    frames = np.asarray(video)
    if frames.ndim != 4 or frames.shape[0] < 1:
        raise _MediaProblem(f"{what} must be a [T,H,W,3] frame array, got shape {tuple(frames.shape)}")
    return [_data_uri("image/png", _png_bytes(_array_to_pil(frames[i], what))) for i in _frame_indices(len(frames))]


def _label_range(first: int, last: int) -> str:
    return f"[Image {first}]" if first == last else f"[Image {first}] to [Image {last}]"


def _collect_media(
    template: Template, videos: Sequence[np.ndarray], image: ImageLike | None, images: Sequence[ImageLike]
) -> tuple[list[str], list[str], list[str]]:
    """Encode the media the template uses; returns (data URIs, legend lines, notes about ignored media)."""
    uris: list[str] = []
    legend: list[str] = []
    ignored: list[str] = []
    media = template.media

    if "frames" in media:
        for j, video in enumerate(videos, 1):
            name = "the source video" if len(videos) == 1 else f"video {j}"
            start = len(uris) + 1
            uris.extend(_video_frame_uris(video, f"video {j}"))
            legend.append(f"{_label_range(start, len(uris))}: start, middle and end frames of {name}")
    elif videos:
        ignored.append(f"{len(videos)} video(s)")

    group = [image] if image is not None else []
    group += list(images)
    if "refs" in media or "keyframes" in media:
        for k, item in enumerate(group):
            uris.append(_encode_image(item, f"image {k}"))
            if "refs" in media:
                legend.append(f"[Image {len(uris)}]: reference image{k}")
            else:
                legend.append(f"[Image {len(uris)}]: keyframe {k + 1} of {len(group)}")
    else:
        if image is not None:
            if "image" in media:
                uris.append(_encode_image(image, "image"))
                legend.append(f"[Image {len(uris)}]: {template.image_role}")
            else:
                ignored.append("the image")
        if images:
            ignored.append(f"{len(images)} reference image(s)")
    return uris, legend, ignored


def _build_messages(template: Template, prompt: str, uris: list[str], legend: list[str]) -> list[dict[str, Any]]:
    if template.instruction:
        text = template.instruction
        if legend:
            text += "\n\nAttached images:\n" + "\n".join(legend)
        text += f"\n\nUser request: {prompt}"
    else:
        text = prompt
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    for i, uri in enumerate(uris, 1):
        parts.append({"type": "text", "text": f"\n[Image {i}]:"})
        parts.append({"type": "image_url", "image_url": {"url": uri}})
    return [{"role": "system", "content": template.system}, {"role": "user", "content": parts}]


# ----------------------------------------------------------------------------------------------
# Reply parsing

_THINK_RE = re.compile(r"<think(?:ing)?>.*?</think(?:ing)?>", re.DOTALL | re.IGNORECASE)
_FENCE_RE = re.compile(r"^```[\w+-]*[ \t]*\n?(.*?)\n?```$", re.DOTALL)
_QUOTE_PAIRS = (('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("\u00ab", "\u00bb"))


def _strip_reasoning(text: str) -> str:
    """Drop ``<think>…</think>`` blocks that some open reasoning models put in the content."""
    return _THINK_RE.sub("", text)


def parse_rewritten_text(reply: str) -> str | None:
    """The ``rewritten_text`` of the first JSON object in ``reply`` that has a non-empty one.

    Tolerates code fences and prose around the object, and objects nested inside others.
    Returns None when there is no such object.
    """
    text = _strip_reasoning(reply)
    decoder = json.JSONDecoder()
    pos = text.find("{")
    while pos != -1:
        try:
            obj, _ = decoder.raw_decode(text, pos)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            value = obj.get("rewritten_text")
            if isinstance(value, str) and value.strip():
                return value.strip()
        pos = text.find("{", pos + 1)
    return None


def _clean_text_reply(reply: str) -> str:
    """A plain-text reply without reasoning blocks, code fences or surrounding quotes."""
    text = _strip_reasoning(reply).strip()
    match = _FENCE_RE.match(text)
    if match:
        text = match.group(1).strip()
    # Some models answer plain-text templates in JSON anyway; accept that.
    if text.startswith("{"):
        parsed = parse_rewritten_text(text)
        if parsed:
            return parsed
    for left, right in _QUOTE_PAIRS:
        if len(text) >= 2 and text.startswith(left) and text.endswith(right) and left not in text[1:-1]:
            text = text[1:-1].strip()
            break
    return text


class _ReplyProblem(Exception):
    """A reply that arrived but cannot be used (empty, refused, malformed)."""


def _reply_text(response: Any) -> tuple[str, str | None]:
    """The message content and finish reason of a chat.completion, tolerating odd servers."""
    choices = getattr(response, "choices", None) or []
    if not choices:
        raise _ReplyProblem("reply has no choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    if not content:
        refusal = getattr(message, "refusal", None)
        if refusal:
            raise _ReplyProblem(f"model refused: {refusal}")
    return (content or ""), getattr(choice, "finish_reason", None)


def _extract_prompt(response: Any, json_output: bool) -> str:
    content, finish = _reply_text(response)
    if not content.strip():
        suffix = f" (finish_reason={finish})" if finish and finish != "stop" else ""
        raise _ReplyProblem(f"empty reply{suffix}")
    if json_output:
        text = parse_rewritten_text(content)
        if text is None:
            raise _ReplyProblem("malformed JSON reply (no rewritten_text)")
    else:
        text = _clean_text_reply(content)
        if not text:
            raise _ReplyProblem("empty reply")
    return text


# ----------------------------------------------------------------------------------------------
# Error handling


def _safe_url(url: str | None) -> str | None:
    """The URL without user info or query string, which may carry credentials."""
    if not url:
        return url
    url = re.sub(r"^([a-zA-Z][\w+.-]*://)[^/@]*@", r"\1", url)
    return url.split("?", 1)[0]


def _scrub(text: str, secret: str | None) -> str:
    """One line of ``text`` with the secret (and anything that looks like a piece of it) masked."""
    text = " ".join(str(text).split())
    if secret:
        text = text.replace(secret, "***")
        if len(secret) >= 8:
            # Servers often echo a partly masked key ("sk-ab***wxyz"): drop words sharing 6+ chars with it.
            pieces = {secret[i : i + 6] for i in range(len(secret) - 5)}
            words = text.split(" ")
            text = " ".join("***" if any(p in w for p in pieces) else w for w in words)
    text = re.sub(r"(?i)\b(bearer)\s+\S+", r"\1 ***", text)
    text = re.sub(r"\bsk-[A-Za-z0-9_*.\-]{3,}", "sk-***", text)
    return text


def _shorten(text: str, limit: int = _MAX_DETAIL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


@dataclass
class _Failure:
    reason: str
    retryable: bool
    retry_after: float | None = None


def _retry_after(exc: Any) -> float | None:
    """The server's Retry-After hint in seconds, when it gives a plain number."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms") is not None:
            return max(0.0, float(headers["retry-after-ms"]) / 1000.0)
        if headers.get("retry-after") is not None:
            return max(0.0, float(headers["retry-after"]))
    except (TypeError, ValueError):
        return None
    return None


def _error_detail(exc: Any) -> str:
    """The server's own error message, if the body carries one."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
    return ""


def _classify(exc: BaseException, base_url: str) -> _Failure:
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return _Failure("timeout", True)
    if isinstance(exc, openai.APIConnectionError):
        return _Failure(f"cannot connect to {_safe_url(base_url)}", True)
    if isinstance(exc, openai.APIStatusError):
        status = int(exc.status_code)
        retryable = status in _RETRYABLE_STATUS or status >= 500
        reason = f"HTTP {status}"
        if not retryable:
            detail = _error_detail(exc)
            if detail:
                reason += f": {_shorten(detail)}"
        return _Failure(reason, retryable, _retry_after(exc) if retryable else None)
    return _Failure(_shorten(f"{type(exc).__name__}: {exc}"), False)


def _default_client_factory(**kwargs: Any) -> Any:
    import openai

    return openai.OpenAI(**kwargs)


# ----------------------------------------------------------------------------------------------
# Main entry point


def enhance_prompt(
    prompt: str,
    task_type: str,
    config: EnhancerConfig,
    *,
    videos: Sequence[np.ndarray] = (),
    image: ImageLike | None = None,
    images: Sequence[ImageLike] = (),
    client_factory: Callable[..., Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] | None = None,
) -> EnhanceResult:
    """Rewrite ``prompt`` for ``task_type`` with the configured chat model; never raises on failure.

    ``videos`` are decoded uint8 ``[T,H,W,3]`` arrays (3 frames of each are sent); ``image`` and
    ``images`` are paths, PIL images or HxWx3 uint8 arrays. ``client_factory`` builds the SDK client
    from keyword arguments ``api_key``, ``base_url``, ``timeout`` and ``max_retries`` (default
    ``openai.OpenAI``); ``sleep`` and ``clock`` are injectable for tests. On any failure the result
    holds the original prompt, ``enhanced=False`` and a one-line ``warning``. ``log`` receives
    progress lines (retries, the enhanced prompt) but not the warning, which the caller shows.
    """
    start = clock()
    secret = config.api_key
    attempts = 0

    def emit(message: str) -> None:
        if log is not None:
            log(_scrub(message, secret))

    def done(text: str, enhanced: bool, warning: str | None) -> EnhanceResult:
        if warning is not None:  # returned, not logged: the caller decides how to show it
            warning = _scrub(warning, secret)
        return EnhanceResult(
            prompt=text,
            original=prompt,
            enhanced=enhanced,
            model=config.model,
            warning=warning,
            attempts=attempts,
            seconds=max(0.0, clock() - start),
        )

    def fallback(reason: str) -> EnhanceResult:
        return done(prompt, False, f"prompt enhancer failed ({_scrub(reason, secret)}); using the original prompt")

    if not prompt or not prompt.strip():
        return done(prompt, False, None)
    template = TEMPLATES.get(task_type)
    if template is None:
        return done(
            prompt,
            False,
            f"prompt enhancer has no template for task_type {task_type!r} "
            f"(known: {', '.join(TEMPLATES)}); using the original prompt",
        )

    client = None
    try:
        try:
            uris, legend, ignored = _collect_media(template, videos, image, images)
        except _MediaProblem as exc:
            return fallback(str(exc))
        if ignored:
            emit(f"prompt enhancer: the {task_type} template does not use {' and '.join(ignored)}; not sending")
        messages = _build_messages(template, prompt, uris, legend)
        request: dict[str, Any] = {
            "model": config.model,
            "messages": messages,
            "max_completion_tokens": config.max_completion_tokens,
        }
        if template.json_output:
            request["response_format"] = {"type": "json_object"}

        base_url = config.base_url or _DEFAULT_BASE_URL
        factory = client_factory or _default_client_factory
        client = factory(
            api_key=config.api_key or _NO_KEY_PLACEHOLDER,
            base_url=base_url,
            timeout=config.timeout_s,
            max_retries=0,
        )
        emit(f"prompt enhancer: asking {config.model} to rewrite the {task_type} prompt ({len(uris)} image(s))")

        backoff_index = 0
        reply_retry_used = False
        last_reason = ""
        while True:
            remaining = config.budget_s - (clock() - start)
            if remaining < _MIN_ATTEMPT_S:
                return fallback(
                    _after(last_reason or "no time left", attempts)
                    + f", stopped by the {config.budget_s:g} s time budget"
                )
            attempts += 1
            try:
                response = client.chat.completions.create(**request, timeout=min(config.timeout_s, remaining))
                text = _extract_prompt(response, template.json_output)
            except _ReplyProblem as exc:
                last_reason = str(exc)
                if reply_retry_used or attempts >= config.max_attempts:
                    return fallback(_after(last_reason, attempts))
                reply_retry_used = True
                emit(f"prompt enhancer: attempt {attempts} failed ({last_reason}); retrying once")
                continue
            except Exception as exc:  # every SDK/network failure must fall back
                failure = _classify(exc, base_url)
                last_reason = failure.reason
                if not failure.retryable or attempts >= config.max_attempts:
                    return fallback(_after(last_reason, attempts))
                delay = min(config.backoff_s * 2**backoff_index, _MAX_BACKOFF_S)
                if failure.retry_after is not None:
                    delay = min(max(delay, failure.retry_after), _MAX_BACKOFF_S)
                backoff_index += 1
                if clock() - start + delay + _MIN_ATTEMPT_S > config.budget_s:
                    return fallback(
                        _after(last_reason, attempts) + f", stopped by the {config.budget_s:g} s time budget"
                    )
                emit(f"prompt enhancer: attempt {attempts} failed ({last_reason}); retrying in {delay:g} s")
                sleep(delay)
                continue
            result = done(text, True, None)
            emit(
                f"prompt enhancer: {config.model} rewrote the prompt in {result.seconds:.1f} s "
                f"({attempts} attempt{'s' if attempts != 1 else ''}): {text}"
            )
            return result
    except Exception as exc:  # a bug here must not cost the user their generation
        return fallback(_shorten(f"internal error: {type(exc).__name__}: {exc}"))
    finally:
        close = getattr(client, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # closing is best effort
                pass


def _after(reason: str, attempts: int) -> str:
    return reason if attempts <= 1 else f"{reason} after {attempts} attempts"
