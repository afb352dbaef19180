"""Running queued jobs: claim one, read its resolved request, run it through the job engine, record its output.

One worker thread per server, a thin adapter over :class:`bernini.jobs.JobGroup`. Progress comes from the
pipeline's step callback: it is recorded (with a heartbeat), published in memory on the server's
:class:`~bernini.jobs.EventBoard` for the clients that follow the job, and it stops a job whose cancel was
requested (before the next step, so a cancelled job never writes output). Under torchrun the server
(rank 0) broadcasts each plan to the whole group, every rank runs it and rank 0's stop decision reaches
all ranks at each step.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import BerniniError
from ...jobs import EventBoard, JobGroup, JobStopped, step_phase
from ...request import GenerationRequest
from ...resolve import resolve_request
from ...resolved import ModelDefaults, ResolvedRequest
from ...runtime.parallel.groups import RankZeroChannel
from .store import DATABASE_ERRORS, JobRow, Store, describe_failure, failure_detail

logger = logging.getLogger("bernini.frontends.serve")


@dataclass(frozen=True)
class WorkerSettings:
    output_dir: Path
    worker_id: str
    keep_jobs: int | None = None
    keep_bytes: int | None = None
    poll_s: float = 0.2
    heartbeat_s: float = 5.0
    stale_after_s: float = 120.0
    keepalive_s: float = 60.0


def local_inputs(store: Store, media: dict[str, Any]) -> dict[str, Any]:
    """The job's uploaded files as the local paths the database records."""

    def path_of(file_id: str) -> str:
        row = store.get_file(file_id)
        if row is None:
            raise BerniniError(f"uploaded file {file_id} no longer exists")
        if not row.path or not Path(row.path).is_file() or Path(row.path).stat().st_size != row.size:
            raise BerniniError(f"uploaded file {file_id} is missing from this server's disk; upload it again")
        return row.path

    inputs = {
        "video": [path_of(i) for i in media.get("video", [])],
        "image": path_of(media["image"]) if media.get("image") else None,
        "images": [path_of(i) for i in media.get("images", [])],
    }
    if media.get("extend"):
        inputs["extend"] = path_of(media["extend"])
    return inputs


def request_for(params: dict[str, Any], inputs: dict[str, Any], output: str | None) -> GenerationRequest:
    """The job's request: the parameters the client set (a job stored before jobs kept only those lists them under
    ``given``), its media (None when there are none) and the output the server picks."""
    given = params.get("given")
    known = set(GenerationRequest.field_names()) if given is None else set(given)
    values = {k: v for k, v in params.items() if k in known and k in GenerationRequest.field_names()}
    return GenerationRequest(**values, **{k: v or None for k, v in inputs.items()}, output=output)


def job_folder(output_dir: Path, job_id: str) -> Path:
    return output_dir / "jobs" / job_id


class Worker:
    """Claims and runs jobs from ``store`` with ``pipe`` (loaded once by the front end)."""

    def __init__(
        self,
        store: Store,
        pipe: Any,
        settings: WorkerSettings,
        defaults: ModelDefaults | None = None,
        enhancer: Any = None,
        link: RankZeroChannel | None = None,
        events: EventBoard | None = None,
    ) -> None:
        self.store, self.pipe, self.settings = store, pipe, settings
        self.defaults = defaults
        self.enhancer = enhancer
        self.group = JobGroup(link)
        self.events = events or EventBoard()
        self.stopping = threading.Event()
        self.database_down: str | None = None  # the failure last logged, so a long outage is one line

    def _database_failed(self, what: str, exc: BaseException) -> None:
        detail = failure_detail(exc)
        if detail != self.database_down:
            logger.warning("the queue database failed (%s): %s", what, detail)
        self.database_down = detail

    # ------------------------------------------------------------------ rank 0
    def serve_forever(self) -> None:
        """Claim and run jobs until :meth:`stop`; idle ranks of a group get a keep-alive now and then."""
        last_ping = last_sweep = time.monotonic()
        while not self.stopping.is_set():
            try:
                job = self.store.claim(self.settings.worker_id)
                if self.database_down is not None:
                    logger.warning("the queue database answers again")
                    self.database_down = None
            except DATABASE_ERRORS as exc:  # an outage must not end the worker
                self._database_failed("claiming a job", exc)
                job = None
            except Exception:  # noqa: BLE001 - nor anything else
                logger.exception("cannot claim a job; retrying")
                job = None
            if job is None:
                if time.monotonic() - last_sweep > self.settings.stale_after_s / 4:
                    last_sweep = time.monotonic()
                    self._sweep()
                if self.group.enabled and time.monotonic() - last_ping > self.settings.keepalive_s:
                    self.group.ping()
                    last_ping = time.monotonic()
                self.stopping.wait(self.settings.poll_s)
                continue
            try:
                self.run(job)
            except DATABASE_ERRORS as exc:  # recording the job's end failed too
                self._database_failed(f"recording the end of job {job.id}", exc)
            last_ping = time.monotonic()
        self.group.shutdown()

    def _sweep(self) -> None:
        """Fail the jobs of servers that stopped sending heartbeats (this one runs nothing while idle)."""
        try:
            for job_id in self.store.recover(self.settings.worker_id, self.settings.stale_after_s):
                logger.warning("job %s: its server stopped; marked failed", job_id)
        except DATABASE_ERRORS as exc:
            self._database_failed("sweeping for interrupted jobs", exc)
        except Exception:  # noqa: BLE001
            logger.exception("cannot sweep for interrupted jobs")

    def stop(self) -> None:
        self.stopping.set()

    def run(self, job: JobRow) -> None:
        """Run one claimed job to its final state (never raises for the job's own problems)."""
        folder = job_folder(self.settings.output_dir, job.id)
        ticker = threading.Event()
        threading.Thread(target=self._heartbeat, args=(job.id, ticker), name="bernini-heartbeat", daemon=True).start()
        self.events.publish(job.id, state="running", step=0, total=job.total, phase="encode")
        try:
            resolved = self.resolve(job, folder)
            with self.group.lock:
                if self.group.enabled:
                    self.group.announce("job", {"plan": resolved, "inputs": _input_bytes(resolved)})
                result = self.execute(resolved, job.id)
            if self.store.progress(job.id, resolved.num_inference_steps, resolved.num_inference_steps, "done"):
                raise JobStopped("cancelled while the output was being written")
            output, sidecar_file = Path(result.output), Path(result.sidecar)
            sidecar = json.loads(sidecar_file.read_text(encoding="utf-8"))
            sidecar["output"] = output.name
            sidecar_file.write_text(json.dumps(sidecar, indent=2, ensure_ascii=False), encoding="utf-8")
            self.store.finish(
                job.id,
                "succeeded",
                output=output,
                sidecar=sidecar_file,
                meta={**job.loads("meta"), "rendered": rendered(sidecar)},
            )
            logger.info("job %s succeeded", job.id)
        except DATABASE_ERRORS as exc:  # the job cannot be recorded: say so once, and keep serving
            shutil.rmtree(folder / "output", ignore_errors=True)
            self._database_failed(f"running job {job.id}", exc)
            self._finish_quietly(job.id, f"the queue database failed while this job ran: {describe_failure(exc)}")
        except JobStopped as exc:
            shutil.rmtree(folder / "output", ignore_errors=True)
            state = "failed" if self.stopping.is_set() else "cancelled"
            reason = "interrupted: the server stopped while this job ran" if state == "failed" else str(exc)
            self.store.finish(job.id, state, error=reason)
            logger.info("job %s %s", job.id, state)
        except BerniniError as exc:
            shutil.rmtree(folder / "output", ignore_errors=True)
            self.store.finish(job.id, "failed", error=_one_line(str(exc)))
            logger.info("job %s failed: %s", job.id, exc)
        except Exception as exc:  # noqa: BLE001 - an unexpected error fails this job, not the server
            logger.exception("job %s crashed", job.id)
            shutil.rmtree(folder / "output", ignore_errors=True)
            self.store.finish(job.id, "failed", error=_one_line(f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            ticker.set()
            self.events.publish(job.id, ended=True)  # its followers read the final state stored
        try:
            dropped = self.store.prune(self.settings.keep_jobs, self.settings.keep_bytes)
        except DATABASE_ERRORS as exc:
            self._database_failed("removing old outputs", exc)
            dropped = []
        for job_id in dropped:
            shutil.rmtree(job_folder(self.settings.output_dir, job_id), ignore_errors=True)

    def _finish_quietly(self, job_id: str, error: str) -> None:
        """Mark a job failed if the database takes it now (it may not: then a restart's recovery does)."""
        try:
            self.store.finish(job_id, "failed", error=_one_line(error))
        except DATABASE_ERRORS:
            pass

    def resolve(self, job: JobRow, folder: Path) -> ResolvedRequest:
        """The request resolved at submit, writing into the job's folder (its uploads checked still there). A job
        queued before jobs kept their resolved request is resolved from its parameters."""
        inputs = local_inputs(self.store, job.loads("media"))
        single = job.task_type in ("t2i", "i2i")
        output = str(folder / "output" / ("output.png" if single else "output.mp4"))
        if job.resolved is None:
            return resolve_request(request_for(job.loads("params"), inputs, output), self.defaults)
        return ResolvedRequest.from_json(job.loads("resolved")).with_output(output)

    def _heartbeat(self, job_id: str, done: threading.Event) -> None:
        while not done.wait(self.settings.heartbeat_s):
            try:
                self.store.heartbeat(job_id)
            except Exception:  # noqa: BLE001
                logger.warning("heartbeat of %s failed", job_id)

    # ------------------------------------------------------------------ every rank
    def execute(self, resolved: ResolvedRequest, job_id: str | None) -> Any:
        """Run ``plan`` (rank 0 passes its job id and writes; the other ranks pass None)."""

        def check(done: int, total: int) -> bool:
            if job_id is None:
                return False
            return self.store.progress(job_id, done, total, step_phase(done, total)) or self.stopping.is_set()

        return self.group.run(
            self.pipe,
            resolved,
            check=check,
            reason="cancelled while running",
            enhancer=self.enhancer,
            events=self.events,
            job_id=job_id,
        )

    def follow(self) -> int:
        """Ranks other than 0: run every broadcast job until the shutdown message."""

        def run(message: dict[str, Any]) -> Any:
            for path, data in message.get("inputs", {}).items():
                target = Path(path)
                if not target.is_file():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
            return self.execute(message["plan"], None)

        return self.group.follow("job", run)


def rendered(sidecar: dict[str, Any]) -> dict[str, Any]:
    """What the output holds, from the run's record: frames, width, height and frame rate."""
    resolved = sidecar.get("resolved") or {}
    return {key: resolved.get(key) for key in ("frames", "width", "height")} | {"fps": sidecar.get("fps")}


def _input_bytes(resolved: ResolvedRequest) -> dict[str, bytes]:
    """The plan's input files, for ranks on other machines."""
    media = resolved.media
    paths = [*media.video, *([media.image] if media.image is not None else []), *media.images]
    return {str(p): Path(p).read_bytes() for p in paths if isinstance(p, (str, Path))}


def _one_line(message: str) -> str:
    return " ".join(message.split())[:2000]
