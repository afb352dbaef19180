"""The OpenAI-shaped views of jobs (:mod:`bernini.frontends.serve.openai_routes`), in this process."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")

from bernini.frontends.serve.openai_routes import video_view  # noqa: E402
from bernini.frontends.serve.store import JobRow  # noqa: E402
from bernini.request import GenerationRequest  # noqa: E402
from bernini.resolve import resolve_request  # noqa: E402


def queued(params: dict, resolved: dict | None) -> JobRow:
    return JobRow(
        id="vid_1",
        state="queued",
        params=json.dumps(params),
        media="{}",
        meta="{}",
        task_type="t2v",
        prompt="a boat",
        created_at=1.0,
        step=0,
        total=3,
        resolved=None if resolved is None else json.dumps(resolved),
    )


def test_a_queued_video_reports_the_size_and_length_it_was_resolved_to():
    """A job's params hold only what the client set; the size and seconds a queued video reports come from the
    request resolved at submit (the built-in 848x480, 81 frames at 16 fps here), and from a job stored before jobs
    kept it, from its params (which then hold every field)."""
    resolved = resolve_request(GenerationRequest(prompt="a boat", task_type="t2v")).to_json()
    view = video_view(queued({"prompt": "a boat"}, resolved), "bernini")
    assert (view.size, view.seconds) == ("848x480", "5.0625")
    older = {"prompt": "a boat", "num_frames": 33, "fps": 16.0, "width": 320, "height": 192}
    view = video_view(queued(older, None), "bernini")
    assert (view.size, view.seconds) == ("320x192", "2.0625")
