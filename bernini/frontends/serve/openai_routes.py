"""OpenAI-style video routes, so the ``openai`` package's ``client.videos`` drives the service.

``POST /v1/videos`` (text to video; an ``input_reference`` image makes it subject-to-video),
``POST /v1/videos/edits`` (video editing of an uploaded video or of a finished video by id),
``POST /v1/videos/extensions`` (continuing an uploaded or finished video: the video, then the new frames),
``GET /v1/videos``, ``GET /v1/videos/{id}``, ``GET /v1/videos/{id}/content`` and ``DELETE``.
``size`` "WxH" sets width and height, ``seconds`` × the model's fps sets the frame count (snapped to
4k+1; ``num_frames`` may be sent instead), ``model`` must be an id from ``/v1/models``; any other
generation field of a job (for example ``num_inference_steps``) may be sent as an extra form field; the
rest take their defaults. An edit without ``seconds`` or ``num_frames`` renders the job default's frame
count (fewer when the source is shorter). A video's ``size`` and ``seconds`` are what was asked until it
is completed, then what its file holds. A deleted video is gone: ``404`` and no longer listed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from .bodies import read_form, read_json, store_upload
from .schemas import MAX_FRAMES, MAX_SIDE, JobCreate, VideoDeleted, VideoError, VideoView
from .service import ApiError, Service
from .store import JobRow

STATUS = {"queued": "queued", "running": "in_progress", "succeeded": "completed"}
DEFAULT_SECONDS = "4"


def frames_for(seconds: float, fps: float) -> int:
    """The 4k+1 frame count nearest to ``seconds`` × ``fps`` (at least 5)."""
    wanted = max(seconds * fps, 5.0)
    return max(1, round((wanted - 1) / 4)) * 4 + 1


def new_frames_for(seconds: float, fps: float) -> int:
    """An extension's new frames: the multiple of 4 nearest to ``seconds`` × ``fps`` (at least 4)."""
    return max(1, round(seconds * fps / 4)) * 4


def parse_size(size: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*", size)
    if not match:
        raise ApiError(400, f"size must be WIDTHxHEIGHT such as 848x480, got {size[:40]!r}")
    width, height = int(match[1]), int(match[2])
    if max(width, height) > MAX_SIDE:
        raise ApiError(400, f"size {width}x{height} is too large: at most {MAX_SIDE} pixels a side")
    return width, height


def parse_seconds(seconds: str) -> float:
    try:
        value = float(seconds)
    except ValueError:
        value = float("nan")
    if not value > 0 or value > 600:
        raise ApiError(400, f"seconds must be a positive number of seconds (at most 600), got {seconds[:40]!r}")
    return value


def video_view(row: JobRow, model_id: str) -> VideoView:
    params, meta = row.loads("params"), row.loads("meta")
    status = STATUS.get(row.state, "failed")
    error = None
    if status == "failed":
        error = VideoError(code=row.state if row.state == "cancelled" else "generation_failed", message=row.error or "")
    progress = 100 if row.state == "succeeded" else int(100 * row.step / row.total) if row.total else 0
    # what the job asks for: its request as resolved at submit (a job's params hold only the fields the client set;
    # a job queued before jobs stored it has every field in its params)
    resolved = json.loads(row.resolved) if row.resolved else {}
    geometry, fps = resolved.get("geometry", params), (resolved.get("media") or params).get("fps", 16.0)
    asked_frames = geometry.get("frames", params.get("num_frames", 0))
    seconds = meta.get("seconds") or f"{asked_frames / max(fps, 1e-9):g}"
    size = meta.get("size") or f"{geometry.get('width')}x{geometry.get('height')}"
    done = meta.get("rendered") or {}
    if all(done.get(k) for k in ("frames", "width", "height", "fps")):  # what the file holds
        seconds = f"{round(done['frames'] / done['fps'], 3):g}"
        size = f"{done['width']}x{done['height']}"
    return VideoView(
        id=row.id,
        created_at=int(row.created_at),
        completed_at=int(row.finished_at) if row.finished_at else None,
        error=error,
        model=meta.get("model") or model_id,
        progress=progress,
        prompt=row.prompt,
        remixed_from_video_id=meta.get("remixed_from_video_id"),
        seconds=str(seconds),
        size=size,
        status=status,
    )


async def read_fields(request: Request, max_files: int) -> dict[str, Any]:
    """The SDK's body: a form (files and ``key[sub]`` fields, folded into dicts) or JSON."""
    if request.headers.get("content-type", "").startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await read_form(request, max_files)
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            outer, _, inner = key.partition("[")
            if inner:
                fields.setdefault(outer, {})
                if isinstance(fields[outer], dict):
                    fields[outer][inner.rstrip("]")] = value
            else:
                fields[key] = value
        return fields
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ApiError(422, "the body must be a JSON object")
    return data


def video_router(service: Service) -> APIRouter:
    config = service.config
    router = APIRouter(tags=["openai videos"])
    fps = JobCreate.model_fields["fps"].default

    def body_for(
        fields: dict[str, Any],
        media: dict[str, Any],
        task_type: str,
        default_seconds: str | None = DEFAULT_SECONDS,
        frames: Callable[[float, float], int] = frames_for,
    ) -> tuple[JobCreate, dict[str, Any]]:
        model = fields.pop("model", None)
        if model not in (None, "", config.model_id):
            raise ApiError(400, f"unknown model {str(model)[:80]!r}; GET /v1/models lists: {config.model_id}")
        seconds = fields.pop("seconds", None)
        if seconds not in (None, "") and fields.get("num_frames") not in (None, ""):
            raise ApiError(400, "give seconds or num_frames, not both")
        if seconds in (None, "") and fields.get("num_frames") in (None, ""):
            seconds = default_seconds
        size = fields.pop("size", None)
        data: dict[str, Any] = {**fields, **media, "task_type": task_type}
        data["fps"] = data.get("fps", fps)
        if size is not None:
            data["width"], data["height"] = parse_size(str(size))
        try:
            frame_rate = float(data["fps"])
        except (TypeError, ValueError):
            raise ApiError(400, f"fps must be a number, got {str(data['fps'])[:40]!r}") from None
        if seconds not in (None, ""):
            data["num_frames"] = frames(parse_seconds(str(seconds)), frame_rate)
            if data["num_frames"] > MAX_FRAMES:
                raise ApiError(
                    400, f"seconds={str(seconds)[:20]} gives {data['num_frames']} frames; at most {MAX_FRAMES} here"
                )
        body = service.parse_body(data)
        if seconds in (None, ""):  # num_frames given (or an edit's default): report what it asks for
            seconds = f"{round(body.num_frames / max(body.fps, 1e-9), 3):g}"
        meta = {"model": config.model_id, "seconds": str(seconds), "size": str(size) if size is not None else None}
        return body, meta

    def extra_fields(fields: dict[str, Any]) -> dict[str, Any]:
        unknown = [k for k in fields if k not in JobCreate.model_fields and k not in ("model", "seconds", "size")]
        if unknown:
            raise ApiError(400, f"unknown field(s) {', '.join(sorted(unknown))}")
        for key in ("norm_threshold",):
            if isinstance(fields.get(key), str):
                try:
                    fields[key] = json.loads(fields[key])
                except json.JSONDecodeError:
                    raise ApiError(400, f"{key} must be a JSON list of numbers") from None
        return fields

    @router.post("/videos", response_model=VideoView)
    async def create_video(
        request: Request, idempotency_key: Annotated[str | None, Header(max_length=255)] = None
    ) -> VideoView:
        """Text to video; an ``input_reference`` image (upload or ``{"file_id"}``) makes it subject-to-video."""
        fields = await read_fields(request, config.max_files)
        reference = fields.pop("input_reference", None)
        media: dict[str, Any] = {}
        if isinstance(reference, UploadFile):
            media["images"] = [(await store_upload(service, reference, "image")).id]
        elif isinstance(reference, dict) and reference.get("file_id"):
            media["images"] = [str(reference["file_id"])]
        elif reference is not None:
            raise ApiError(400, "input_reference must be an uploaded image or {'file_id': ...} (URLs are not fetched)")
        body, meta = body_for(extra_fields(fields), media, "r2v" if media else "t2v")
        row, _ = await run_in_threadpool(service.submit, body, idempotency_key, meta)
        return video_view(row, config.model_id)

    async def source_video(fields: dict[str, Any]) -> tuple[str, str | None]:
        """The ``video`` field: an upload, or ``{"id": ...}`` of a finished video (stored as an upload); its file id
        and the finished video's id."""
        source = fields.pop("video", None)
        if isinstance(source, UploadFile):
            return (await store_upload(service, source, "video")).id, None
        if isinstance(source, dict) and source.get("id"):
            video_id = str(source["id"])
            done = await run_in_threadpool(service.finished_output, video_id)
            if (done.output_name or "").endswith(".png"):
                raise ApiError(400, f"{video_id} is an image, not a video")
            data = await run_in_threadpool(Path(done.output_path or "").read_bytes)
            stored = await run_in_threadpool(service.store.add_file, f"{done.id}.mp4", "video", ".mp4", data)
            return stored.id, video_id
        raise ApiError(400, "video must be an uploaded video or {'id': ...} of a completed video")

    @router.post("/videos/extensions", response_model=VideoView)
    async def extend_video(
        request: Request, idempotency_key: Annotated[str | None, Header(max_length=255)] = None
    ) -> VideoView:
        """Continue a video (``--extend``): ``video`` is an uploaded video or ``{"id": ...}`` of a finished one,
        ``prompt`` describes what happens next, ``seconds`` (or ``num_frames``) the new part; the result is the
        whole video followed by the new frames. Its size comes from the video (``size`` is refused)."""
        fields = await read_fields(request, config.max_files)
        if fields.get("size") not in (None, ""):
            raise ApiError(400, "an extension keeps the video's size; drop size")
        fields.pop("size", None)
        file_id, meta_source = await source_video(fields)
        body, meta = body_for(extra_fields(fields), {"extend": file_id}, "t2v", frames=new_frames_for)
        meta["remixed_from_video_id"] = meta_source
        row, _ = await run_in_threadpool(service.submit, body, idempotency_key, meta)
        return video_view(row, config.model_id)

    @router.post("/videos/edits", response_model=VideoView)
    async def edit_video(
        request: Request, idempotency_key: Annotated[str | None, Header(max_length=255)] = None
    ) -> VideoView:
        """Video editing (v2v): ``video`` is an uploaded video or ``{"id": ...}`` of a finished video."""
        fields = await read_fields(request, config.max_files)
        file_id, meta_source = await source_video(fields)
        fields.setdefault("size", None)
        if fields["size"] is None:
            fields.pop("size")
        body, meta = body_for(extra_fields(fields), {"video": [file_id]}, "v2v", default_seconds=None)
        meta["remixed_from_video_id"] = meta_source
        row, _ = await run_in_threadpool(service.submit, body, idempotency_key, meta)
        return video_view(row, config.model_id)

    @router.get("/videos", response_model=dict)
    def list_videos(
        limit: Annotated[int, Query(ge=1, le=100)] = 20, after: Annotated[str | None, Query(max_length=64)] = None
    ) -> dict[str, Any]:
        try:
            rows, more = service.store.list_jobs(limit, after)
        except KeyError:
            raise ApiError(400, f"after={after!r} names no video") from None
        data = [video_view(r, config.model_id).model_dump() for r in rows]
        return {
            "object": "list",
            "data": data,
            "has_more": more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    @router.get("/videos/{video_id}", response_model=VideoView)
    def get_video(video_id: str) -> VideoView:
        return video_view(service.job(video_id), config.model_id)

    @router.get("/videos/{video_id}/content", response_class=Response)
    def video_content(video_id: str, variant: Annotated[str, Query()] = "video") -> Response:
        if variant != "video":
            raise ApiError(400, f"variant {variant[:40]!r} is not produced here; use variant=video")
        row = service.finished_output(video_id)
        media_type = "image/png" if (row.output_name or "").endswith(".png") else "video/mp4"
        return FileResponse(row.output_path or "", media_type=media_type)

    @router.delete("/videos/{video_id}", response_model=VideoDeleted)
    def delete_video(video_id: str) -> VideoDeleted:
        """Removes the video: it is no longer listed or found, and a running one stops at its next step."""
        service.delete(video_id)
        return VideoDeleted(id=video_id, deleted=True)

    return router
