"""Small stand-ins the tests share (what each records is what the tests assert on)."""

from __future__ import annotations

from contextlib import contextmanager


class CacheContextExpert:
    """An expert with diffusers' cache contexts that records the context each forward ran in and returns its target
    unchanged: enough to check which step-cache history every branch (and every window) reads."""

    is_cache_enabled = True

    def __init__(self):
        self.contexts, self.active = [], None

    @contextmanager
    def cache_context(self, name):
        self.active = name
        yield
        self.active = None

    def forward_packed(self, conditions, target, timestep, context):
        self.contexts.append(self.active)
        return target
