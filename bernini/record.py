"""The run record: what a sidecar holds to reproduce a generation and explain what ran."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._version import __version__
from .adjustments import Adjustment
from .resolved import ResolvedRequest
from .sampling.guidance import Combo


class Timings(dict):
    """Phase durations in seconds, keyed ``<phase>_s``, plus ``total_s`` since creation."""

    def __init__(self) -> None:
        super().__init__()
        self.start = time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        tick = time.perf_counter()
        try:
            yield
        finally:
            self[f"{name}_s"] = time.perf_counter() - tick

    def finish(self) -> dict[str, float]:
        self["total_s"] = time.perf_counter() - self.start
        return dict(self)


@dataclass
class RunFacts:
    """What the stages found out while running one plan."""

    frames: int
    height: int
    width: int
    latent_shape: list[int]
    source_ids: dict[Combo, list[float]]
    forwards: int
    high_noise_steps: int
    low_noise_steps: int
    timesteps: list[int]
    boundary_timestep: float | None
    scheduler: str
    interrupted: bool = False
    enhancement: dict[str, Any] = field(default_factory=dict)
    skipped_forwards: int = 0
    batched_forwards: int = 0
    adjustments: list[Adjustment] = field(default_factory=list)
    planning: dict[str, Any] | None = None  # the full model's planner: settings, reveal counts, context rows
    windows: dict[str, Any] | None = None  # the context windows (None: no --window_frames)
    extend: dict[str, Any] | None = None  # --extend: the clip (path, sha256, frames kept, new frames)


PathEntry = dict[str, str] | str | None
"""A path as given and as absolute (``{"given", "absolute"}``), an in-memory medium's description, or none."""


@dataclass
class RunPaths:
    """Every path of a run as given and absolute, so a replay works from any working directory. Read back from a
    sidecar, a key it lacks stays None."""

    output: PathEntry = None
    video: list[PathEntry] | None = None
    image: PathEntry = None
    images: list[PathEntry] | None = None
    model: PathEntry = None
    checkpoints: dict[str, PathEntry] | None = None
    extend: PathEntry = None  # --extend's clip

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunPaths:
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


@dataclass
class RunRecord:
    """The sidecar: what reproduces a generation and explains what ran. The pipeline fills the run's part
    (:func:`run_record`; ``BerniniOutput.parameters`` is its JSON), the job adds the written output and its paths
    and the front end its ``context`` (command line, parallel layout, the demo's settings…), and ``--replay`` reads
    it back. :meth:`to_json` writes the keys in the file's order, leaving out those not set; :meth:`from_json`
    takes older sidecars, which lack the later keys (they stay None)."""

    bernini_version: str | None = None
    model: dict[str, Any] | None = None
    device: str | None = None
    dtype: str | None = None
    attention_backend: str | None = None
    request: dict[str, Any] | None = None
    resolved: dict[str, Any] | None = None
    prompt_enhancer: dict[str, Any] | None = None
    adjustments: list[dict[str, Any]] | None = None
    timings: dict[str, float] | None = None
    output: str | None = None
    fps: float | None = None
    created: str | None = None
    versions: dict[str, str | None] | None = None
    paths: RunPaths | None = None
    context: dict[str, Any] = field(default_factory=dict)  # the front end's keys, written at the top level
    frames_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "context":
                data.update(value)
            elif value is not None:
                data[item.name] = value.to_json() if isinstance(value, RunPaths) else value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        names = {item.name for item in fields(cls)} - {"context"}
        values = {name: data[name] for name in names if name in data}
        if isinstance(values.get("paths"), dict):
            values["paths"] = RunPaths.from_json(values["paths"])
        else:
            values.pop("paths", None)
        context = {key: value for key, value in data.items() if key not in names}
        return cls(**values, context=context)


def run_record(
    resolved: ResolvedRequest,
    facts: RunFacts,
    *,
    model: dict[str, Any],
    device: str,
    dtype: str,
    attention: str,
    timings: dict[str, float],
) -> RunRecord:
    """The run's part of the sidecar (without the output, its paths and fps, which the job adds)."""
    ran = {
        "task_type": resolved.task.name,
        "guidance_mode": resolved.guidance.mode.name,
        "t5_text": resolved.t5_text,
        "negative_text": resolved.t5_negative_text,
        "frames": facts.frames,
        "height": facts.height,
        "width": facts.width,
        "latent_shape": list(facts.latent_shape),
        "source_ids": {combo.value: ids for combo, ids in facts.source_ids.items()},
        "branches": [[branch.combo.value, branch.text.value] for branch in resolved.guidance.mode.branches],
        "forwards": facts.forwards,
        "skipped_forwards": facts.skipped_forwards,
        "batched_forwards": facts.batched_forwards,
        "preset": resolved.preset,
        "cache": resolved.cache.record() if resolved.cache else None,
        "high_noise_steps": facts.high_noise_steps,
        "low_noise_steps": facts.low_noise_steps,
        "timesteps": facts.timesteps,
        "boundary_timestep": facts.boundary_timestep,
        "scheduler": facts.scheduler,
        "flow_shift": resolved.scheduler.flow_shift,
        "seed": resolved.seed,
    }
    if facts.interrupted:
        ran["interrupted"] = True
    if facts.windows is not None:
        ran["windows"] = facts.windows
    if facts.planning is not None:
        ran["planner"] = {"version": resolved.planner.version, **facts.planning}
    if facts.extend is not None:
        ran["extend"] = facts.extend
    return RunRecord(
        bernini_version=__version__,
        model=model,
        device=device,
        dtype=dtype,
        attention_backend=attention,
        request=resolved.request_record(),
        resolved=ran,
        prompt_enhancer=facts.enhancement,
        adjustments=[a.record() for a in facts.adjustments],
        timings=timings,
    )


VERSIONED = ("torch", "diffusers", "transformers", "numpy", "av", "safetensors", "openai")


def library_versions() -> dict[str, str | None]:
    """The versions that decide the numbers (None: not installed)."""
    versions: dict[str, str | None] = {"bernini": __version__, "python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def path_pair(value: object) -> dict[str, str] | str | None:
    """A path as given and as absolute (in-memory media keep their description)."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        given = os.fspath(value)
        if given.startswith("<"):  # describe_media's in-memory description
            return given
        return {"given": given, "absolute": str(Path(given).expanduser().absolute())}
    return str(value)


def run_paths(resolved: ResolvedRequest, written: Path, *, model: str | None, checkpoints: dict[str, str]) -> RunPaths:
    """Every path of a run as given and absolute, so a replay works from any working directory."""
    from .request import describe_media

    media = resolved.media
    local_model = model if model is not None and Path(model).expanduser().exists() else None
    return RunPaths(
        output={"given": resolved.output, "absolute": str(Path(written).absolute())},
        video=[path_pair(describe_media(v)) for v in media.video],
        image=path_pair(describe_media(media.image)) if media.image is not None else None,
        images=[path_pair(describe_media(v)) for v in media.images],
        extend=path_pair(describe_media(resolved.extend.clip)) if resolved.extend is not None else None,
        model=path_pair(local_model) if local_model else model,
        checkpoints={name: path_pair(path) for name, path in checkpoints.items()},
    )


def timestamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
