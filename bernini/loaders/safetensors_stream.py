"""Read safetensors files one tensor at a time, casting as we go.

``safetensors.safe_open`` memory-maps the whole file; every page it touches stays in the process RSS
until the file is closed, so loading a 57 GB fp32 expert as bf16 would still show the fp32 bytes.
Reading each tensor into a private buffer with ``readinto`` keeps only one fp32 tensor alive at a
time, and the header is validated against the file size so truncated files fail cleanly.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import WeightsError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class TensorEntry:
    path: Path
    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Entries of a safetensors file, checked against its size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            raw_len = handle.read(8)
            if len(raw_len) < 8:
                raise WeightsError(f"{path} is not a safetensors file (too short)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > min(size - 8, 100_000_000):
                raise WeightsError(f"{path} is not a safetensors file or is truncated (bad header length)")
            header = json.loads(handle.read(header_len))
    except WeightsError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path} is not a readable safetensors file ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path} has a malformed safetensors header")
    base = 8 + header_len
    entries: dict[str, TensorEntry] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{path} has a malformed header entry for {key!r}") from None
        if base + end > size:
            raise WeightsError(f"{path} is truncated: tensor {key!r} ends past the end of the file")
        entries[key] = TensorEntry(path, key, dtype, shape, base + start, base + end)
    return entries


def read_tensor(entry: TensorEntry, handle=None) -> torch.Tensor:
    """Load one tensor into a fresh CPU buffer."""
    nbytes = entry.end - entry.start
    buffer = bytearray(nbytes)
    own = handle is None
    handle = handle or open(entry.path, "rb")
    try:
        handle.seek(entry.start)
        if handle.readinto(buffer) != nbytes:
            raise WeightsError(f"{entry.path} is truncated while reading {entry.key!r}")
    finally:
        if own:
            handle.close()
    if nbytes == 0:
        return torch.empty(entry.shape, dtype=entry.dtype)
    return torch.frombuffer(buffer, dtype=entry.dtype).reshape(entry.shape)


def iter_tensors(entries: list[TensorEntry]) -> Iterator[tuple[TensorEntry, torch.Tensor]]:
    """Yield entries with their tensors, file by file in offset order (sequential reads)."""
    by_file: dict[Path, list[TensorEntry]] = {}
    for entry in entries:
        by_file.setdefault(entry.path, []).append(entry)
    for path, file_entries in by_file.items():
        with open(path, "rb", buffering=0) as handle:
            try:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except (AttributeError, OSError):
                pass
            for entry in sorted(file_entries, key=lambda e: e.start):
                yield entry, read_tensor(entry, handle)
