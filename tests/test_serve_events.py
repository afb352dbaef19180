"""Following a job costs the database almost nothing: the service's events stream reads the progress its worker
publishes in memory, and the database only at the start and when the job's state changes. In process (the app
through FastAPI's TestClient, the worker in its thread, the tiny pipeline), with SQLAlchemy counting the queries.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from serve_support import TINY

pytest.importorskip("fastapi")


def test_a_client_following_a_job_costs_a_bounded_number_of_queries(tiny_pipe, tmp_path):
    from fastapi.testclient import TestClient
    from sqlalchemy import event

    from bernini.frontends.serve.app import create_app
    from bernini.frontends.serve.service import Service, ServiceConfig
    from bernini.frontends.serve.store import Store
    from bernini.frontends.serve.worker import Worker, WorkerSettings
    from bernini.jobs import EventBoard

    store = Store(f"sqlite:///{tmp_path / 'queue.db'}", files=tmp_path)
    events = EventBoard()
    worker = Worker(store, tiny_pipe, WorkerSettings(output_dir=tmp_path, worker_id="w"), events=events)
    queries: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        if not threading.current_thread().name.startswith("bernini-"):  # the worker's own writes do not count
            queries.append(statement.split()[0])

    app = create_app(Service(store, ServiceConfig(model_id="m", output_dir=tmp_path, worker_id="w"), events))
    with TestClient(app) as http:
        job = http.post("/v1/jobs", json={**TINY, "prompt": "followed", "num_inference_steps": 24}).json()
        event.listen(store.engine, "before_cursor_execute", count)
        thread = threading.Thread(target=worker.serve_forever, name="bernini-serve-worker", daemon=True)
        thread.start()
        try:
            stream, name = [], "message"
            with http.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        stream.append((name, json.loads(line[5:])))
            event.remove(store.engine, "before_cursor_execute", count)
        finally:
            worker.stop()
            thread.join(timeout=60)
        steps = [view["progress"]["step"] for kind, view in stream if view["state"] == "running"]
        assert stream[-1][0] == "end" and stream[-1][1]["state"] == "succeeded"
        assert steps == sorted(steps) and len(set(steps)) >= 12  # the steps as they happened...
        assert len(queries) <= 5, queries  # ...read from memory: the start, running, the end (polling: one per 0.1 s)

        output = http.get(f"/v1/jobs/{job['id']}/output").content
    row = store.get_job(job["id"])
    assert row.output_path and Path(row.output_path).read_bytes() == output and len(output) == row.output_bytes
    assert Path(row.output_path).is_relative_to(tmp_path / "jobs" / job["id"])
