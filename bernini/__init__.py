"""Bernini-R inference: video generation and editing on Wan2.2 experts."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import BerniniError  # noqa: E402
from .tasks import FORWARDS_PER_STEP, GUIDANCE_MODES, TASKS  # noqa: E402


def __getattr__(name: str):
    if name in ("BerniniPipeline", "BerniniOutput", "tasks_table"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "export_to_video":
        from .output import export_to_video

        return export_to_video
    if name == "load_case":
        from .request import load_case

        return load_case
    if name == "GenerationRequest":
        from .request import GenerationRequest

        return GenerationRequest
    raise AttributeError(name)


__all__ = [
    "BerniniError",
    "BerniniOutput",
    "BerniniPipeline",
    "FORWARDS_PER_STEP",
    "GUIDANCE_MODES",
    "GenerationRequest",
    "TASKS",
    "export_to_video",
    "load_case",
    "tasks_table",
]
