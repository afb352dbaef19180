"""What bernini changed from what was asked, and why: every adjustment is kept, none is silent.

The stages that adjust a value (the plan snaps frames, the conditions stage takes the size from the
source and rounds it to the latent grid, the text stage cuts long prompts, the output stage fixes the
suffix) return :class:`Adjustment` records; the run record keeps them and the front ends print each as
one ``note:`` line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plan import GenerationPlan


@dataclass(frozen=True)
class Adjustment:
    """``name`` (a request field, or ``output`` / ``prompt``) was asked as ``asked`` and ran as ``used``."""

    name: str
    asked: Any
    used: Any
    why: str

    def note(self) -> str:
        return f"note: {self.name} {_shown(self.asked)} -> {_shown(self.used)}: {self.why}"

    def record(self) -> dict[str, Any]:
        return asdict(self)


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def changed(name: str, asked: Any, used: Any, why: str) -> list[Adjustment]:
    """``[Adjustment]`` when the value changed, else ``[]``."""
    return [] if asked == used else [Adjustment(name, asked, used, why)]


def source_geometry_adjustments(plan: GenerationPlan, frames: int, height: int, width: int) -> list[Adjustment]:
    """What the source media changed from the geometry asked for (before snapping to the latent grid)."""
    asked = plan.geometry
    media = plan.media
    if media.video:
        source = "the source video"
        shorter = f"{source} is shorter: it gives {frames} frames (4k+1) at {media.fps:g} fps"
        adjustments = changed("num_frames", asked.frames, frames, shorter)
    elif media.image is not None:
        source, adjustments = "the source image", []
    else:
        return []
    why = f"taken from {source} (at most --max_image_size {media.max_image_size})"
    return adjustments + changed("height", asked.height, height, why) + changed("width", asked.width, width, why)
