"""The queue database failing under a running service: read-only, full, its SQLite file deleted (and a restart
after that). Each request answers the documented one-line JSON error (503) without a path, the log holds one
line and no traceback, and the service works again once the database does. PostgreSQL going down is in
``test_serve_postgres.py``.
"""

from __future__ import annotations

import errno
import logging
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from serve_support import TINY, ServerProcess, submit, wait_for

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

TOKEN = "db-test-token-0a9e"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * (256 << 10)  # sniffed as an image; 256 KiB that need new database pages
BIG_JOB = {"prompt": "a fox " * 1500, **TINY}  # a row of ~9 KB: more than the free room of any page


def assert_unavailable(response, reason: str) -> None:
    assert response.status_code == 503, response.text
    assert "\n" not in response.text.strip() and "Traceback" not in response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("service_unavailable_error", 503)
    assert error["message"].startswith("the queue database is unavailable") and reason in error["message"]
    assert "/" not in error["message"]  # no server path


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()[:120]}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    with path.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * (64 << 10))
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


# ------------------------------------------------------------------------------ in process: SQLite's own pragmas
@pytest.mark.parametrize(
    ("pragma", "reason"),
    [
        # a running server's open SQLite file cannot be remounted read-only (the kernel refuses: busy), and root
        # ignores chmod, so the server's own connections are made read-only with SQLite's query_only
        ("PRAGMA query_only = ON", "read-only"),
        # a full disk simulated with SQLite's max_page_count: the file may not grow past its size now
        ("PRAGMA max_page_count = {pages}", "full"),
    ],
)
def test_a_read_only_or_full_sqlite_gets_the_json_503_and_recovers(tmp_path, caplog, pragma, reason):
    """The app on a real SQLite file through FastAPI's TestClient (server exceptions re-raised, so an unhandled
    error fails the test); the pragma is set on every connection the server opens."""
    from fastapi.testclient import TestClient
    from sqlalchemy import event, text

    from bernini.frontends.serve.app import create_app
    from bernini.frontends.serve.service import Service, ServiceConfig
    from bernini.frontends.serve.store import Store

    store = Store(f"sqlite:///{tmp_path / 'queue.db'}")
    app = create_app(Service(store, ServiceConfig(model_id="m", output_dir=tmp_path, worker_id="w")))
    with TestClient(app) as http, caplog.at_level(logging.WARNING, logger="bernini.frontends.serve"):
        first = http.post("/v1/jobs", json={"prompt": "before", **TINY})
        assert first.status_code == 201, first.text
        with store.engine.connect() as connection:
            pages = connection.execute(text("PRAGMA page_count")).scalar()

        def restrict(dbapi_connection, _record) -> None:
            dbapi_connection.execute(pragma.format(pages=pages))

        event.listen(store.engine, "connect", restrict)
        store.engine.dispose()
        assert_unavailable(http.post("/v1/jobs", json=BIG_JOB), reason)
        upload = http.post("/v1/files", files={"file": ("a.png", PNG)})
        if reason == "read-only":
            assert_unavailable(upload, reason)
            assert not list((tmp_path / "uploads").iterdir())  # the file of a refused upload does not stay
            assert_unavailable(http.delete(f"/v1/jobs/{first.json()['id']}"), reason)
        else:  # the upload is a file on disk now: its small row still fits the full database
            assert upload.status_code == 201 and (tmp_path / "uploads" / f"{upload.json()['id']}.png").is_file()
        assert http.get(f"/v1/jobs/{first.json()['id']}").json()["state"] == "queued"  # reads still answer
        event.remove(store.engine, "connect", restrict)
        store.engine.dispose()
        assert http.post("/v1/jobs", json=BIG_JOB).status_code == 201
    lines = [r for r in caplog.records if r.name == "bernini.frontends.serve"]
    assert lines and all(r.exc_info is None for r in lines)
    assert all("the queue database failed" in r.getMessage() for r in lines)


# ------------------------------------------------------------------------------ a real server on loopback
def test_a_full_disk_gets_the_json_503_and_the_service_recovers(tiny_bundle, tmp_path):
    """The SQLite file on a 4 MiB tmpfs, filled up while the server runs."""
    with tmpfs(tmp_path / "disk", "4m") as disk:
        server = ServerProcess(tiny_bundle, tmp_path / "out", db=f"sqlite:///{disk / 'queue.db'}", token=TOKEN)
        server.start()
        try:
            with server.client() as http:
                assert wait_for(http, submit(http, seed=1)["id"])["state"] == "succeeded"
                fill(disk / "filler")
                assert_unavailable(http.post("/v1/jobs", json=BIG_JOB), "full")
                assert_unavailable(http.post("/v1/files", files={"file": ("a.png", PNG)}), "full")
                (disk / "filler").unlink()
                assert wait_for(http, submit(http, seed=2)["id"])["state"] == "succeeded"
        finally:
            server.stop()
    log = server.log_text()
    assert "Traceback" not in log and "the queue database failed" in log


def test_a_deleted_sqlite_file_is_refused_and_not_recreated_across_a_restart(tiny_bundle, tmp_path):
    server = ServerProcess(tiny_bundle, tmp_path / "out", token=TOKEN).start()
    db = server.output_dir / "queue.db"
    try:
        with server.client() as http:
            kept = wait_for(http, submit(http, seed=3)["id"])
            long = submit(http, num_inference_steps=1000)
            wait_for(http, long["id"], states=("running",), step=2)
            for name in ("queue.db", "queue.db-wal", "queue.db-shm"):
                (server.output_dir / name).unlink(missing_ok=True)
            for method, path, kwargs in (
                ("POST", "/v1/jobs", {"json": {"prompt": "after", **TINY}}),
                ("POST", "/v1/files", {"files": {"file": ("a.png", PNG)}}),
                ("GET", f"/v1/jobs/{kept['id']}", {}),
                ("GET", "/v1/jobs", {}),
                ("GET", "/v1/videos", {}),
                ("GET", "/healthz", {}),
            ):
                assert_unavailable(http.request(method, path, **kwargs), "deleted")
            deadline = time.monotonic() + 60  # the running job's worker says so in one line and keeps going
            while "the queue database failed (running job" not in server.log_text():
                assert time.monotonic() < deadline, server.log_text()[-2000:]
                time.sleep(0.2)
            assert not db.exists()  # nothing was written into a new, empty queue
    finally:
        server.stop()
    log = server.log_text()
    assert "Traceback" not in log and "was deleted or replaced while the server ran" in log
    assert not db.exists()

    server.launch()  # a restart must not start an empty queue in its place: the jobs accepted would vanish
    assert server.process.wait(timeout=120) == 2
    last = server.log_text().strip().splitlines()[-1]
    assert last.startswith(f"error: the queue database {db} is missing") and "queue.db.created" in last
    assert not db.exists()
