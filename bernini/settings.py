"""How a request setting is declared: once, on its :class:`~bernini.request.GenerationRequest` field.

Each field carries a :class:`Setting` in its metadata: the command-line help and spellings, the service's
description and bounds, the demo's slider. The front ends generate their flags (``frontends/options.py``), the
service its job body (``serve/schemas.py``) and the demo its controls (``demo/layout.py``) from it, so a
setting's type, default and meaning are written down in one place.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

# The service's upper bounds (the planner checks the lower ones): one request must not hold a server for days
# or exhaust its memory. Frames: 30 s at 16 fps; steps: the schedulers' 1000 training timesteps.
MAX_SIDE = 2048
MAX_FRAMES = 481
MAX_STEPS = 1000
MAX_FPS = 120.0
MAX_TEXT = 10_000
MAX_MEDIA = 16


@dataclass(frozen=True)
class Slider:
    """The demo's control of a setting: (minimum, maximum, step, label)."""

    low: float
    high: float
    step: float
    label: str


@dataclass(frozen=True)
class Setting:
    """What the front ends need to know about one request field besides its type and default.

    ``command_line``: whether it has a flag; ``flags``: its spellings (empty: ``--<name>``); ``cli``: extra
    ``add_argument`` keywords the type does not tell (choices, metavar). ``service``: the job body's description
    (None: not in the service's body), with ``bounds`` (pydantic ``Field`` limits), ``service_type`` (an
    annotation other than the field's, e.g. media as file ids) and ``required``. ``slider``: the demo's control.
    """

    help: str | None = None
    command_line: bool = True
    flags: tuple[str, ...] = ()
    cli: dict[str, Any] = field(default_factory=dict)
    service: str | None = None
    bounds: dict[str, Any] = field(default_factory=dict)
    service_type: Any = None
    required: bool = False
    slider: Slider | None = None


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **spec: Any) -> Any:
    """A dataclass field declaring one request setting (``factory`` for mutable defaults)."""
    return field(default=default, default_factory=factory, metadata={"setting": Setting(**spec)})


def spec_of(f: dataclasses.Field) -> Setting:
    return f.metadata.get("setting") or Setting()


def default_of(f: dataclasses.Field) -> Any:
    """The field's built-in default (a fresh copy of a mutable one)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` as (X, True); anything else as (hint, False)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False
