"""JSON text parsed without surprises: absurd nesting is a ``ValueError``, never a ``RecursionError``.

Case files, task lists and bundle configs all parse through :func:`loads_json`.
"""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_DEPTH = 64
"""Deeper nesting than any real config, case file or task list: refused before it reaches a recursive parser."""


def json_depth_problem(text: str, limit: int = MAX_JSON_DEPTH) -> str | None:
    """Why ``text`` nests too deeply for a config (arrays/objects more than ``limit`` deep), else None.

    Counted on the raw text, outside strings, so a hostile file never reaches the recursive parser.
    """
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return f"nests arrays/objects more than {limit} levels deep"
        elif char in "]}":
            depth -= 1
    return None


def loads_json(text: str) -> Any:
    """``json.loads`` that refuses absurd nesting with a ``ValueError`` (never a RecursionError)."""
    problem = json_depth_problem(text)
    if problem:
        raise ValueError(problem)
    return json.loads(text)
