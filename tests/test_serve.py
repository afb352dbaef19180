"""``bernini serve`` over real HTTP: one server subprocess on loopback (tiny bundle, SQLite queue, a token).

Submit, server-sent progress, fetch, cancel (queued and running), 10 concurrent submissions, auth,
bad requests answered with a 4xx and one line, the OpenAPI page, the OpenAI SDK and ``bernini submit``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from serve_support import ROOT, TINY, ServerProcess, free_port, submit, wait_for

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

TOKEN = "test-token-5f1c2b"


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "out"
    proc = ServerProcess(tiny_bundle, out, token=TOKEN, extra=("--max_upload_mb", "1")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def http(server):
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    from PIL import Image

    from bernini.io.output import write_video

    root = tmp_path_factory.mktemp("serve_media")
    rng = np.random.default_rng(0)
    write_video(root / "clip.mp4", rng.integers(0, 255, (9, 32, 48, 3), dtype=np.uint8), fps=8)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "ref.png")
    (root / "notes.txt").write_text("not media")
    return {"video": root / "clip.mp4", "image": root / "ref.png", "text": root / "notes.txt"}


def decode(data: bytes, tmp_path: Path) -> np.ndarray:
    path = tmp_path / f"decoded_{time.monotonic_ns()}.mp4"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def events(http, job_id: str) -> list[tuple[str, dict]]:
    out, name = [], "message"
    with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                out.append((name, json.loads(line[5:])))
    return out


# ------------------------------------------------------------------------------ submit, progress, fetch
def test_a_job_runs_with_progress_events_and_its_output_is_what_the_pipeline_makes(http, server, tiny_pipe, tmp_path):
    job = submit(http, seed=7, num_inference_steps=20)
    assert job["state"] == "queued" and job["progress"] == {"step": 0, "total": 20, "phase": "queued"}
    stream = events(http, job["id"])
    names = [name for name, _ in stream]
    assert names[-1] == "end" and set(names[:-1]) == {"progress"}
    steps = [j["progress"]["step"] for _, j in stream]
    assert steps == sorted(steps) and steps[-1] == 20 and len(set(steps)) >= 3  # real intermediate progress
    assert any(j["state"] == "running" and j["progress"]["phase"] in ("encode", "denoise") for _, j in stream)
    final = stream[-1][1]
    assert final["state"] == "succeeded" and final["progress"]["phase"] == "done"
    assert final["timings"]["run_s"] > 0 and final["worker"] == server.worker_id

    served = decode(http.get(final["output_url"]).content, tmp_path)
    sidecar = http.get(final["sidecar_url"]).json()
    assert sidecar["request"]["seed"] == 7 and sidecar["request"]["num_inference_steps"] == 20
    assert sidecar["output"] == "output.mp4"
    # the same request through the library: the server runs the shared pipeline, not something else
    from bernini.io.output import write_output

    local = tiny_pipe(**{**TINY, "prompt": job["prompt"], "seed": 7, "num_inference_steps": 20}, output_type="np")
    expected = decode(write_output(tmp_path / "local.mp4", local.frames, 16.0).read_bytes(), tmp_path)
    assert served.shape == expected.shape == (5, 32, 48, 3)
    assert np.array_equal(served, expected)
    other = wait_for(http, submit(http, seed=8)["id"])
    assert not np.array_equal(decode(http.get(other["output_url"]).content, tmp_path)[:1], served[:1])


def test_media_by_multipart_upload_and_by_file_ids(http, media, tmp_path):
    with media["video"].open("rb") as video:
        response = http.post(
            "/v1/jobs",
            data={"request": json.dumps({"prompt": "make it snow", **TINY})},
            files={"video": ("clip.mp4", video, "video/mp4")},
        )
    assert response.status_code == 201, response.text
    assert response.json()["task_type"] == "v2v"
    done = wait_for(http, response.json()["id"])
    assert done["state"] == "succeeded", done
    assert http.get(done["sidecar_url"]).json()["request"]["task_type"] == "v2v"

    ids = {}
    for kind in ("video", "image"):
        with media[kind].open("rb") as handle:
            uploaded = http.post("/v1/files", files={"file": (media[kind].name, handle)})
        assert uploaded.status_code == 201 and uploaded.json()["kind"] == kind
        ids[kind] = uploaded.json()["id"]
    job = submit(http, video=[ids["video"]], images=[ids["image"]])
    assert job["task_type"] == "rv2v"
    assert wait_for(http, job["id"])["state"] == "succeeded"


def test_idempotency_key_replays_the_same_job(http):
    body = {"prompt": "the same job twice", **TINY, "seed": 99}
    first = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "same-99"})
    second = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "same-99"})
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]


def test_listing_is_paginated_newest_first(http):
    made = [submit(http, seed=300 + i)["id"] for i in range(3)]
    page = http.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == made[::-1][:2] and page["has_more"]
    following = http.get("/v1/jobs", params={"limit": 2, "after": page["next_after"]}).json()
    assert following["data"][0]["id"] == made[0]
    for job_id in made:
        wait_for(http, job_id)


# ------------------------------------------------------------------------------ cancel
def test_cancel_a_running_job_stops_it_and_a_queued_one_never_runs(http, server):
    long = submit(http, num_inference_steps=1000)
    queued = submit(http, seed=5)
    running = wait_for(http, long["id"], states=("running",), step=2)
    assert running["state"] == "running"
    dropped = http.delete(f"/v1/jobs/{queued['id']}").json()
    assert dropped["state"] == "cancelled"
    stopping = http.delete(f"/v1/jobs/{long['id']}").json()
    assert stopping["cancel_requested"]
    final = wait_for(http, long["id"], timeout_s=60)
    assert final["state"] == "cancelled" and final["progress"]["step"] < 1000
    for job_id in (long["id"], queued["id"]):
        response = http.get(f"/v1/jobs/{job_id}/output")
        assert response.status_code == 409 and "cancelled" in response.json()["error"]["message"]
    assert not (server.output_dir / "jobs" / long["id"] / "output").exists()  # nothing written
    after = submit(http, seed=6)
    assert wait_for(http, after["id"])["state"] == "succeeded"
    assert http.get(f"/v1/jobs/{queued['id']}").json()["timings"]["started_at"] is None


# ------------------------------------------------------------------------------ concurrency
def test_ten_concurrent_submissions_all_complete_none_lost(server, tmp_path):
    def one(seed: int) -> str:
        with server.client() as client:
            return submit(client, seed=1000 + seed)["id"]

    with ThreadPoolExecutor(10) as pool:
        ids = list(pool.map(one, range(10)))
    assert len(set(ids)) == 10
    with server.client() as http:
        for seed, job_id in enumerate(ids):
            job = wait_for(http, job_id)
            assert job["state"] == "succeeded", job
            assert http.get(job["sidecar_url"]).json()["request"]["seed"] == 1000 + seed
            assert len(decode(http.get(job["output_url"]).content, tmp_path)) == 5
        listed = {j["id"] for j in http.get("/v1/jobs", params={"limit": 100}).json()["data"]}
    assert set(ids) <= listed


# ------------------------------------------------------------------------------ auth and safety
def test_auth_is_required_and_enforced(server):
    for token in (None, "wrong-token-123"):
        with server.client(token=token) as client:
            for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/models"),
                                 ("POST", "/v1/files"), ("GET", "/v1/videos/x")):  # fmt: skip
                response = client.request(method, path)
                assert response.status_code == 401, (method, path)
                assert response.headers["www-authenticate"] == "Bearer"
                assert "bearer token" in response.json()["error"]["message"]
    with server.client(token=None) as client:
        assert client.get("/healthz").status_code == 200  # liveness stays open
    with server.client() as client:
        assert client.get("/v1/models").json()["data"][0]["id"] == server.bundle.name
    assert TOKEN not in server.log_text()


def test_refuses_a_public_address_without_a_token(tiny_bundle, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BERNINI_SERVE_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "bernini", "serve", "--config", str(tiny_bundle), "--host", "0.0.0.0",
         "--output_dir", str(tmp_path)],  # fmt: skip
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: refusing to serve on 0.0.0.0 without a token")
    assert not (tmp_path / "queue.db").exists()


def bad_requests(media: dict[str, Path], image_id: str) -> list[tuple[str, str, dict, int, str]]:
    tiny = {"prompt": "p", **TINY}
    big = media["video"].read_bytes() + b"\0" * (3 << 20)  # > the server's 1 MB upload limit
    return [
        (
            "POST",
            "/v1/jobs",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "not valid JSON",
        ),
        ("POST", "/v1/jobs", {"json": [1, 2]}, 422, "JSON object"),
        ("POST", "/v1/jobs", {"json": {"num_frames": 5}}, 422, "prompt"),
        ("POST", "/v1/jobs", {"json": {**tiny, "prompt": ""}}, 422, "prompt"),
        ("POST", "/v1/jobs", {"json": {**tiny, "output": "/etc/passwd"}}, 422, "output"),
        ("POST", "/v1/jobs", {"json": {**tiny, "num_frames": "many"}}, 422, "num_frames"),
        ("POST", "/v1/jobs", {"json": {**tiny, "task_type": "t2x"}}, 400, "unknown task_type"),
        ("POST", "/v1/jobs", {"json": {**tiny, "guidance_mode": "nope"}}, 400, "unknown guidance_mode"),
        ("POST", "/v1/jobs", {"json": {**tiny, "task_type": "v2v"}}, 400, "needs a source video"),
        ("POST", "/v1/jobs", {"json": {**tiny, "video": ["/etc/passwd"]}}, 400, "not a file id"),
        ("POST", "/v1/jobs", {"json": {**tiny, "video": ["file-" + "0" * 32]}}, 400, "no uploaded file"),
        ("POST", "/v1/jobs", {"json": {**tiny, "video": [image_id]}}, 400, "video expected"),
        ("POST", "/v1/jobs", {"json": {**tiny, "num_inference_steps": 0}}, 400, "num_inference_steps"),
        ("POST", "/v1/jobs", {"json": {**tiny, "height": 8}}, 400, "height"),
        # upper bounds: a request must not hold the server for days or exhaust its memory
        ("POST", "/v1/jobs", {"json": {**tiny, "num_inference_steps": 1001}}, 422, "num_inference_steps"),
        ("POST", "/v1/jobs", {"json": {**tiny, "num_frames": 482}}, 422, "num_frames"),
        ("POST", "/v1/jobs", {"json": {**tiny, "width": 2049}}, 422, "width"),
        ("POST", "/v1/jobs", {"json": {**tiny, "height": 100_000}}, 422, "height"),
        ("POST", "/v1/jobs", {"json": {**tiny, "max_image_size": 4096}}, 422, "max_image_size"),
        ("POST", "/v1/jobs", {"json": {**tiny, "planning_step": 10**6}}, 422, "planning_step"),
        ("POST", "/v1/jobs", {"json": {**tiny, "vit_denoising_step": 10**6}}, 422, "vit_denoising_step"),
        ("POST", "/v1/jobs", {"json": {**tiny, "fps": 1000}}, 422, "fps"),
        ("POST", "/v1/videos", {"data": {"prompt": "p", "size": "4096x4096"}}, 400, "at most 2048"),
        ("POST", "/v1/videos", {"data": {"prompt": "p", "seconds": "60"}}, 400, "at most 481"),
        ("POST", "/v1/videos", {"data": {"prompt": "p", "num_inference_steps": "5000"}}, 422, "num_inference_steps"),
        ("POST", "/v1/videos", {"data": {"prompt": "p", "seconds": "1", "num_frames": "5"}}, 400, "not both"),
        (
            "POST",
            "/v1/jobs",
            {"content": b"prompt=x", "headers": {"content-type": "text/plain"}},
            415,
            "application/json or multipart",
        ),
        ("POST", "/v1/jobs", {"data": {"nothing": "here"}, "files": {"video": ("a.mp4", b"x")}}, 400, "'request'"),
        ("POST", "/v1/files", {"files": {"file": ("a.mp4", media["text"].read_bytes())}}, 415, "not a supported"),
        ("POST", "/v1/files", {"files": {"file": ("a.mp4", big)}}, 413, "too large"),
        ("POST", "/v1/files", {"files": {"file": ("a.mp4", b"")}}, 400, "empty"),
        ("POST", "/v1/files", {"data": {"file": "a path"}}, 400, "multipart field 'file'"),
        ("GET", "/v1/jobs/job-doesnotexist", {}, 404, "no job"),
        ("GET", "/v1/jobs", {"params": {"limit": 0}}, 422, "limit"),
        ("GET", "/v1/jobs", {"params": {"after": "job-gone"}}, 400, "names no job"),
        ("GET", "/v1/nowhere", {}, 404, "no route"),
        ("PUT", "/v1/jobs", {}, 405, "method not allowed"),
        ("POST", "/v1/videos", {"data": {"prompt": "p", "size": "huge"}}, 400, "WIDTHxHEIGHT"),
        ("POST", "/v1/videos", {"data": {"prompt": "p", "model": "sora-2"}}, 400, "unknown model"),
        ("POST", "/v1/videos", {"data": {"prompt": "p", "seconds": "-1"}}, 400, "seconds"),
        ("GET", "/v1/videos/job-x/content", {"params": {"variant": "thumbnail"}}, 400, "variant"),
    ]


def test_bad_requests_get_a_4xx_and_one_line(http, media):
    with media["image"].open("rb") as handle:
        image_id = http.post("/v1/files", files={"file": ("ref.png", handle)}).json()["id"]
    before = http.get("/v1/jobs", params={"limit": 100}).json()["data"]
    cases = bad_requests(media, image_id)
    assert len(cases) >= 20
    for method, path, kwargs, status, match in cases:
        response = http.request(method, path, **kwargs)
        label = f"{method} {path} {kwargs.get('json', kwargs.get('params', ''))}"
        assert response.status_code == status, (label, response.text)
        assert "\n" not in response.text.strip(), label
        message = response.json()["error"]["message"]
        assert match.lower() in message.lower(), (label, message)
        assert "Traceback" not in response.text and "/uploads/" not in message
    assert http.get("/v1/jobs", params={"limit": 100}).json()["data"] == before  # nothing was queued

    first = http.post("/v1/jobs", json={"prompt": "one", **TINY}, headers={"Idempotency-Key": "conflict"})
    second = http.post("/v1/jobs", json={"prompt": "two", **TINY}, headers={"Idempotency-Key": "conflict"})
    assert (first.status_code, second.status_code) == (201, 409)
    wait_for(http, first.json()["id"])
    running = submit(http)
    assert http.get(f"/v1/jobs/{running['id']}/output").status_code in (409, 200)


# ------------------------------------------------------------------------------ docs and clients
def test_openapi_documents_every_field(http):
    schema = http.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/output", "/v1/jobs/{job_id}/sidecar",
                 "/v1/jobs/{job_id}/events", "/v1/files", "/v1/models", "/healthz", "/v1/videos",
                 "/v1/videos/{video_id}", "/v1/videos/{video_id}/content", "/v1/videos/edits"):  # fmt: skip
        assert path in paths, path
    body = paths["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    components = schema["components"]["schemas"]
    from bernini.request import GenerationRequest

    job_fields = set(components["JobCreate"]["properties"])
    # output and the MagCache calibration file are paths: a client never names a path on the server
    assert job_fields == set(GenerationRequest.field_names()) - {"output", "cache_calibration"}
    for name in ("JobCreate", "JobView", "Progress", "Timings", "FileView", "VideoView", "ErrorBody"):
        for field, spec in components[name]["properties"].items():
            assert spec.get("description"), f"{name}.{field} is undocumented"
    assert http.get("/docs").status_code == 200


def test_openai_sdk_creates_a_video_and_downloads_it(server, media, tmp_path):
    import warnings

    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert [m.id for m in client.models.list()] == [server.bundle.name]
        video = client.videos.create(
            prompt="a lighthouse at dusk", size="48x32", seconds="1", model=server.bundle.name,
            extra_body={"num_inference_steps": 2},
        )  # fmt: skip
        assert video.status == "queued" and video.size == "48x32" and video.seconds == "1"
        done = client.videos.poll(video.id, poll_interval_ms=50)
        assert done.status == "completed" and done.progress == 100
        frames = decode(client.videos.download_content(done.id).content, tmp_path)
        assert frames.shape == (17, 32, 48, 3)  # 1 s × 16 fps → 16 → the nearest 4k+1
        edit = client.videos.edit(
            prompt="make it night", video=("clip.mp4", media["video"].read_bytes(), "video/mp4"),
            extra_body={"num_inference_steps": 2},
        )  # fmt: skip
        edited = client.videos.poll(edit.id, poll_interval_ms=50)
        assert edited.status == "completed"
        with server.client() as http:
            assert http.get(f"/v1/jobs/{edit.id}").json()["task_type"] == "v2v"
        with pytest.raises(openai.BadRequestError, match="unknown model"):
            client.videos.create(prompt="p", model="sora-2")
        deleted = client.videos.delete(done.id)
        assert deleted.deleted
        with pytest.raises(openai.NotFoundError):  # deleted: gone, not merely expired
            client.videos.download_content(done.id)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong-token-123", max_retries=0).models.list()


def strings(value) -> list[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, dict):
        return [*value, *(s for v in value.values() for s in strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def test_a_served_sidecar_names_no_server_path(http, server, media):
    with media["video"].open("rb") as video:  # an upload, the model folder, its shards, the job folder
        response = http.post("/v1/jobs", data={"request": json.dumps({"prompt": "make it snow", **TINY})},
                             files={"video": ("clip.mp4", video, "video/mp4")})  # fmt: skip
    done = wait_for(http, response.json()["id"])
    sidecar = http.get(done["sidecar_url"]).json()
    server_dirs = [str(server.output_dir), str(server.output_dir.resolve()), str(server.bundle), str(ROOT)]
    for text in strings(sidecar):
        assert not text.startswith(("/", "~")), text
        assert not any(d in text for d in server_dirs), text
    assert sidecar["request"]["video"][0].startswith("file-") and sidecar["request"]["prompt"] == "make it snow"
    assert sidecar["paths"]["model"]["absolute"] == server.bundle.name and sidecar["output"] == "output.mp4"
    shards = sidecar["model"]["transformer_files"]["transformer"]
    assert shards and all(name.endswith(".safetensors") and "/" not in name for name in shards)
    assert "cwd" not in sidecar and sidecar["request"]["seed"] == 42  # the record itself is kept
    stored = (server.output_dir / "jobs" / done["id"] / "output" / "output.mp4.json").read_text()
    assert str(server.output_dir) in stored  # the server's own copy keeps its paths


def test_openai_edit_honours_num_frames_and_reports_what_was_rendered(server, media, tmp_path):
    import warnings

    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0)
    source = ("clip.mp4", media["video"].read_bytes(), "video/mp4")  # 9 frames at 8 fps: 17 at 16 fps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asked = client.videos.edit(prompt="make it night", video=source,
                                   extra_body={"num_inference_steps": 2, "num_frames": 5})  # fmt: skip
        whole = client.videos.edit(prompt="make it day", video=source, extra_body={"num_inference_steps": 2})
        for video, frames in ((asked, 5), (whole, 17)):  # without num_frames: the source's length (< 81)
            done = client.videos.poll(video.id, poll_interval_ms=50)
            assert done.status == "completed", done
            rendered = decode(client.videos.download_content(done.id).content, tmp_path)
            assert rendered.shape == (frames, 32, 48, 3)
            assert done.size == "48x32"  # the source's geometry, not the default 848x480 asked
            assert float(done.seconds) == pytest.approx(frames / 16, abs=1e-3)
            listed = {v.id: v for v in client.videos.list(limit=100)}
            assert (listed[done.id].size, listed[done.id].seconds) == (done.size, done.seconds)


def test_a_deleted_video_is_gone_and_a_running_one_stops(server):
    import warnings

    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0)
    with warnings.catch_warnings(), server.client() as http:
        warnings.simplefilter("ignore", DeprecationWarning)
        done = client.videos.poll(
            client.videos.create(prompt="p", size="48x32", extra_body={"num_frames": 5, "num_inference_steps": 2}).id,
            poll_interval_ms=50,
        )
        assert done.status == "completed"
        long = submit(http, num_inference_steps=1000)
        wait_for(http, long["id"], states=("running",), step=2)
        for video_id in (done.id, long["id"]):
            assert client.videos.delete(video_id).deleted
            with pytest.raises(openai.NotFoundError):
                client.videos.retrieve(video_id)
            with pytest.raises(openai.NotFoundError):
                client.videos.download_content(video_id)
            assert http.get(f"/v1/jobs/{video_id}").status_code == 404
        jobs = {j["id"] for j in http.get("/v1/jobs", params={"limit": 100}).json()["data"]}
        assert not {done.id, long["id"]} & ({v.id for v in client.videos.list(limit=100)} | jobs)
        after = wait_for(http, submit(http, seed=77)["id"], timeout_s=60)  # the deleted run stopped: the worker is free
        assert after["state"] == "succeeded"
    assert not (server.output_dir / "jobs" / done.id).exists()


def test_an_oversized_body_gets_the_json_413(server):
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000000000\r\nConnection: close\r\n\r\n".encode()
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"application/json" in head.lower(), head
    assert json.loads(body)["error"] == {"message": "the request body is too large", "type": "request_too_large",
                                         "code": 413}  # fmt: skip


def test_submit_command_uploads_follows_and_downloads(server, media, tmp_path):
    case = tmp_path / "case.json"
    case.write_text(json.dumps({"prompt": "make it autumn", "video": str(media["video"]), "output": "ignored.mp4"}))
    out = tmp_path / "result" / "edit.mp4"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BERNINI_SERVE_TOKEN": TOKEN}
    command = [sys.executable, "-m", "bernini", "submit", "--server", server.url, "--case", str(case),
               "--num_frames", "5", "--num_inference_steps", "2", "--output", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stderr
    sidecar = json.loads(out.with_name("edit.mp4.json").read_text())
    assert sidecar["request"]["prompt"] == "make it autumn" and sidecar["request"]["task_type"] == "v2v"
    assert decode(out.read_bytes(), tmp_path).shape[0] == 5

    env["BERNINI_SERVE_TOKEN"] = "wrong-token-123"
    denied = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert denied.returncode == 2
    assert denied.stderr.strip().splitlines()[-1].startswith("error: ") and "401" in denied.stderr


# ------------------------------------------------------------------------------ torchrun: rank 0 serves, the group runs
def test_under_torchrun_rank_0_serves_and_the_group_runs_each_job(server, tiny_bundle, tmp_path):
    """Two gloo ranks with CFG parallel: the same output as the one-process server, and cancel reaches both."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BERNINI_SERVE_TOKEN", None)
    log = (tmp_path / "torchrun.log").open("wb")
    group = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "bernini",
         "serve", "--config", str(tiny_bundle), "--device", "cpu", "--cfg_parallel", "2", "--port", str(port),
         "--output_dir", str(tmp_path / "out")],  # fmt: skip
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as parallel:
            deadline = time.monotonic() + 120
            while True:
                assert group.poll() is None and time.monotonic() < deadline, (tmp_path / "torchrun.log").read_text()
                try:
                    if parallel.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            done = wait_for(parallel, submit(parallel, seed=11, num_inference_steps=3)["id"])
            assert done["state"] == "succeeded", done
            split = decode(parallel.get(done["output_url"]).content, tmp_path)
            long = submit(parallel, num_inference_steps=1000)
            wait_for(parallel, long["id"], states=("running",), step=2)
            parallel.delete(f"/v1/jobs/{long['id']}")
            assert wait_for(parallel, long["id"], timeout_s=30)["state"] == "cancelled"
            after = wait_for(parallel, submit(parallel, seed=12)["id"])  # the group is still in step
            assert after["state"] == "succeeded"
    finally:
        group.terminate()
        group.wait(timeout=30)
        log.close()
    with server.client() as http:
        single = wait_for(http, submit(http, seed=11, num_inference_steps=3)["id"])
        whole = decode(http.get(single["output_url"]).content, tmp_path)
    assert split.shape == whole.shape
    assert np.abs(split.astype(int) - whole.astype(int)).max() <= 2


# ------------------------------------------------------------------------------ restart (last: it kills the server)
def test_kill_9_mid_job_then_restart_keeps_the_queue_and_reports_the_interrupted_job(server):
    with server.client() as http:
        long = submit(http, num_inference_steps=1000)
        wait_for(http, long["id"], states=("running",), step=2)
        queued = [submit(http, seed=2000 + i)["id"] for i in range(3)]
        server.kill9()
    server.start()
    with server.client() as http:
        interrupted = wait_for(http, long["id"], timeout_s=10)
        assert interrupted["state"] == "failed"
        assert interrupted["error"].startswith("interrupted: the server restarted while this job ran")
        assert http.get(f"/v1/jobs/{long['id']}/output").status_code == 409
        for seed, job_id in enumerate(queued):
            job = wait_for(http, job_id)
            assert job["state"] == "succeeded", job
            assert http.get(job["sidecar_url"]).json()["request"]["seed"] == 2000 + seed
    assert "marked failed" in server.log_text()


def test_a_full_model_service_lists_its_own_modes_and_fills_its_shipped_settings(tmp_path):
    """Without loading a model: the service's model card and a job's plan follow the loaded model's kind."""
    from fastapi.testclient import TestClient

    from bernini.frontends.serve.app import create_app
    from bernini.frontends.serve.schemas import JobCreate, job_params
    from bernini.frontends.serve.service import Service, ServiceConfig
    from bernini.frontends.serve.store import Store
    from bernini.frontends.serve.worker import request_for
    from bernini.resolve import resolve_request
    from bernini.resolved import ModelDefaults
    from bernini.sampling.full_presets import FULL_PRESETS
    from bernini.sampling.guidance import FULL_MODEL_MODES

    defaults = ModelDefaults(planner_version="v2")
    config = ServiceConfig(model_id="full", output_dir=tmp_path, worker_id="w", defaults=defaults)
    app = create_app(Service(Store(f"sqlite:///{tmp_path / 'queue.db'}"), config))
    with TestClient(app) as http:
        assert http.get("/v1/models").json()["data"][0]["guidance_modes"] == list(FULL_MODEL_MODES)
    params = job_params(JobCreate.model_validate({"prompt": "a fox", "task_type": "t2v", "omega_txt": 4.0}))
    resolved = resolve_request(request_for(params, {}, "out.mp4"), defaults)
    shipped = FULL_PRESETS["v2"]["t2v"]
    assert resolved.guidance.weights.txt == 4.0  # given by the client (also the request default): it wins
    assert (
        resolved.num_inference_steps == shipped.num_inference_steps
        and resolved.guidance.weights.tgt == shipped.omega_tgt
    )
