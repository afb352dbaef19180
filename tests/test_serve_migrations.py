"""The queue database's schema version: a database of the first release (uploads and outputs as blobs) is
upgraded in place at start, its blobs moved to files, and one from a newer bernini is refused in one line.
On SQLite and on a real PostgreSQL."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from serve_support import postgres_database

pytest.importorskip("sqlalchemy")

from sqlalchemy import (  # noqa: E402
    Boolean,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    inspect,
    text,
)

from bernini.errors import BerniniError  # noqa: E402
from bernini.frontends.serve.migrations import LATEST  # noqa: E402
from bernini.frontends.serve.store import NewJob, Store  # noqa: E402

VERSION_1 = MetaData()
Table(
    "bernini_files",
    VERSION_1,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(40), unique=True, index=True, nullable=False),
    Column("filename", String(255), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("suffix", String(8), nullable=False),
    Column("size", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("data", LargeBinary),
)
Table(
    "bernini_jobs",
    VERSION_1,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(40), unique=True, index=True, nullable=False),
    Column("state", String(12), index=True, nullable=False),
    Column("params", Text, nullable=False),
    Column("media", Text, nullable=False),
    Column("meta", Text, nullable=False),
    Column("task_type", String(16), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("idempotency_key", String(255), unique=True, nullable=True),
    Column("request_hash", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("heartbeat_at", Float),
    Column("step", Integer, nullable=False),
    Column("total", Integer, nullable=False),
    Column("phase", String(16), nullable=False),
    Column("error", Text),
    Column("worker", String(255)),
    Column("cancel_requested", Boolean, nullable=False),
    Column("expired", Boolean, nullable=False),
    Column("output_name", String(64)),
    Column("output_bytes", Integer, nullable=False),
    Column("output", LargeBinary),
    Column("sidecar", Text),
)
VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8
PNG = b"\x89PNG\r\n\x1a\n" + b"\x07" * 300


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.db'}"
        return
    with postgres_database() as url:
        yield url


def job_values(job_id: str, state: str, **extra) -> dict:
    now = time.time()
    values = dict(
        id=job_id, state=state, params=json.dumps({"prompt": "old", "num_inference_steps": 2}), media="{}", meta="{}",
        task_type="t2v", prompt="old", request_hash="h" + job_id, created_at=now, step=0, total=2, phase="queued",
        cancel_requested=False, expired=False, output_bytes=0,
    )  # fmt: skip
    return {**values, **extra}


def old_queue(url: str) -> None:
    """A queue as the first release left it: an upload, a finished job with its output and sidecar, a queued job."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    VERSION_1.create_all(engine)
    files, jobs = VERSION_1.tables["bernini_files"], VERSION_1.tables["bernini_jobs"]
    with engine.begin() as conn:
        conn.execute(
            files.insert().values(
                id="file-1", filename="clip.mp4", kind="video", suffix=".mp4", size=len(VIDEO), sha256="s",
                created_at=time.time(), data=VIDEO,
            )
        )  # fmt: skip
        conn.execute(
            jobs.insert().values(
                **job_values("job-done", "succeeded", output=PNG, output_name="output.png", output_bytes=len(PNG),
                             sidecar='{"output": "output.png"}')
            )
        )  # fmt: skip
        conn.execute(jobs.insert().values(**job_values("job-waiting", "queued")))
    engine.dispose()


def test_a_first_release_queue_is_upgraded_in_place_and_its_blobs_become_files(database, tmp_path):
    old_queue(database)
    files = tmp_path / "out"
    store = Store(database, files=files)
    try:
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT version FROM bernini_schema")).scalars().all() == [LATEST]
            columns = {t: {c["name"] for c in inspect(conn).get_columns(t)} for t in ("bernini_files", "bernini_jobs")}
        assert "data" not in columns["bernini_files"] and not {"output", "sidecar"} & columns["bernini_jobs"]

        upload = store.get_file("file-1")
        assert upload.path == str(files / "uploads" / "file-1.mp4") and Path(upload.path).read_bytes() == VIDEO
        done = store.get_job("job-done")
        assert done.state == "succeeded" and done.output_bytes == len(PNG)
        assert Path(done.output_path).read_bytes() == PNG and done.output_path.startswith(str(files / "jobs"))
        assert json.loads(Path(done.sidecar_path).read_text()) == {"output": "output.png"}
        assert store.claim("w").id == "job-waiting"  # the queue goes on where it was

        new, _ = store.create_job(NewJob({"prompt": "new"}, {"video": [], "image": None, "images": []}, "t2v", {}))
        assert store.get_job(new.id).state == "queued"
        again = store.add_file("b.png", "image", ".png", PNG)
        assert Path(again.path).read_bytes() == PNG
    finally:
        store.engine.dispose()
    reopened = Store(database, files=files)  # a second start migrates nothing and loses nothing
    try:
        assert reopened.get_job(new.id) is not None and reopened.get_file("file-1").path == upload.path
    finally:
        reopened.engine.dispose()


def test_a_newer_schema_is_refused_in_one_line_and_left_alone(database, tmp_path):
    Store(database, files=tmp_path).engine.dispose()
    engine = create_engine(database.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(text("UPDATE bernini_schema SET version = :v"), {"v": LATEST + 7})
    with pytest.raises(BerniniError) as info:
        Store(database, files=tmp_path)
    message = str(info.value)
    assert "\n" not in message and f"schema version {LATEST + 7}, newer than this bernini knows ({LATEST})" in message
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM bernini_schema")).scalar_one() == LATEST + 7
    engine.dispose()


def test_a_fresh_queue_starts_at_the_latest_version(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'queue.db'}")
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM bernini_schema")).scalar_one() == LATEST
    assert store.files == tmp_path  # uploads go beside an SQLite queue unless told otherwise


def test_a_migration_cut_short_is_finished_by_the_next_start(tmp_path):
    """SQLite's driver commits each ALTER as it runs: a start killed after adding the path columns (and dropping
    the outputs' blob) left no version row; the next start must finish the move, not fail on the columns."""
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    old_queue(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in (
            "ALTER TABLE bernini_files ADD COLUMN path TEXT",
            "ALTER TABLE bernini_jobs ADD COLUMN output_path TEXT",
            "ALTER TABLE bernini_jobs ADD COLUMN sidecar_path TEXT",
            "UPDATE bernini_jobs SET output_path = 'kept.png' WHERE id = 'job-done'",
            "ALTER TABLE bernini_jobs DROP COLUMN output",
            "ALTER TABLE bernini_jobs DROP COLUMN sidecar",
        ):
            conn.execute(text(statement))
    engine.dispose()
    store = Store(url, files=tmp_path / "out")
    assert Path(store.get_file("file-1").path).read_bytes() == VIDEO
    assert store.get_job("job-done").output_path == "kept.png"
    with store.engine.connect() as conn:
        assert "data" not in {c["name"] for c in inspect(conn).get_columns("bernini_files")}
        assert conn.execute(text("SELECT version FROM bernini_schema")).scalar_one() == LATEST
