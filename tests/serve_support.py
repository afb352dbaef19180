"""Helpers for the service tests: a real ``bernini serve`` subprocess on loopback, and a PostgreSQL database.

PostgreSQL comes from ``BERNINI_TEST_POSTGRES_URL`` (``.ci/postgres`` starts one); each use gets a fresh
database, dropped afterwards. Without the variable, or when the server cannot be reached, those tests skip
with the reason.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = {"num_frames": 5, "height": 32, "width": 48, "num_inference_steps": 2}
POSTGRES_VARIABLE = "BERNINI_TEST_POSTGRES_URL"
FINISHED = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    """A free port for a server a test starts, drawn below Linux's ephemeral range (32768-60999): a port the OS hands
    out for ``bind(0)`` can be taken before the server binds it by the outgoing sockets torchrun and gloo open."""
    import random

    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


class ServerProcess:
    """``bernini serve`` on the tiny bundle in a subprocess (the token travels in the environment)."""

    def __init__(self, bundle: Path, output_dir: Path, *, db: str | None = None, token: str | None = None,
                 port: int | None = None, extra: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.bundle, self.output_dir, self.db, self.token = bundle, output_dir, db, token
        self.port = port or free_port()
        self.extra = extra
        self.log = output_dir.parent / f"{output_dir.name}-server.log"
        self.process: subprocess.Popen | None = None
        self.worker_id = f"test:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = "default", timeout: float = 30.0) -> httpx.Client:
        token = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def start(self, timeout_s: float = 90.0) -> ServerProcess:
        return self.launch().ready(timeout_s)

    def launch(self) -> ServerProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        env.pop("BERNINI_SERVE_TOKEN", None)
        if self.token:
            env["BERNINI_SERVE_TOKEN"] = self.token
        command = [sys.executable, "-m", "bernini", "serve", "--config", str(self.bundle), "--device", "cpu",
                   "--port", str(self.port), "--output_dir", str(self.output_dir), "--worker_id", self.worker_id,
                   "-v", *(["--db", self.db] if self.db else []), *self.extra]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    def ready(self, timeout_s: float = 90.0) -> ServerProcess:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"the server did not answer within {timeout_s} s:\n{self.log_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""


def submit(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"prompt": "a red fox runs across a snowy field", **TINY, **fields}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def wait_for(client: httpx.Client, job_id: str, states=FINISHED, timeout_s: float = 120.0, step: int = 0) -> dict:
    """Poll until the job is in one of ``states`` (and, for running, has done at least ``step`` steps)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states and job["progress"]["step"] >= step:
            return job
        if job["state"] in FINISHED and job["state"] not in states:
            raise AssertionError(f"{job_id} ended {job['state']}: {job.get('error')}")
        time.sleep(0.05)
    raise AssertionError(f"{job_id} not in {states} after {timeout_s} s: {job}")


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the test PostgreSQL; skips (with the reason) when there is none."""
    url = os.environ.get(POSTGRES_VARIABLE)
    if not url:
        pytest.skip(f"{POSTGRES_VARIABLE} is not set; start one with: export {POSTGRES_VARIABLE}=$(.ci/postgres)")
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {POSTGRES_VARIABLE} is unreachable: {str(exc).splitlines()[0]}")
    name = f"bernini_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


class TcpRelay:
    """A loopback TCP relay to ``host:port``: :meth:`down` drops every connection and refuses new ones (the
    database is down as its clients see it), :meth:`up` listens again on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.lock = threading.Lock()

    def up(self) -> TcpRelay:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        with self.lock:
            for sock in [*([self.listener] if self.listener else []), *self.sockets]:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept / recv, which close alone does not
                except OSError:
                    pass
                sock.close()
            self.listener = None
            self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                return
            upstream.settimeout(None)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
