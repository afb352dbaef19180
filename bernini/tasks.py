"""The task table: what each Bernini-R task type changes.

A task type selects the T5 prefix glued in front of the prompt, the prompt-enhancer template, its
media slots and rules and the guidance mode used when nothing else sets one. Which segments are packed
depends only on the media given; which branches are combined depends only on the guidance mode
(:mod:`bernini.sampling.guidance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class TaskSpec:
    """One task type: its media slots, what it requires, and its defaults."""

    name: str
    guidance_mode: str
    video: str  # "none" | "one_or_more"
    image: bool  # accepts a single source `image`
    images: str  # "none" | "optional"
    single_frame: bool
    description: str
    needs_image: bool = False  # the source image itself is required (i2i)
    needs_references: bool = False  # at least one of `image` / `images` (rv2v, r2v)
    with_video: str = "v2v"  # the task to suggest when a video is given to a task that takes none

    @property
    def t5_prefix(self) -> str:
        return T5_PREFIXES.get(self.name, T5_PREFIXES["default"])

    def media_problem(self, videos: int, has_image: bool, images: int) -> str | None:
        """Why the given media do not fit this task (one actionable line), or None."""
        if self.video == "none" and videos:
            return f"task {self.name} takes no video; drop --video or use task_type {self.with_video}"
        if self.video != "none" and not videos:
            return f"task {self.name} needs a source video; pass --video PATH"
        if not self.image and has_image:
            return f"task {self.name} takes no --image; pass reference images with --images"
        if self.images == "none" and images:
            return f"task {self.name} takes no --images"
        if self.needs_image and not has_image:
            return f"task {self.name} needs a source image; pass --image PATH"
        if self.needs_references and not (has_image or images):
            return f"task {self.name} needs at least one reference image; pass --images PATH [PATH ...]"
        return None


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("t2i", "t2v_apg", "none", False, "none", True, "text to image", with_video="i2i"),
        TaskSpec("i2i", "v2v", "none", True, "optional", True, "image editing from a source image", needs_image=True),
        TaskSpec("t2v", "t2v_apg", "none", False, "none", False, "text to video"),
        TaskSpec("v2v", "v2v_apg", "one_or_more", False, "optional", False, "video editing (appearance)"),
        TaskSpec("mv2v", "v2v_apg", "one_or_more", False, "optional", False, "video editing (motion)"),
        TaskSpec(
            "rv2v",
            "rv2v",
            "one_or_more",
            True,
            "optional",
            False,
            "video editing with reference images",
            needs_references=True,
        ),
        TaskSpec(
            "r2v",
            "r2v_apg",
            "none",
            True,
            "optional",
            False,
            "subject-to-video from reference images",
            needs_references=True,
            with_video="rv2v",
        ),
        TaskSpec("ads2v", "v2v_apg", "one_or_more", True, "optional", False, "insert a second video into the first"),
    )
}


def t5_prefix(task_type: str) -> str:
    """The exact training-time T5 prefix; unknown types fall back to the default one."""
    return T5_PREFIXES.get(task_type, T5_PREFIXES["default"])


def tasks_table() -> dict[str, dict[str, Any]]:
    """Tasks with their default guidance mode, media slots and T5 prefix."""
    return {
        name: {
            "guidance_mode": s.guidance_mode,
            "video": s.video,
            "image": s.image,
            "images": s.images,
            "single_frame": s.single_frame,
            "t5_prefix": s.t5_prefix,
            "description": s.description,
        }
        for name, s in TASKS.items()
    }
