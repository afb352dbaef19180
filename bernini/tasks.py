"""The task table: what each Bernini-R task type changes.

A task type selects the T5 prefix glued in front of the prompt, the prompt-enhancer template, its
media slots and the guidance mode used when nothing else sets one. Which segments are packed depends
only on the media given; which branches are combined depends only on the guidance mode.
"""

from __future__ import annotations

from dataclasses import dataclass

T5_PREFIXES: dict[str, str] = {
    "default": "You are a helpful assistant.",
    "t2i": "You are a helpful assistant specialized in text-to-image generation.",
    "t2v": "You are a helpful assistant specialized in text-to-video generation.",
    "i2i": "You are a helpful assistant specialized in image editing.",
    "r2i": "You are a helpful assistant specialized in subject-to-image generation.",
    "i2v": "You are a helpful assistant specialized in image-to-video generation.",
    "v2v": "You are a helpful assistant specialized in video editing.",
    "r2v": "You are a helpful assistant specialized in subject-to-video generation.",
    "vi2v": "You are a helpful assistant specialized in video editing on content propagation.",
    "rv2v": "You are a helpful assistant specialized in video editing with reference.",
    "vr2v": "You are a helpful assistant specialized in video editing with reference.",
    "ads2v": "You are a helpful assistant specialized in ads insertion.",
    "vrc2v": "You are a helpful assistant for editing. You may need to adjust the subject's action or position.",
    "mv2v": (
        "You are a helpful assistant for editing. You might need to adjust the video's style, lighting, colors, "
        "textures, and the subject's pose or action."
    ),
}

GUIDANCE_MODES: tuple[str, ...] = ("rv2v", "v2v", "v2v_chain", "t2v", "t2v_apg", "v2v_apg", "r2v_apg")

FORWARDS_PER_STEP: dict[str, int] = {
    "rv2v": 4,
    "v2v": 2,
    "v2v_chain": 3,
    "t2v": 2,
    "t2v_apg": 2,
    "v2v_apg": 2,
    "r2v_apg": 3,
}


@dataclass(frozen=True)
class TaskSpec:
    """One task type: its media slots and defaults."""

    name: str
    guidance_mode: str
    video: str  # "none" | "one" | "one_or_more"
    image: bool  # accepts a single source `image`
    images: str  # "none" | "optional" | "required"
    single_frame: bool
    description: str

    @property
    def t5_prefix(self) -> str:
        return T5_PREFIXES.get(self.name, T5_PREFIXES["default"])


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("t2i", "t2v_apg", "none", False, "none", True, "text to image"),
        TaskSpec("i2i", "v2v", "none", True, "optional", True, "image editing from a source image"),
        TaskSpec("t2v", "t2v_apg", "none", False, "none", False, "text to video"),
        TaskSpec("v2v", "v2v_apg", "one_or_more", False, "optional", False, "video editing (appearance)"),
        TaskSpec("mv2v", "v2v_apg", "one_or_more", False, "optional", False, "video editing (motion)"),
        TaskSpec("rv2v", "rv2v", "one_or_more", True, "optional", False, "video editing with reference images"),
        TaskSpec("r2v", "r2v_apg", "none", True, "optional", False, "subject-to-video from reference images"),
        TaskSpec("ads2v", "v2v_apg", "one_or_more", True, "optional", False, "insert a second video into the first"),
    )
}

MEDIA_NEEDS: dict[str, str] = {
    "rv2v": "a video and a reference image",
    "v2v_chain": "a video",
    "r2v_apg": "reference images",
    "v2v": "a video or an image",
    "v2v_apg": "a video or an image",
}
"""What the guidance modes that read visual inputs need, as named in the error when it is missing."""


def t5_prefix(task_type: str) -> str:
    """The exact training-time T5 prefix; unknown types fall back to the default one."""
    return T5_PREFIXES.get(task_type, T5_PREFIXES["default"])
