"""What the routes share: the service's settings, one-line API errors, submitting a job, views of a job.

A submitted body is turned into a :class:`~bernini.request.GenerationRequest` with the uploads as local
files and resolved once, with :func:`bernini.runner.resolve_tasks`, before it is queued, so a bad request is
refused at once with the resolver's own message. The resolved request is stored (JSON) with the job, and the
worker that claims it runs the stored one; only when the model was not known at submit does the pipeline
resolve it again for the model it loaded (:func:`bernini.resolve.with_model_defaults`).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ...errors import BerniniError
from ...jobs import EventBoard
from ...resolved import ModelDefaults
from .schemas import FILE_ID, FINISHED, JobCreate, JobView, Progress, Timings, job_params
from .store import IdempotencyConflict, JobRow, NewJob, Store
from .worker import job_folder, local_inputs, request_for

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    410: "gone_error",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_request_error",
    503: "service_unavailable_error",
}


class ApiError(Exception):
    """An error answered as one line of JSON: ``{"error": {"message", "type", "code"}}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())


def error_body(status: int, message: str) -> dict[str, Any]:
    message = " ".join(str(message).split()) or "error"
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "api_error"), "code": status}}


def validation_message(exc: ValidationError | Any) -> str:
    """Pydantic's errors as one line: the first one, and how many more."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body",)) or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


@dataclass(frozen=True)
class ServiceConfig:
    model_id: str
    output_dir: Path
    worker_id: str
    token: str | None = None
    defaults: ModelDefaults | None = None
    max_upload_bytes: int = 512 << 20
    max_files: int = 16
    created: int = 0

    @property
    def uploads(self) -> Path:
        return self.output_dir / "uploads"


@dataclass
class Service:
    store: Store
    config: ServiceConfig
    events: EventBoard = field(default_factory=EventBoard)  # shared with this server's worker

    def parse_body(self, data: Any) -> JobCreate:
        if not isinstance(data, dict):
            raise ApiError(422, "the job body must be a JSON object")
        try:
            return JobCreate.model_validate(data)
        except ValidationError as exc:
            raise ApiError(422, validation_message(exc)) from None

    def check_files(self, body: JobCreate) -> dict[str, Any]:
        """The body's media ids, each a stored upload of the right kind."""
        slots = [("video", v, "video") for v in body.video] + [("images", v, "image") for v in body.images]
        if body.image is not None:
            slots.append(("image", body.image, "image"))
        if body.extend is not None:
            slots.append(("extend", body.extend, "video"))
        digests: dict[str, str] = {}
        for slot, file_id, kind in slots:
            if not re.fullmatch(FILE_ID, file_id):
                raise ApiError(
                    400,
                    f"{slot}: {file_id[:80]!r} is not a file id; upload it with POST /v1/files (paths are never read)",
                )
            row = self.store.get_file(file_id)
            if row is None:
                raise ApiError(400, f"{slot}: no uploaded file {file_id}")
            if row.kind != kind:
                raise ApiError(
                    400, f"{slot}: {file_id} is {'a' if row.kind == 'video' else 'an'} {row.kind}; {kind} expected"
                )
            digests[file_id] = row.sha256
        media = {"video": list(body.video), "image": body.image, "images": list(body.images), "digests": digests}
        return {**media, "extend": body.extend} if body.extend is not None else media

    def submit(self, body: JobCreate, key: str | None, meta: dict[str, Any] | None = None) -> tuple[JobRow, bool]:
        """Validate, plan and queue ``body``; returns the job and whether it is new (False: idempotent replay)."""
        from ...runner import resolve_tasks

        media = self.check_files(body)
        digests = media.pop("digests")
        params = job_params(body)
        try:
            inputs = local_inputs(self.store, media)
            planned = resolve_tasks([request_for(params, inputs, "output.mp4")], self.config.defaults)[0]
        except BerniniError as exc:
            planned = exc
        if isinstance(planned, BerniniError):
            raise ApiError(400, str(planned).replace(f"{self.config.uploads}/", ""))
        digest_media = {
            "video": [digests[i] for i in media["video"]],
            "image": digests.get(media["image"] or ""),
            "images": [digests[i] for i in media["images"]],
        }
        if media.get("extend"):
            digest_media["extend"] = digests[media["extend"]]
        job = NewJob(params, media, planned.task.name, meta or {}, key, digest_media, planned.to_json())
        try:
            return self.store.create_job(job)
        except IdempotencyConflict as exc:
            raise ApiError(409, str(exc)) from None

    def job(self, job_id: str) -> JobRow:
        row = self.store.get_job(job_id) if len(job_id) <= 40 else None
        if row is None:
            raise ApiError(404, f"no job {job_id[:48]!r}; GET /v1/jobs lists them")
        return row

    def finished_output(self, job_id: str) -> JobRow:
        row = self.job(job_id)
        if row.expired:
            raise ApiError(410, f"the output of {job_id} was removed (retention limit or DELETE)")
        if row.state != "succeeded":
            detail = f": {row.error}" if row.error else ""
            raise ApiError(409, f"job {job_id} is {row.state}{detail}; it has no output")
        if not row.output_path or not Path(row.output_path).is_file():
            raise ApiError(410, f"the output file of {job_id} is gone from the server's disk")
        return row

    def cancel(self, job_id: str) -> JobRow:
        """Queued: dropped. Running: stops at its next step. Finished: its output is removed."""
        row = self.job(job_id)
        if row.state in FINISHED:
            self.store.expire(job_id)
            shutil.rmtree(job_folder(self.config.output_dir, job_id), ignore_errors=True)
            return self.job(job_id)
        cancelled = self.store.cancel(job_id) or row
        self.events.publish(job_id, state=cancelled.state, cancel_requested=bool(cancelled.cancel_requested))
        return cancelled

    def delete(self, job_id: str) -> None:
        """Remove the job altogether (the OpenAI ``DELETE /videos``): it is then unknown, and a run stops."""
        self.job(job_id)
        self.store.delete(job_id)
        self.events.publish(job_id, deleted=True)
        shutil.rmtree(job_folder(self.config.output_dir, job_id), ignore_errors=True)


def sidecar_text(row: JobRow) -> str:
    """A finished job's sidecar file (``{}`` when it is gone)."""
    try:
        return Path(row.sidecar_path or "").read_text(encoding="utf-8")
    except OSError:
        return "{}"


def job_view(row: JobRow) -> JobView:
    done = row.state == "succeeded" and not row.expired
    base = f"/v1/jobs/{row.id}"
    queued = (row.started_at or row.finished_at or 0) - row.created_at if (row.started_at or row.finished_at) else None
    ran = row.finished_at - row.started_at if row.finished_at and row.started_at else None
    return JobView(
        id=row.id,
        state=row.state,
        task_type=row.task_type,
        prompt=row.prompt,
        progress=Progress(step=row.step, total=row.total, phase=row.phase),
        timings=Timings(
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            queued_s=round(queued, 3) if queued is not None else None,
            run_s=round(ran, 3) if ran is not None else None,
        ),
        error=row.error,
        cancel_requested=bool(row.cancel_requested),
        worker=row.worker,
        output_url=f"{base}/output" if done else None,
        sidecar_url=f"{base}/sidecar" if done else None,
        expired=bool(row.expired),
    )
