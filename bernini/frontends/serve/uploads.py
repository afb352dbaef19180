"""Upload checks: a size limit read as the bytes arrive, and the file type told by its first bytes.

The name and Content-Type a client sends are not trusted; only the signature decides whether a file
is a video or an image, and the stored suffix comes from it (the server never uses a client's path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CHUNK = 1 << 20


class UploadRejected(Exception):
    """An upload refused with an HTTP status (413 too large, 415 wrong type, 400 empty)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Sniffed:
    kind: str  # "video" | "image"
    suffix: str


def sniff(head: bytes) -> Sniffed | None:
    """The kind and suffix of a file from its first bytes; None when it is no supported media."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("image", ".png")
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("image", ".jpg")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Sniffed("image", ".webp")
    if head.startswith(b"BM") and len(head) > 14:
        return Sniffed("image", ".bmp")
    if head[4:8] == b"ftyp":
        return Sniffed("video", ".mov" if head[8:10] == b"qt" else ".mp4")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Sniffed("video", ".webm" if b"webm" in head[:64] else ".mkv")
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return Sniffed("video", ".avi")
    return None


async def read_limited(upload: Any, limit: int) -> bytes:
    """All bytes of a Starlette ``UploadFile``, refusing more than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await upload.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise UploadRejected(413, f"upload {display_name(upload)} is too large: more than {limit} bytes")
        chunks.append(chunk)
    if not size:
        raise UploadRejected(400, f"upload {display_name(upload)} is empty")
    return b"".join(chunks)


def check_kind(data: bytes, name: str, want: str | None) -> Sniffed:
    """The sniffed type, which must be ``want`` (video / image) when given."""
    found = sniff(data[:64])
    if found is None:
        raise UploadRejected(
            415, f"upload {name} is not a supported video (mp4, mov, webm, mkv, avi) or image (png, jpeg, webp, bmp)"
        )
    if want is not None and found.kind != want:
        raise UploadRejected(
            415, f"upload {name} is {'a' if found.kind == 'video' else 'an'} {found.kind}; {want} expected here"
        )
    return found


def display_name(upload: Any) -> str:
    name = getattr(upload, "filename", None) or "file"
    return repr(name.replace("\n", " ")[:80])
