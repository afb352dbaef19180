"""The FastAPI application: auth, one-line JSON errors, uploads, the job routes, health and models.

``create_app(service)`` builds it; the OpenAI-style ``/v1/videos`` routes come from
:mod:`bernini.frontends.serve.openai_routes`. Every ``/v1`` route needs ``Authorization: Bearer TOKEN`` when the
service has a token; ``/healthz`` and the OpenAPI page (``/docs``, ``/openapi.json``) do not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...sampling.guidance import FULL_MODEL_MODES, GUIDANCE_MODES
from ...tasks import TASKS
from .bodies import multipart_job, read_form, read_json, store_upload
from .openai_routes import video_router
from .schemas import (
    FINISHED,
    ErrorResponse,
    FileView,
    Health,
    JobCreate,
    JobList,
    JobView,
    ModelCard,
    ModelList,
    Progress,
)
from .service import ApiError, Service, error_body, job_view, sidecar_text, validation_message
from .sidecar import public_sidecar
from .store import DATABASE_ERRORS, describe_failure, failure_detail
from .uploads import UploadRejected

logger = logging.getLogger("bernini.frontends.serve")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": "one line of JSON"}
    for code in (400, 401, 404, 409, 413, 415, 422, 503)
}
TOO_LARGE = "the request body is too large"
bearer = HTTPBearer(auto_error=False, description="the server's token (--token or BERNINI_SERVE_TOKEN)")


def _job_body_schema() -> dict[str, Any]:
    multipart = {
        "type": "object",
        "required": ["request"],
        "properties": {
            "request": {
                "type": "string",
                "description": "The JobCreate body as a JSON string (media fields optional).",
            },
            "video": {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "description": "Source videos.",
            },
            "image": {"type": "string", "format": "binary", "description": "The source or reference image."},
            "images": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "References."},
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
                "multipart/form-data": {"schema": multipart},
            },
        }
    }


def create_app(service: Service) -> FastAPI:
    config = service.config
    app = FastAPI(
        title="bernini serve",
        summary="Bernini-R video generation and editing as a job service",
        version="1",
        responses=ERRORS,
    )
    app.add_middleware(BodyLimit, limit=config.max_upload_bytes * config.max_files + (1 << 20))
    install_error_handlers(app)

    def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if config.token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), config.token.encode()):
            raise ApiError(401, "a valid bearer token is required: send Authorization: Bearer TOKEN")

    api = APIRouter(prefix="/v1", dependencies=[Depends(authorized)])

    @app.get("/healthz", response_model=Health, tags=["service"])
    def healthz() -> Health:
        counts = service.store.counts()
        return Health(
            model=config.model_id,
            worker=config.worker_id,
            queued=counts.get("queued", 0),
            running=counts.get("running", 0),
        )

    @api.get("/models", response_model=ModelList, tags=["service"])
    def models() -> ModelList:
        full = config.defaults is not None and config.defaults.planner_version is not None
        modes = list(FULL_MODEL_MODES if full else GUIDANCE_MODES)
        card = ModelCard(id=config.model_id, created=config.created, tasks=list(TASKS), guidance_modes=modes)
        return ModelList(data=[card])

    @api.post("/files", response_model=FileView, status_code=201, tags=["files"])
    async def upload_file(request: Request) -> FileView:
        """Upload one video or image as the multipart field ``file``; use its id in a job's media fields."""
        form = await read_form(request, config.max_files)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "send the media as the multipart field 'file'")
        row = await store_upload(service, upload, None)
        return FileView(id=row.id, filename=row.filename, kind=row.kind, bytes=row.size, created_at=row.created_at)

    @api.post("/jobs", response_model=JobView, status_code=201, tags=["jobs"], openapi_extra=_job_body_schema())
    async def create_job(
        request: Request,
        response: Response,
        idempotency_key: Annotated[
            str | None, Header(max_length=255, description="Replays return the same job.")
        ] = None,
    ) -> JobView:
        """Queue a job: a JSON :class:`JobCreate` body with file ids, or multipart with the files attached."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            data = await read_json(request)
        elif content_type.startswith("multipart/form-data"):
            data = await multipart_job(service, request)
        else:
            raise ApiError(415, "send the job as application/json or multipart/form-data")
        body = service.parse_body(data)
        row, created = await run_in_threadpool(service.submit, body, idempotency_key)
        if not created:
            response.status_code = 200
        return job_view(row)

    @api.get("/jobs", response_model=JobList, tags=["jobs"])
    def list_jobs(
        limit: Annotated[int, Query(ge=1, le=100, description="Jobs per page.")] = 20,
        after: Annotated[str | None, Query(max_length=64, description="next_after of the previous page.")] = None,
    ) -> JobList:
        try:
            rows, more = service.store.list_jobs(limit, after)
        except KeyError:
            raise ApiError(400, f"after={after!r} names no job") from None
        return JobList(data=[job_view(r) for r in rows], has_more=more, next_after=rows[-1].id if more else None)

    @api.get("/jobs/{job_id}", response_model=JobView, tags=["jobs"])
    def get_job(job_id: str) -> JobView:
        return job_view(service.job(job_id))

    @api.delete("/jobs/{job_id}", response_model=JobView, tags=["jobs"])
    def delete_job(job_id: str) -> JobView:
        """Queued: dropped. Running: stops at its next step and writes nothing. Finished: its output is removed."""
        return job_view(service.cancel(job_id))

    @api.get("/jobs/{job_id}/output", tags=["jobs"], response_class=Response)
    def get_output(job_id: str) -> Response:
        row = service.finished_output(job_id)
        name = row.output_name or "output"
        media_type = "image/png" if name.endswith(".png") else "video/mp4"
        disposition = f'attachment; filename="{row.id}{name[name.rfind(".") :]}"'
        return FileResponse(row.output_path or "", media_type=media_type, headers={"Content-Disposition": disposition})

    @api.get("/jobs/{job_id}/sidecar", tags=["jobs"])
    def get_sidecar(job_id: str) -> Response:
        row = service.finished_output(job_id)
        text = public_sidecar(sidecar_text(row), [str(config.output_dir), os.getcwd()])
        return Response(text, media_type="application/json")

    @api.get("/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse)
    async def job_events(job_id: str) -> StreamingResponse:
        """Server-sent events (``text/event-stream``): ``progress`` with the job whenever it changes, then
        ``end`` with its final state."""
        await run_in_threadpool(service.job, job_id)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(event_stream(service, job_id), media_type="text/event-stream", headers=headers)

    app.include_router(api)
    app.include_router(video_router(service), prefix="/v1", dependencies=[Depends(authorized)])
    _ = JobCreate  # documented through openapi_extra's $ref
    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original_openapi()
            schema["components"]["schemas"]["JobCreate"] = JobCreate.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def event_stream(service: Service, job_id: str, recheck_s: float = 2.0) -> AsyncIterator[str]:
    """The job's changes as they are published in this server's memory (:class:`~bernini.jobs.EventBoard`).

    The stored job is read at the start and when its state changes; progress steps come from memory. A
    job no event arrives for within ``recheck_s`` (queued, or run by another server of a shared queue) is
    read again then, so a follower costs the database at most one query per ``recheck_s``.
    """
    board = service.events
    last = None
    idle = 0.0
    version, event = board.latest(job_id)  # before the first read: no change in between is missed
    reread = True
    while True:
        if reread:
            try:
                row = await run_in_threadpool(service.store.get_job, job_id)
            except DATABASE_ERRORS as exc:  # the stream has started: end it with the error as its last event
                status, message = database_error(exc, f"events of {job_id}")
                yield f"event: error\ndata: {json.dumps(error_body(status, message))}\n\n"
                return
            if row is None:
                return
            view = job_view(row)
        elif event is not None and view.state == "running":
            step = Progress(step=event.get("step", 0), total=event.get("total", 0), phase=event.get("phase", "encode"))
            view = view.model_copy(update={"progress": step})
        key = (view.state, view.progress.step, view.progress.phase, view.cancel_requested)
        if key != last:
            last, idle = key, 0.0
            yield f"event: progress\ndata: {view.model_dump_json()}\n\n"
        elif idle >= 15:
            idle = 0.0
            yield ": keep-alive\n\n"
        if view.state in FINISHED:
            yield f"event: end\ndata: {view.model_dump_json()}\n\n"
            return
        started = asyncio.get_running_loop().time()
        seen, event = await board.next(job_id, version, recheck_s)
        idle += asyncio.get_running_loop().time() - started
        changed = seen != version
        version = seen
        reread = not changed or event is None or _state_changed(view, event)


def _state_changed(view: JobView, event: dict[str, Any]) -> bool:
    """Whether a published event means the stored job changed beyond its progress (re-read it then)."""
    if event.get("ended") or event.get("deleted"):
        return True
    state = event.get("state")
    return (state is not None and state != view.state) or bool(event.get("cancel_requested")) != view.cancel_requested


def database_error(exc: BaseException, what: str) -> tuple[int, str]:
    """A database failure as a 503 for the client (no paths, hosts or SQL) and one line in the server's log."""
    logger.warning("the queue database failed during %s: %s", what, failure_detail(exc))
    return 503, f"the queue database is unavailable: {describe_failure(exc)}; try again later or tell the operator"


class BodyLimit:
    """Refuses a request body over ``limit`` bytes with the JSON 413: at once by its Content-Length, or while
    it arrives (the route then sees the 413 raised from ``receive``)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await JSONResponse(error_body(413, TOO_LARGE), status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise StarletteHTTPException(413)
            return message

        await self.app(scope, limited, send)


def install_error_handlers(app: FastAPI) -> None:
    def reply(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(error_body(status, message), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return reply(exc.status, exc.message, headers)

    @app.exception_handler(UploadRejected)
    async def upload_rejected(_request: Request, exc: UploadRejected) -> JSONResponse:
        return reply(exc.status, str(exc))

    async def database_failed(request: Request, exc: Exception) -> JSONResponse:
        return reply(*database_error(exc, f"{request.method} {request.url.path}"), {"Retry-After": "30"})

    for kind in DATABASE_ERRORS:
        app.add_exception_handler(kind, database_failed)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return reply(422, validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        messages = {
            404: f"no route {request.method} {request.url.path}; see /docs",
            413: TOO_LARGE,
        }
        return reply(exc.status_code, messages.get(exc.status_code, str(exc.detail)), getattr(exc, "headers", None))
