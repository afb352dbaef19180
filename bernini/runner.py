"""Jobs and task lists: one plan → output file + sidecar, and a list of them with failures isolated.

Every front end (the ``bernini`` command, the torchrun worker, the demo, the service) runs its work
through :func:`run_job`, and lists through :class:`TaskListRunner`, which reports each task, goes on past
a bad one and ends with one summary. A parallel group plugs in its agreement step, so all its ranks take
the same branch for every task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .adjustments import Adjustment
from .errors import BerniniError
from .io.output import output_path, sidecar_path, to_uint8_frames, write_frames, write_output, write_sidecar
from .record import RunRecord, library_versions, run_paths, timestamp
from .request import GenerationRequest
from .resolve import resolve_request
from .resolved import ModelDefaults, ResolvedRequest

Log = Callable[[str], None]
Task = ResolvedRequest | BerniniError  # a task that could not be planned keeps its error in its slot
Share = Callable[[Callable[[], Any]], Any]


@dataclass
class JobResult:
    output: Path | None
    sidecar: Path | None
    prompt: str
    parameters: dict[str, Any] = field(default_factory=dict)
    frames: np.ndarray | None = None


def resolve_tasks(requests: Iterable[GenerationRequest | BerniniError], defaults: ModelDefaults | None) -> list[Task]:
    """Plan every request and probe its media files (first frame only), before any model loads.

    A bad task keeps its one-line error in its slot, so the others still run.
    """
    from .io.media import probe_media

    tasks: list[Task] = []
    for request in requests:
        if isinstance(request, BerniniError):
            tasks.append(request)
            continue
        try:
            resolved = resolve_request(request, defaults)
            media = resolved.media
            for kind, items in (("video", media.video), ("image", [media.image, *media.images])):
                for item in items:
                    if item is not None:
                        probe_media(item, kind)
        except BerniniError as exc:
            tasks.append(exc)
            continue
        tasks.append(resolved)
    return tasks


@dataclass
class EnhancerBatch:
    """The prompt enhancer for one task list: its settings, and the first endpoint failure, after which the
    rest of the list skips the enhancer (with a note) instead of spending the time budget on every task."""

    config: Any
    failure: str | None = None


def make_enhancer(config, log: Log | None = None, share: Share | None = None, batch: EnhancerBatch | None = None):
    """An ``enhance`` hook for :meth:`BerniniPipeline.generate` calling the OpenAI-compatible endpoint.

    ``config`` is an :class:`~bernini.enhancer.EnhancerConfig` built by the front end (from its flags and
    environment); ``share`` lets a parallel group call the endpoint once and hand the result to all ranks.
    """
    from .enhancer import enhance_prompt

    batch = batch if batch is not None else EnhancerBatch(config)

    def enhance(resolved: ResolvedRequest, previews: list[np.ndarray]) -> tuple[str, dict[str, Any]]:
        def call() -> tuple[str, dict[str, Any]]:
            if batch.failure:
                if log is not None:
                    log(f"note: prompt enhancer skipped: the endpoint failed earlier in this batch ({batch.failure})")
                record = {"used": True, "enhanced": False, "original_prompt": resolved.prompt, "skipped": batch.failure}
                return resolved.prompt, record
            result = enhance_prompt(
                resolved.prompt,
                resolved.task.name,
                config,
                videos=previews,
                image=resolved.media.image,
                images=list(resolved.media.images),
                log=log,
            )
            if result.warning and log is not None:
                log(f"warning: {result.warning}")
            if result.endpoint_failed:
                batch.failure = result.warning or "prompt enhancer failed"
            record = {
                "used": True,
                "enhanced": result.enhanced,
                "model": result.model,
                "original_prompt": result.original,
                "enhanced_prompt": result.prompt if result.enhanced else None,
                "warning": result.warning,
                "attempts": result.attempts,
                "seconds": round(result.seconds, 3),
            }
            return result.prompt, record

        return share(call) if share is not None else call()

    return enhance


def run_job(
    pipe,
    resolved: ResolvedRequest,
    *,
    save_frames: str | Path | None = None,
    enhancer=None,
    write: bool = True,
    log: Log | None = None,
    share: Share | None = None,
    extra_record: dict[str, Any] | None = None,
    callback: Callable[..., Any] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> JobResult:
    """Generate ``plan`` and write the output, its sidecar and optionally every frame.

    ``enhancer`` is the front end's :class:`~bernini.enhancer.EnhancerConfig`, or an :class:`EnhancerBatch`
    shared by the tasks of a list; it is used when the plan asks for the prompt enhancer. With ``write=False``
    (the non-writing ranks of a parallel group) the job stops at the latents: no VAE decode, no files,
    ``frames`` is None. ``on_progress(phase, done, total)`` hears the pipeline's phases and ``write``.
    """
    if not resolved.output:
        raise BerniniError("no output path given; pass --output PATH")
    enhance = None
    if resolved.use_pe:
        if enhancer is None:
            raise BerniniError("this task asks for the prompt enhancer (use_pe) but none is configured here")
        batch = enhancer if isinstance(enhancer, EnhancerBatch) else EnhancerBatch(enhancer)
        config = batch.config
        if resolved.pe_model and resolved.pe_model != config.model:
            config = replace(config, model=resolved.pe_model)
        enhance = make_enhancer(config, log, share, batch)
    generate_kwargs = {"on_progress": on_progress} if on_progress is not None else {}
    result = pipe.generate(
        resolved, enhance=enhance, callback=callback, output_type="uint8" if write else "latent", **generate_kwargs
    )
    record = getattr(result, "record", None) or RunRecord.from_json(result.parameters)
    prompt = record.request["prompt"]
    if enhance is not None and log is not None:
        log(f"prompt used: {prompt}")
    if not write:
        return JobResult(None, None, prompt, result.parameters, None)
    report = on_progress or (lambda phase, done, total: None)
    report("write", 0, 1)
    frames = to_uint8_frames(result.frames)
    target, output_adjustments = output_path(resolved.output, len(frames))
    record = replace(record, adjustments=[*(record.adjustments or []), *(a.record() for a in output_adjustments)])
    if log is not None:
        for adjustment in record.adjustments:
            log(Adjustment(**adjustment).note())
    record.fps = resolved.media.fps
    record.created = timestamp()
    record.versions = library_versions()
    source = getattr(pipe, "source", None)
    record.paths = run_paths(
        resolved,
        target,
        model=getattr(source, "spec", None),
        checkpoints=dict(getattr(source, "separate_checkpoints", {}) or {}),
    )
    record.context = {**record.context, **(extra_record or {})}
    created: list[Path] = []
    try:  # all or nothing: a failed frame folder or sidecar takes this job's output with it
        written = write_output(target, frames, resolved.media.fps)
        created.append(written)
        record.output = str(written)
        if save_frames:
            record.frames_dir = str(save_frames)
            created += write_frames(save_frames, frames)
        sidecar = write_sidecar(written, record.to_json())
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    report("write", 1, 1)
    return JobResult(written, sidecar, prompt, record.to_json(), frames)


def final_output(resolved: ResolvedRequest) -> Path:
    """The file the plan's job writes (:func:`bernini.io.output.output_path`, as the job itself resolves it): the
    suffix fixed for one frame (image) or several, a directory given as ``DIR/output.<suffix>``."""
    if not resolved.output:
        raise BerniniError("no output path given; pass --output PATH")
    return output_path(resolved.output, 1 if resolved.geometry.frames == 1 else 2)[0]


def existing_output(resolved: ResolvedRequest) -> Path | None:
    """The finished output for ``--skip_existing``: the file the job writes and its sidecar both exist."""
    target = final_output(resolved)
    return target if target.is_file() and sidecar_path(target).is_file() else None


@dataclass(frozen=True)
class Hold:
    """Why a task does not run: ``error`` (it failed) or ``skip`` (its output exists)."""

    kind: str
    message: str


Job = Callable[[int, ResolvedRequest], "JobResult | None"]


def _no_agreement(hold: Hold | None) -> Hold | None:
    return hold


@dataclass
class TaskListRunner:
    """Runs tasks in order; a bad task is reported and the rest go on.

    ``agree`` turns this process's verdict on a task into the verdict of its whole group (identity for one
    process); ``reports`` says whether this process prints (a group's leader); ``checks_existing`` whether
    it looks for finished outputs (only the process that writes them).
    """

    job: Job
    log: Log
    skip_existing: bool = False
    agree: Callable[[Hold | None], Hold | None] = _no_agreement
    reports: bool = True
    checks_existing: bool = True

    def precheck(self, task: Task) -> Hold | None:
        if isinstance(task, BerniniError):
            return Hold("error", str(task))
        if not task.output:
            return Hold("error", "no output path given; pass --output PATH")
        if self.skip_existing and self.checks_existing and existing_output(task):
            return Hold("skip", f"{task.output} exists, skipped")
        return None

    def run(self, tasks: Sequence[Task], indices: Iterable[int] | None = None) -> dict[int, str]:
        """Run ``tasks`` (or those at ``indices``); returns the failure lines by task index."""
        total = len(tasks)
        failures: dict[int, str] = {}
        for index in range(total) if indices is None else indices:
            label = f"task {index + 1}/{total}"
            task = tasks[index]
            hold = self.agree(self.precheck(task))
            result = None
            if hold is None:
                try:
                    result = self.job(index, task)
                except BerniniError as exc:
                    hold = Hold("error", str(exc))
                hold = self.agree(hold)
            if not self.reports:
                continue
            if hold is None:
                if result is not None and result.output is not None:
                    self.log(f"{label}: wrote {result.output}")
            elif hold.kind == "skip":
                self.log(f"{label}: {hold.message}")
            else:
                failures[index] = f"{label}: {hold.message}"
                self.log(f"error: {label}: {hold.message}")
        return failures


def summarize(failures: dict[int, str], total: int, log: Log) -> int:
    """One summary for a list (or for any failure); the exit status of the whole run."""
    lines = [failures[index] for index in sorted(failures)]
    if total > 1:
        done = total - len(lines)
        log(f"summary: {done} of {total} task(s) succeeded" + (f", {len(lines)} failed:" if lines else ""))
        for line in lines:
            log(f"  {line}")
    return 1 if lines else 0
