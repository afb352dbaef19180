"""``POST /v1/videos/extensions`` over real HTTP on loopback: continue an uploaded video or a finished one by id;
the job runs through the same worker, and the result is the whole video followed by the new frames."""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import pytest
from serve_support import ServerProcess

from bernini.io.output import write_video

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

TOKEN = "extend-token-8d2a"


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    proc = ServerProcess(tiny_bundle, tmp_path_factory.mktemp("serve_extend") / "out", token=TOKEN).start(timeout_s=300)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("extend_media")
    t = np.linspace(0, 1, 21)[:, None, None, None]
    y, x = np.linspace(0, 1, 16)[None, :, None, None], np.linspace(0, 1, 32)[None, None, :, None]
    frames = (0.5 + 0.4 * np.sin(6 * x + 4 * y + 3 * t + np.array([0.0, 1.0, 2.0]))).clip(0, 1)
    write_video(root / "clip.mp4", frames, 16)
    write_video(root / "short.mp4", frames[:9], 16)
    return {"clip": root / "clip.mp4", "short": root / "short.mp4"}


def decoded(data: bytes, tmp_path: Path) -> np.ndarray:
    path = tmp_path / f"got_{time.monotonic_ns()}.mp4"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def finished(http, video_id: str, timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        video = http.get(f"/v1/videos/{video_id}").json()
        if video["status"] in ("completed", "failed"):
            return video
        time.sleep(0.2)
    raise AssertionError(f"{video_id} did not finish")


def test_extend_an_upload_then_the_finished_video_by_id(server, clips, tmp_path):
    source = decoded(clips["clip"].read_bytes(), tmp_path)
    with server.client() as http:
        fields = {"prompt": "the waves roll on", "num_frames": "8", "num_inference_steps": "2"}
        files = {"video": ("clip.mp4", clips["clip"].read_bytes(), "video/mp4")}
        created = http.post("/v1/videos/extensions", data=fields, files=files)
        assert created.status_code == 200, created.text
        first = finished(http, created.json()["id"])
        assert first["status"] == "completed", first
        out = decoded(http.get(f"/v1/videos/{first['id']}/content").content, tmp_path)
        assert out.shape == (21 + 8, 16, 32, 3) and first["size"] == "32x16"
        # the clip comes first (its own pixels, through one more H.264 round trip)
        assert np.abs(out[:21].astype(int) - source.astype(int)).mean() < 3
        job = http.get(f"/v1/jobs/{first['id']}").json()
        sidecar = http.get(job["sidecar_url"]).json()
        assert sidecar["resolved"]["extend"]["new_frames"] == 8 and sidecar["resolved"]["extend"]["clip_frames"] == 21

        again = http.post(
            "/v1/videos/extensions",
            json={"prompt": "and on", "video": {"id": first["id"]}, "seconds": "0.5", "num_inference_steps": 2},
        )
        assert again.status_code == 200, again.text
        second = finished(http, again.json()["id"])
        assert second["status"] == "completed" and second["remixed_from_video_id"] == first["id"]
        longer = decoded(http.get(f"/v1/videos/{second['id']}/content").content, tmp_path)
        assert longer.shape[0] == 29 + 8  # 0.5 s at 16 fps: 8 new frames after the 29 of the first


def test_a_bad_extension_is_a_one_line_400(server, clips):
    with server.client() as http:
        files = {"video": ("short.mp4", clips["short"].read_bytes(), "video/mp4")}
        short = http.post("/v1/videos/extensions", data={"prompt": "on"}, files=files)
        sized = http.post("/v1/videos/extensions", data={"prompt": "on", "size": "64x64"}, files=files)
        missing = http.post("/v1/videos/extensions", json={"prompt": "on"})
    for response, words in ((short, "keeps its last 17"), (sized, "drop size"), (missing, "video must be")):
        assert response.status_code == 400, response.text
        message = response.json()["error"]["message"]
        assert words in message and "\n" not in message, message


def test_a_three_window_v2v_edit_and_t2v_run_as_service_jobs(server, clips):
    """Long video through the service: the window settings are job fields, the worker runs the windows, and the
    sidecar served with the output records them (the same record the command line writes)."""
    import json

    with server.client() as http:
        body = {"prompt": "make it snow", "window_frames": 9, "window_overlap": 4, "num_inference_steps": 2}
        files = {"video": ("clip.mp4", clips["clip"].read_bytes(), "video/mp4")}
        edit = http.post("/v1/jobs", data={"request": json.dumps({**body, "num_frames": 21})}, files=files)
        run = http.post("/v1/jobs", json={**body, "num_frames": 21, "height": 16, "width": 32})
        for created, task in ((edit, "v2v"), (run, "t2v")):
            assert created.status_code == 201, created.text
            job = created.json()
            assert job["task_type"] == task
            deadline = time.monotonic() + 300
            while job["state"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
                time.sleep(0.3)
                job = http.get(f"/v1/jobs/{job['id']}").json()
            assert job["state"] == "succeeded", job
            windows = http.get(job["sidecar_url"]).json()["resolved"]["windows"]
            assert windows["count"] == 3 and windows["frames"] == 9 and windows["overlap"] == 4, windows
