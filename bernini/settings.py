"""How a request setting is declared: once, on its :class:`~bernini.request.GenerationRequest` field.

Each field carries a :class:`Setting` in its metadata: the command-line help and spellings, the service's
description and bounds, the demo's slider. The front ends generate their flags (``frontends/options.py``), the
service its job body (``serve/schemas.py``), the demo its controls (``demo/layout.py``) and the sidecar its
``request`` (:meth:`~bernini.resolved.ResolvedRequest.request_record`) from it, so a setting's type, default and
meaning are written down in one place.

A request's field is None when it was not given: the built-in default lives in the declaration
(:attr:`Setting.default`), and :func:`merge_layers` puts the layers together once, at resolution: built-in <
shipped preset < case file < user.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping
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
    default: Any = None
    factory: Callable[[], Any] | None = None
    resolved: str = ""
    media: bool = False  # media (paths or in-memory pictures): recorded as their paths or descriptions

    def builtin(self) -> Any:
        """The built-in default (a fresh copy of a mutable one)."""
        return self.factory() if self.factory is not None else self.default


def setting(default: Any = None, *, factory: Any = None, **spec: Any) -> Any:
    """A dataclass field declaring one request setting: its value is None until given; ``default`` (or
    ``factory`` for a mutable one) is the built-in value the merge falls back to."""
    return field(default=None, metadata={"setting": Setting(**spec, default=default, factory=factory)})


def spec_of(f: dataclasses.Field) -> Setting:
    return f.metadata.get("setting") or Setting()


def default_of(f: dataclasses.Field) -> Any:
    """The setting's built-in default (a fresh copy of a mutable one)."""
    return spec_of(f).builtin()


class Layer(enum.IntEnum):
    """Where a setting's value comes from, lowest first: a higher layer's value wins."""

    BUILTIN = 0  # the declaration's default
    PRESET = 1  # a shipped preset: a sampling preset (--preset) or the full model's per-task settings
    CASE = 2  # a case file (--case)
    USER = 3  # the command line's flags, the service's job body, the demo's controls, keyword arguments


@dataclass(frozen=True)
class Merged:
    """The settings' values after the merge, with the layer that set each and what the lower layers held."""

    values: dict[str, Any]
    layers: dict[str, Layer]
    beneath: dict[str, dict[Layer, Any]]  # per setting: each lower layer's value that the winner replaced

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def layer(self, name: str) -> Layer:
        return self.layers[name]

    def given(self, name: str) -> bool:
        """Whether the user set it (not a case file, a preset or the built-in default)."""
        return self.layers[name] is Layer.USER

    def replaced(self, name: str, layer: Layer) -> Any:
        """The value ``layer`` held for ``name`` under the winning one (None: it held none)."""
        return self.beneath[name].get(layer)


def merge_layers(builtin: Mapping[str, Any], layers: Mapping[Layer, Mapping[str, Any]]) -> Merged:
    """Every setting of ``builtin`` from the highest layer that gives it a value (None: not given)."""
    values, set_by, beneath = dict(builtin), dict.fromkeys(builtin, Layer.BUILTIN), {name: {} for name in builtin}
    for layer in sorted(layers):
        for name, value in layers[layer].items():
            if name not in values:
                raise KeyError(f"{name} is not a setting")
            if value is None:
                continue
            beneath[name] = {**beneath[name], set_by[name]: values[name]}
            values[name], set_by[name] = value, Layer(layer)
    return Merged(values, set_by, beneath)


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` as (X, True); anything else as (hint, False)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False
