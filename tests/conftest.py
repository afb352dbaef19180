"""Shared fixtures: tiny random bundles in every published layout, written once per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

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


@pytest.fixture
def one_line_error() -> Callable[..., str]:
    """``one_line_error(call, *args, match=...)``: ``call`` must raise a one-line BerniniError containing ``match``."""
    from bernini.errors import BerniniError

    def check(call: Callable[..., Any], *args: Any, match: str, **kwargs: Any) -> str:
        with pytest.raises(BerniniError) as info:
            call(*args, **kwargs)
        message = str(info.value)
        assert "\n" not in message and message.strip() == message and message
        assert match.lower() in message.lower(), message
        return message

    return check


@pytest.fixture(scope="session")
def full_bundle(tmp_path_factory) -> Path:
    """The tiny full-Bernini bundle in the published layout (``bernini.tiny_full``)."""
    from bernini.tiny_full import write_tiny_full_bundle

    return write_tiny_full_bundle(tmp_path_factory.mktemp("full") / "Bernini-Diffusers")


@pytest.fixture(scope="session")
def full_media(tmp_path_factory) -> Path:
    """Media for the full model's tests: two 9-frame 48×80 videos at 16 fps (``src.mp4``, ``ads.mp4``: 45 target
    tokens, an odd packed length under Ulysses 2), a 48×48 source ``image.png`` and a reference ``ref.png``."""
    import numpy as np

    from bernini.output import write_image, write_video

    root = tmp_path_factory.mktemp("full_media")
    t = np.linspace(0, 1, 9)[:, None, None, None]
    y, x = np.linspace(0, 1, 48)[None, :, None, None], np.linspace(0, 1, 80)[None, None, :, None]
    channel = np.array([0.0, 1.0, 2.0])
    write_video(root / "src.mp4", (0.5 + 0.4 * np.sin(6 * x + 4 * y + 3 * t + channel)).clip(0, 1), 16)
    write_video(root / "ads.mp4", (0.5 + 0.4 * np.cos(2 * x + 7 * y - 2 * t + channel)).clip(0, 1), 16)
    ya, xa = np.linspace(0, 1, 48)[:, None, None], np.linspace(0, 1, 48)[None, :, None]
    write_image(root / "image.png", (0.5 + 0.4 * np.cos(8 * ya + 5 * xa + channel)).clip(0, 1))
    write_image(root / "ref.png", (0.5 + 0.4 * np.sin(3 * ya + 9 * xa + channel[::-1])).clip(0, 1))
    return root


@pytest.fixture
def bundle_with_config(tmp_path) -> Callable[..., Path]:
    """A copy of a bundle whose ``config.json`` is the original's with some keys replaced (every other file a
    symbolic link), for tests of what a bundle's config decides."""
    import json

    def make(source: Path, **changes) -> Path:
        bundle = tmp_path / f"{source.name}-changed"
        bundle.mkdir()
        for child in source.iterdir():
            if child.name != "config.json":
                (bundle / child.name).symlink_to(child)
        config = json.loads((source / "config.json").read_text())
        (bundle / "config.json").write_text(json.dumps({**config, **changes}))
        return bundle

    return make
