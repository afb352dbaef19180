"""The queue's database layer on SQLite and on a real PostgreSQL: claims, idempotency, cancel, recovery, retention."""

from __future__ import annotations

import threading
import time

import pytest
from serve_support import postgres_database

pytest.importorskip("sqlalchemy")

from bernini.errors import BerniniError  # noqa: E402
from bernini.frontends.serve.store import INTERRUPTED_BY_RESTART, IdempotencyConflict, NewJob, Store  # noqa: E402


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield Store(f"sqlite:///{tmp_path / 'queue.db'}")
        return
    with postgres_database() as url:
        store = Store(url)
        yield store
        store.engine.dispose()


def job(seed: int, key: str | None = None) -> NewJob:
    params = {"prompt": f"p{seed}", "seed": seed, "num_inference_steps": 3}
    return NewJob(params, {"video": [], "image": None, "images": []}, "t2v", {}, key)


def test_each_job_is_claimed_exactly_once_by_racing_workers(store):
    ids = [store.create_job(job(i))[0].id for i in range(30)]
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (row := store.claim(name)) is not None:
            with lock:
                claimed.append((row.id, name))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(i for i, _ in claimed) == sorted(ids)  # none lost, none twice
    rows = [store.get_job(i) for i in ids]
    assert all(r.state == "running" and r.worker == dict(claimed)[r.id] for r in rows)
    assert store.claim("late") is None


def test_claims_follow_submission_order(store):
    first, _ = store.create_job(job(1))
    second, _ = store.create_job(job(2))
    assert store.claim("w").id == first.id
    assert store.claim("w").id == second.id


def test_idempotency_key_returns_the_same_job_and_refuses_a_different_body(store):
    row, created = store.create_job(job(1, key="k-1"))
    again, created_again = store.create_job(job(1, key="k-1"))
    assert created and not created_again and again.id == row.id
    with pytest.raises(IdempotencyConflict, match="different request"):
        store.create_job(job(2, key="k-1"))
    other, created_other = store.create_job(job(1, key="k-2"))
    assert created_other and other.id != row.id


def test_cancel_drops_a_queued_job_and_flags_a_running_one(store):
    queued, _ = store.create_job(job(1))
    running, _ = store.create_job(job(2))
    store.cancel(queued.id)
    assert store.get_job(queued.id).state == "cancelled"
    assert store.claim("w").id == running.id  # the cancelled one is never claimed
    assert store.progress(running.id, 1, 3, "denoise") is False
    store.cancel(running.id)
    row = store.get_job(running.id)
    assert row.state == "running" and row.cancel_requested
    assert store.progress(running.id, 2, 3, "denoise") is True


def test_recover_fails_this_workers_running_jobs_and_silent_servers_only(store):
    mine, _ = store.create_job(job(1))
    theirs, _ = store.create_job(job(2))
    silent, _ = store.create_job(job(3))
    waiting, _ = store.create_job(job(4))
    store.claim("me")
    store.claim("alive")
    store.claim("gone")
    with store.session() as session:  # the "gone" server's last heartbeat was long ago
        from sqlalchemy import update

        from bernini.frontends.serve.store import JobRow

        session.execute(update(JobRow).where(JobRow.id == silent.id).values(heartbeat_at=time.time() - 1000))
    failed = store.recover("me", stale_after_s=120)
    assert sorted(failed) == sorted([mine.id, silent.id])
    assert store.get_job(mine.id).error == INTERRUPTED_BY_RESTART
    assert "heartbeats" in store.get_job(silent.id).error
    assert store.get_job(theirs.id).state == "running"
    assert store.get_job(waiting.id).state == "queued"


def test_retention_keeps_the_newest_outputs_by_count_and_bytes(store, tmp_path):
    ids = []
    for i, size in enumerate([100, 200, 300, 400]):
        row, _ = store.create_job(job(i))
        store.claim("w")
        output = tmp_path / row.id / "output.mp4"
        output.parent.mkdir()
        output.write_bytes(b"x" * size)
        store.finish(row.id, "succeeded", output=output, sidecar=output.with_name("output.mp4.json"))
        ids.append(row.id)
        time.sleep(0.01)
    assert store.prune(keep_jobs=3, keep_bytes=None) == [ids[0]]
    assert store.get_job(ids[0]).expired and store.get_job(ids[0]).output_path is None
    assert sorted(store.prune(keep_jobs=None, keep_bytes=650)) == sorted([ids[1], ids[2]])  # 400 + 300 > 650
    kept = store.get_job(ids[3])
    assert not kept.expired and kept.output_bytes == 400 and kept.output_path == str(tmp_path / ids[3] / "output.mp4")


def test_a_bad_url_is_one_line_without_the_password(tmp_path):
    with pytest.raises(BerniniError) as info:
        Store("mysql://user:secret@localhost/db")
    assert "sqlite" in str(info.value) and "secret" not in str(info.value)
    with pytest.raises(BerniniError) as info:
        Store("postgresql://user:secret@127.0.0.1:1/none")
    message = str(info.value)
    assert "\n" not in message and "secret" not in message and "cannot open the queue database" in message
