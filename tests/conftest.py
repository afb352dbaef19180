"""Shared fixtures: tiny random bundles in every published layout, written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """Lazily written tiny bundles keyed by layout: diffusers, separate, single, wan22."""
    from bernini.tiny import write_tiny_bundle

    root = tmp_path_factory.mktemp("bundles")
    cache: dict[str, Path] = {}

    class Bundles(dict):
        def __missing__(self, layout: str) -> Path:
            path = write_tiny_bundle(root / layout, layout)
            cache[layout] = path
            self[layout] = path
            return path

    return Bundles()


@pytest.fixture(scope="session")
def tiny_bundle(bundles) -> Path:
    """The tiny Bernini-R-Diffusers bundle (pass as --config)."""
    return bundles["diffusers"]


@pytest.fixture(scope="session")
def tiny_pipe(tiny_bundle):
    """A loaded fp32 CPU pipeline on the tiny bundle, without progress bars."""
    from bernini import BerniniPipeline

    pipe = BerniniPipeline.from_pretrained(tiny_bundle, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe
