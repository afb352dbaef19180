"""Checks every media file passes before it is decoded, and the one-line reason a decoder failed."""

from __future__ import annotations

from pathlib import Path

from bernini.errors import MediaError


def check_file(path: Path, kind: str) -> None:
    if not path.exists():
        raise MediaError(f"{kind} file not found: {path}; check the path")
    if path.is_dir():
        raise MediaError(f"{kind} path is a directory, not a file: {path}; give the {kind} file itself")
    if path.stat().st_size == 0:
        raise MediaError(f"{kind} file is empty (0 bytes): {path}; re-export or re-download it")


def failure_reason(exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "strerror", None) or exc).split())
    return text or type(exc).__name__
