"""Reading request bodies: JSON, multipart forms, and uploads stored after their size and type checks."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .service import ApiError, Service
from .store import FileRow
from .uploads import check_kind, read_limited

MEDIA_SLOTS = {"video": "video", "image": "image", "images": "image", "extend": "video"}


async def read_json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {getattr(exc, 'msg', exc)}") from None


async def read_form(request: Request, max_files: int) -> Any:
    try:
        return await request.form(max_files=max_files, max_fields=64, max_part_size=1 << 20)
    except StarletteHTTPException as exc:
        if exc.status_code == 413:  # the body limit, raised while the form arrived
            raise
        raise ApiError(400, f"bad multipart body: {exc.detail}") from None


async def store_upload(service: Service, upload: UploadFile, want: str | None) -> FileRow:
    name = (upload.filename or "file").replace("\n", " ")[:255]
    data = await read_limited(upload, service.config.max_upload_bytes)
    sniffed = check_kind(data, repr(name[:80]), want)
    return await run_in_threadpool(service.store.add_file, name, sniffed.kind, sniffed.suffix, data)


async def multipart_job(service: Service, request: Request) -> dict[str, Any]:
    """A multipart job: the ``request`` field (JSON) plus files in ``video`` / ``image`` / ``images``."""
    form = await read_form(request, service.config.max_files)
    text = form.get("request")
    if not isinstance(text, str):
        raise ApiError(400, "a multipart job needs the field 'request' holding the job as JSON")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the 'request' field is not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "the 'request' field must hold a JSON object")
    unknown = sorted(set(form.keys()) - {"request", *MEDIA_SLOTS})
    if unknown:
        use = "request, video, image, images, extend"
        raise ApiError(400, f"unknown multipart field(s) {', '.join(unknown)}; use {use}")
    for slot, kind in MEDIA_SLOTS.items():
        uploads = form.getlist(slot)
        if not uploads:
            continue
        if not all(isinstance(u, UploadFile) for u in uploads):
            raise ApiError(400, f"multipart field {slot!r} must hold files")
        if slot in ("image", "extend") and len(uploads) > 1:
            more = "; put further reference images in 'images'" if slot == "image" else ""
            raise ApiError(400, f"one file in {slot!r}{more}")
        ids = [(await store_upload(service, u, kind)).id for u in uploads]
        if slot in ("image", "extend"):
            data[slot] = ids[0]
        else:
            data[slot] = [*(data.get(slot) or []), *ids]
    return data
