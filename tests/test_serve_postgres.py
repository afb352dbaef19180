"""Two ``bernini serve`` processes sharing one real PostgreSQL queue (``SELECT … FOR UPDATE SKIP LOCKED``).

Ten concurrent submissions spread over both servers all complete once, any server answers for any job,
and a server killed with ``kill -9`` mid-job finds the queue intact when it comes back. Skips (with the
reason) where no PostgreSQL is configured: ``export BERNINI_TEST_POSTGRES_URL=$(.ci/postgres)``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_support import ServerProcess, postgres_database, submit, wait_for

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def servers(tiny_bundle, tmp_path_factory):
    with postgres_database() as url:
        root = tmp_path_factory.mktemp("serve_pg")
        pair = [ServerProcess(tiny_bundle, root / name, db=url, token="pg-test-token") for name in ("a", "b")]
        try:
            for server in pair:
                server.launch()
            for server in pair:
                server.ready()
            yield pair
        finally:
            for server in pair:
                server.stop()


def test_two_servers_share_the_queue_and_each_job_runs_once(servers):
    a, b = servers

    def one(index: int) -> str:
        with (a if index % 2 else b).client() as client:
            return submit(client, seed=500 + index, num_inference_steps=6)["id"]

    with ThreadPoolExecutor(10) as pool:
        ids = list(pool.map(one, range(10)))
    workers = set()
    with a.client() as on_a, b.client() as on_b:
        for index, job_id in enumerate(ids):
            job = wait_for(on_a, job_id)
            assert job["state"] == "succeeded", job
            assert on_b.get(f"/v1/jobs/{job_id}").json()["worker"] == job["worker"]
            workers.add(job["worker"])
            output = on_a.get(job["output_url"]).content
            assert output == on_b.get(job["output_url"]).content  # either server serves any output
            assert on_b.get(job["sidecar_url"]).json()["request"]["seed"] == 500 + index
        listed = {j["id"] for j in on_b.get("/v1/jobs", params={"limit": 100}).json()["data"]}
    assert set(ids) <= listed
    assert workers == {a.worker_id, b.worker_id}  # both servers claimed jobs from the one queue


def test_kill_9_of_one_server_mid_job_then_restart(servers):
    a, b = servers
    with a.client() as client:
        long = submit(client, num_inference_steps=1000)
        running = wait_for(client, long["id"], states=("running",), step=2)
    victim = a if running["worker"] == a.worker_id else b
    survivor = b if victim is a else a
    with survivor.client() as client:
        queued = [submit(client, seed=900 + i)["id"] for i in range(3)]
    victim.kill9()
    victim.start()
    with survivor.client() as client:
        interrupted = wait_for(client, long["id"], timeout_s=15)
        assert interrupted["state"] == "failed" and interrupted["error"].startswith("interrupted:")
        for job_id in queued:
            assert wait_for(client, job_id)["state"] == "succeeded"
