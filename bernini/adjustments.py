"""What bernini changed from what was asked, and why: every adjustment is kept, none is silent.

The stages that adjust a value (the plan snaps frames, the conditions stage takes the size from the
source and rounds it to the latent grid, the text stage cuts long prompts, the output stage fixes the
suffix) return :class:`Adjustment` records; the run record keeps them and the front ends print each as
one ``note:`` line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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
