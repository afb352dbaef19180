"""The service's request and response bodies (pydantic), each field described for the OpenAPI page.

A job body holds the fields of a case file (without ``output``: the server picks a per-job folder) and
every generation parameter of :class:`~bernini.request.GenerationRequest`; media are ids from
``POST /v1/files`` or files uploaded with the job, never paths.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..request import WAN_NEGATIVE_PROMPT, GenerationRequest

_DEFAULTS = GenerationRequest()
FILE_ID = r"^file-[0-9a-f]{32}$"
# The service's upper bounds (the planner checks the lower ones): one request must not hold a server for days
# or exhaust its memory. Frames: 30 s at 16 fps; steps: the schedulers' 1000 training timesteps.
MAX_SIDE = 2048
MAX_FRAMES = 481
MAX_STEPS = 1000
MAX_FPS = 120.0
MAX_TEXT = 10_000
MAX_MEDIA = 16
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")


class JobCreate(BaseModel):
    """A generation job: the case-file fields plus generation parameters (defaults: upstream's CLI)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        description="What to generate or how to edit the source media.", min_length=1, max_length=MAX_TEXT
    )
    task_type: str | None = Field(
        None, description="t2i, i2i, t2v, v2v, mv2v, rv2v, r2v or ads2v; default: inferred from the media given."
    )
    guidance_mode: str | None = Field(
        None, description="Guidance mode (GET /v1/models lists them); default: the task's."
    )
    video: list[str] = Field(
        default_factory=list,
        description="Source video(s): ids from POST /v1/files (or files uploaded with the job).",
        max_length=MAX_MEDIA,
    )
    image: str | None = Field(None, description="Source or reference image: an id from POST /v1/files.")
    images: list[str] = Field(
        default_factory=list, description="Reference images: ids from POST /v1/files.", max_length=MAX_MEDIA
    )
    seed: int = Field(_DEFAULTS.seed, description="Noise seed (0 ≤ seed < 2**63).")
    num_frames: int = Field(
        _DEFAULTS.num_frames, description="Frames to generate; snapped to 4k+1 (1 for images).", le=MAX_FRAMES
    )
    num_inference_steps: int = Field(_DEFAULTS.num_inference_steps, description="Denoising steps.", le=MAX_STEPS)
    flow_shift: float = Field(_DEFAULTS.flow_shift, description="Scheduler shift.")
    omega_vid: float = Field(_DEFAULTS.omega_vid, description="Guidance weight of the source video.")
    omega_img: float = Field(_DEFAULTS.omega_img, description="Guidance weight of the reference images.")
    omega_txt: float = Field(_DEFAULTS.omega_txt, description="Guidance weight of the text.")
    omega_scale: float = Field(_DEFAULTS.omega_scale, description="One-time scale of the weights at the expert switch.")
    omega_tgt: float = Field(
        _DEFAULTS.omega_tgt, description="Full model: guidance weight of the plan's target tokens."
    )
    planning_step: int = Field(_DEFAULTS.planning_step, description="Full model: masked-planning rounds.", le=MAX_STEPS)
    vit_txt_cfg: float = Field(_DEFAULTS.vit_txt_cfg, description="Full model: planner guidance toward the sources.")
    vit_img_cfg: float | None = Field(
        _DEFAULTS.vit_img_cfg, description="Full model: planner guidance toward the text."
    )
    vit_denoising_step: int = Field(
        _DEFAULTS.vit_denoising_step, description="Full model: ViT-decoder flow steps.", le=MAX_STEPS
    )
    eta: float = Field(_DEFAULTS.eta, description="APG: weight of the parallel component.")
    norm_threshold: list[float] = Field(
        default_factory=lambda: list(_DEFAULTS.norm_threshold),
        description="APG: norm thresholds per guidance delta.",
        max_length=8,
    )
    momentum: float = Field(_DEFAULTS.momentum, description="APG: momentum.")
    fps: float = Field(
        _DEFAULTS.fps, description="Frame rate media are resampled to and the output is written at.", le=MAX_FPS
    )
    video_fps: float | None = Field(None, description="Override the source video's own frame rate.", le=MAX_FPS)
    max_image_size: int = Field(
        _DEFAULTS.max_image_size, description="Longest side of the inputs after resizing.", le=MAX_SIDE
    )
    height: int = Field(
        _DEFAULTS.height, description="Output height in pixels (a source video's geometry wins).", le=MAX_SIDE
    )
    width: int = Field(
        _DEFAULTS.width, description="Output width in pixels (a source video's geometry wins).", le=MAX_SIDE
    )
    neg_prompt: str = Field(WAN_NEGATIVE_PROMPT, description="Negative prompt (default: Wan's).", max_length=MAX_TEXT)
    system_prompt: str = Field("", description="T5 prefix; default: the task's.", max_length=MAX_TEXT)
    use_unipc: bool | None = Field(None, description="UniPC (true) or flow-match Euler (false); default: the model's.")
    use_src_tgt_id: bool | None = Field(None, description="Segment-aware source-id RoPE phase; default: the model's.")
    interpolate_src_id: bool | None = Field(None, description="Fractional source ids; default: the model's.")
    max_trained_src_id: int | None = Field(
        None, description="Most source ids seen in training; default: the model's.", le=64
    )
    use_pe: bool = Field(False, description="Rewrite the prompt with the server's prompt enhancer first.")
    pe_model: str | None = Field(None, description="Prompt-enhancer model (default: the server's).")
    preset: str | None = Field(None, description="Sampling preset, e.g. lightning4 (with a distillation LoRA).")
    cache: str | None = Field(None, description="Step cache: firstblock, teacache or magcache; default: off.")
    cache_threshold: float | None = Field(None, description="Step-cache threshold; default: the cache's own.")
    batch_branches: bool = Field(False, description="Run guidance branches of equal length as one batched forward.")


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
    """The generation parameters of ``body`` (everything but the media ids) as stored with the job, and which of
    them the client set (``given``: a full model's shipped settings fill only the others)."""
    media = {"video", "image", "images"}
    return {**body.model_dump(exclude=media), "given": sorted(body.model_fields_set - media)}
