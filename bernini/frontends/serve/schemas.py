"""The service's request and response bodies (pydantic), each field described for the OpenAPI page.

A job body holds the fields of a case file (without ``output``: the server picks a per-job folder) and
every generation parameter of :class:`~bernini.request.GenerationRequest`; media are ids from
``POST /v1/files`` or files uploaded with the job, never paths. :data:`JobCreate` is generated from the
request's declarations (each setting's ``service`` description and bounds).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from ...request import GenerationRequest
from ...settings import MAX_FPS, MAX_FRAMES, MAX_MEDIA, MAX_SIDE, MAX_STEPS, MAX_TEXT, spec_of  # noqa: F401 (bounds)

FILE_ID = r"^file-[0-9a-f]{32}$"
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")


def _job_fields() -> dict[str, Any]:
    """The job body's fields, generated from the request settings that declare a service description; each documents
    its built-in default (a field the client leaves out is not given: :func:`job_params`)."""
    types = GenerationRequest.setting_types()
    out: dict[str, Any] = {}
    for f in GenerationRequest.settings():
        spec = spec_of(f)
        if spec.service is None:
            continue
        annotation = spec.service_type or types[f.name]
        if spec.required:
            out[f.name] = (annotation, Field(description=spec.service, **spec.bounds))
        elif spec.factory is not None:
            out[f.name] = (annotation, Field(default_factory=spec.factory, description=spec.service, **spec.bounds))
        else:
            out[f.name] = (annotation, Field(spec.default, description=spec.service, **spec.bounds))
    return out


class _JobBase(BaseModel):
    model_config = ConfigDict(extra="forbid")


JobCreate = create_model(
    "JobCreate",
    __base__=_JobBase,
    __doc__="A generation job: the case-file fields plus generation parameters (defaults: upstream's CLI).",
    __module__=__name__,
    **_job_fields(),
)


class Progress(BaseModel):
    step: int = Field(description="Denoising steps done.")
    total: int = Field(description="Denoising steps in all.")
    phase: str = Field(description="queued, encode, denoise, decode or done.")


class Timings(BaseModel):
    created_at: float = Field(description="Unix time the job was accepted.")
    started_at: float | None = Field(None, description="Unix time a worker claimed it.")
    finished_at: float | None = Field(None, description="Unix time it ended.")
    queued_s: float | None = Field(None, description="Seconds it waited in the queue.")
    run_s: float | None = Field(None, description="Seconds it ran.")


class JobView(BaseModel):
    id: str = Field(description="The job id (job-…).")
    object: Literal["job"] = Field("job", description="Always 'job'.")
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"] = Field(description="Where the job is.")
    task_type: str = Field(description="The task the plan resolved to.")
    prompt: str = Field(description="The prompt as submitted.")
    progress: Progress = Field(description="Denoising progress.")
    timings: Timings = Field(description="When it was accepted, started and ended.")
    error: str | None = Field(None, description="One line saying why it failed or was cancelled.")
    cancel_requested: bool = Field(False, description="A DELETE asked a running job to stop at its next step.")
    worker: str | None = Field(None, description="The server that ran (or runs) it.")
    output_url: str | None = Field(None, description="Where to fetch the output once it succeeded.")
    sidecar_url: str | None = Field(None, description="Where to fetch the sidecar (the JSON that reproduces the run).")
    expired: bool = Field(False, description="The output was removed by the retention limits or a DELETE.")


class JobList(BaseModel):
    object: Literal["list"] = Field("list", description="Always 'list'.")
    data: list[JobView] = Field(description="Jobs, newest first.")
    has_more: bool = Field(description="More jobs follow; pass next_after as ?after=.")
    next_after: str | None = Field(None, description="The id to pass as ?after= for the next page.")


class FileView(BaseModel):
    id: str = Field(description="The file id (file-…), usable in a job's video / image / images.")
    object: Literal["file"] = Field("file", description="Always 'file'.")
    filename: str = Field(description="The name it was uploaded with (kept for display only).")
    kind: Literal["video", "image"] = Field(description="What its bytes are.")
    bytes: int = Field(description="Its size.")
    created_at: float = Field(description="Unix time of the upload.")


class ModelCard(BaseModel):
    id: str = Field(description="The model id to pass as 'model'.")
    object: Literal["model"] = Field("model", description="Always 'model'.")
    created: int = Field(description="Unix time the server loaded it.")
    owned_by: str = Field("bernini", description="Always 'bernini'.")
    tasks: list[str] = Field(default_factory=list, description="The task types it runs.")
    guidance_modes: list[str] = Field(default_factory=list, description="The guidance modes it accepts.")


class ModelList(BaseModel):
    object: Literal["list"] = Field("list", description="Always 'list'.")
    data: list[ModelCard] = Field(description="The loaded model.")


class Health(BaseModel):
    status: Literal["ok"] = Field("ok", description="Always 'ok' when the server answers.")
    model: str = Field(description="The loaded model's id.")
    worker: str = Field(description="This server's worker id.")
    queued: int = Field(description="Jobs waiting in the shared queue.")
    running: int = Field(description="Jobs running on any server of the queue.")


class ErrorBody(BaseModel):
    message: str = Field(description="One line saying what was wrong and what to do.")
    type: str = Field(description="invalid_request_error, authentication_error, not_found_error, … .")
    code: int = Field(description="The HTTP status.")


class ErrorResponse(BaseModel):
    error: ErrorBody = Field(description="What went wrong.")


class VideoError(BaseModel):
    code: str = Field(description="A short code.")
    message: str = Field(description="One line.")


class VideoView(BaseModel):
    """The OpenAI ``Video`` object."""

    id: str = Field(description="The job id.")
    object: Literal["video"] = Field("video", description="Always 'video'.")
    created_at: int = Field(description="Unix time the job was accepted.")
    completed_at: int | None = Field(None, description="Unix time it ended.")
    expires_at: int | None = Field(None, description="Not set: outputs live until the retention limits remove them.")
    error: VideoError | None = Field(None, description="Why it failed.")
    model: str = Field(description="The model id.")
    progress: int = Field(description="Percent of denoising steps done.")
    prompt: str | None = Field(None, description="The prompt.")
    remixed_from_video_id: str | None = Field(None, description="The video this one edits, if any.")
    seconds: str = Field(description="Duration asked for.")
    size: str = Field(description="WxH.")
    status: Literal["queued", "in_progress", "completed", "failed"] = Field(description="Where the job is.")


class VideoDeleted(BaseModel):
    id: str = Field(description="The job id.")
    object: Literal["video.deleted"] = Field("video.deleted", description="Always 'video.deleted'.")
    deleted: bool = Field(description="True: it was cancelled (if unfinished) and its output removed.")


def job_params(body: JobCreate) -> dict[str, Any]:
    """The generation parameters the client set in ``body`` (everything but the media ids), as stored with the job:
    the request's user layer (a field the body left out is not given; its documented default is the built-in one
    the merge falls back to, unless a full model's shipped settings fill it)."""
    return body.model_dump(include=body.model_fields_set - {"video", "image", "images", "extend"})
