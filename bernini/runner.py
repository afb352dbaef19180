"""Jobs: run one request through the pipeline and write its outputs (file, sidecar, frames).

Shared by the command line, the upstream-compatible scripts, the demo and the data-parallel driver.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BerniniError
from .output import sidecar_path, to_uint8_frames, write_frames, write_output, write_sidecar
from .request import GenerationRequest, validate

logger = logging.getLogger(__name__)
Log = Callable[[str], None]


@dataclass
class JobResult:
    output: Path | None
    sidecar: Path | None
    prompt: str
    parameters: dict[str, Any] = field(default_factory=dict)
    frames: np.ndarray | None = None


def make_enhancer(
    pe_model: str | None, log: Log | None = None, share: Callable[[tuple[str, dict]], tuple[str, dict]] | None = None
):
    """An ``enhance`` hook for :meth:`BerniniPipeline.generate` using the OpenAI-compatible endpoint.

    ``share`` lets a sequence-parallel group call the endpoint once and broadcast the result.
    """
    from .enhancer import EnhancerConfig, enhance_prompt

    config = EnhancerConfig.from_env(pe_model)

    def enhance(request: GenerationRequest, previews: list[np.ndarray]) -> tuple[str, dict[str, Any]]:
        def call() -> tuple[str, dict[str, Any]]:
            result = enhance_prompt(
                request.prompt,
                request.task_type,
                config,
                videos=previews,
                image=request.image,
                images=request.images,
                log=log,
            )
            if result.warning and log is not None:
                log(f"warning: {result.warning}")
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
    request: GenerationRequest,
    *,
    save_frames: str | Path | None = None,
    use_pe: bool = False,
    pe_model: str | None = None,
    write: bool = True,
    log: Log | None = None,
    share: Callable | None = None,
    extra_record: dict[str, Any] | None = None,
    callback: Callable[..., Any] | None = None,
) -> JobResult:
    """Generate ``request`` and write the output, its sidecar and optionally every frame.

    With ``write=False`` (the non-writing ranks of a parallel group) the job stops at the latents: no
    VAE decode, no files, ``frames`` is None.
    """
    request = validate(request)
    if not request.output:
        raise BerniniError("no output path given; pass --output PATH")
    enhance = make_enhancer(pe_model or request.pe_model, log, share) if (use_pe or request.use_pe) else None
    result = pipe.generate(request, enhance=enhance, callback=callback, output_type="np" if write else "latent")
    prompt = result.parameters["request"]["prompt"]
    if enhance is not None and log is not None:
        log(f"prompt used: {prompt}")
    if not write:
        return JobResult(None, None, prompt, result.parameters, None)
    frames = to_uint8_frames(result.frames)
    written = write_output(request.output, frames, request.fps)
    record = dict(result.parameters)
    record["output"] = str(written)
    record["fps"] = request.fps
    if extra_record:
        record.update(extra_record)
    if save_frames:
        record["frames_dir"] = str(save_frames)
        write_frames(save_frames, frames)
    sidecar = write_sidecar(written, record)
    return JobResult(written, sidecar, prompt, record, frames)


def existing_output(output: str | Path) -> Path | None:
    """The finished output for ``--skip_existing``: the file and its sidecar must both exist."""
    path = Path(output)
    candidates = [path, path.with_suffix(".png"), path.with_suffix(".mp4")]
    for candidate in candidates:
        if candidate.is_file() and sidecar_path(candidate).is_file():
            return candidate
    return None
