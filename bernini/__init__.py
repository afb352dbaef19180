"""Bernini-R inference: video generation and editing on Wan2.2 experts."""

from __future__ import annotations

from ._version import __version__
from .errors import BerniniError
from .sampling.guidance import GUIDANCE_MODES
from .tasks import TASKS

_LAZY = {
    "BerniniPipeline": "pipeline",
    "BerniniOutput": "pipeline",
    "tasks_table": "tasks",
    "export_to_video": "io.output",
    "load_case": "case_files",
    "GenerationRequest": "request",
    "ResolvedRequest": "resolved",
    "resolve_request": "resolve",
}
_RENAMED = {"GenerationPlan": "ResolvedRequest", "make_plan": "resolve_request"}  # the names before 0.x


def __getattr__(name: str):
    """Heavy parts (torch, diffusers) load on first use, so ``import bernini`` stays fast."""
    if name == "FORWARDS_PER_STEP":
        from .sampling.guidance import forwards_per_step

        return dict(forwards_per_step())
    if name in _RENAMED:
        return __getattr__(_RENAMED[name])
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


__all__ = [
    "BerniniError",
    "BerniniOutput",
    "BerniniPipeline",
    "FORWARDS_PER_STEP",
    "GUIDANCE_MODES",
    "ResolvedRequest",
    "GenerationRequest",
    "TASKS",
    "__version__",
    "export_to_video",
    "load_case",
    "resolve_request",
    "tasks_table",
]
