"""Two ``bernini serve`` processes sharing one real PostgreSQL queue (``SELECT … FOR UPDATE SKIP LOCKED``).

Ten concurrent submissions spread over both servers all complete once, any server answers for any job,
and a server killed with ``kill -9`` mid-job finds the queue intact when it comes back. Skips (with the
reason) where no PostgreSQL is configured: ``export BERNINI_TEST_POSTGRES_URL=$(.ci/postgres)``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
from serve_support import TINY, ServerProcess, TcpRelay, postgres_database, submit, wait_for

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


def test_postgres_going_down_gets_the_json_503_and_the_service_recovers(tiny_bundle, tmp_path):
    """The server reaches PostgreSQL through a loopback relay; taking the relay down drops its connections and
    refuses new ones, as a stopped or unreachable database does, without stopping the shared test cluster."""
    with postgres_database() as url:
        parts = urlsplit(url)
        relay = TcpRelay(parts.hostname or "127.0.0.1", parts.port or 5432).up()
        relayed = parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{relay.port}").geturl()
        server = ServerProcess(tiny_bundle, tmp_path / "out", db=relayed, token="pg-test-token").start()
        try:
            with server.client() as http:
                assert wait_for(http, submit(http, seed=1)["id"])["state"] == "succeeded"
                relay.down()
                for method, path, kwargs in (
                    ("POST", "/v1/jobs", {"json": {"prompt": "while down", **TINY}}),
                    ("GET", "/v1/jobs", {}),
                    ("GET", "/healthz", {}),
                ):
                    response = http.request(method, path, **kwargs)
                    assert response.status_code == 503, response.text
                    error = response.json()["error"]
                    assert error["type"] == "service_unavailable_error" and "cannot be reached" in error["message"]
                    assert "127.0.0.1" not in error["message"] and "\n" not in response.text.strip()
                relay.up()
                assert wait_for(http, submit(http, seed=2)["id"])["state"] == "succeeded"
        finally:
            server.stop()
            relay.down()
    log = server.log_text()
    assert "Traceback" not in log and "the queue database failed" in log
