"""Rewrite templates: what the enhancer model is told for each task type.

Each :class:`Template` pairs a system message with an optional instruction placed before the user's
prompt, says which media to attach, and whether the reply is JSON (the reference tasks, whose
two-part prompts name image0, image1, …) or plain text. :data:`TEMPLATES` is the lookup by task
type; tasks that share a prompt style share a template object.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JSON_TASKS", "TEMPLATES", "Template"]


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
    numbered = "\n".join(f"{number}. {rule}" for number, rule in enumerate(rules, 1))
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

JSON_TASKS: frozenset[str] = frozenset(name for name, template in TEMPLATES.items() if template.json_output)
