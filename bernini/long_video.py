"""Resolution of the long-video settings: ``--window_frames`` / ``--window_overlap`` (context windows) and
``--extend`` (continuing a clip); see docs/long_video.md."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from .adjustments import Adjustment, changed
from .checks import as_int
from .errors import BerniniError
from .request import GenerationRequest
from .resolved import ExtendSettings, MediaInputs, WindowSettings
from .settings import Layer, Merged

EXTEND_OVERLAP = 16
"""Pixel frames an extension shares with its clip, less one, without windows: ``--extend`` keeps the clip's last 17
frames (5 latent frames, about a second at 16 fps); with ``--window_frames`` it keeps ``--window_overlap`` + 1 (at
least 5)."""


def resolve_extend(
    request: GenerationRequest,
    task: str,
    version: str | None,
    media: MediaInputs,
    frames: int,
    fps_given: bool,
    keep: int,
) -> tuple[ExtendSettings, MediaInputs, list[Adjustment]]:
    """``--extend``: t2v on Bernini-R; the clip opens and is long enough; ``num_frames`` counts the new frames (a
    multiple of 4); the clip's frame rate is the run's unless ``--fps`` is given."""
    from .io.media import clip_header

    clip = request.extend
    if task != "t2v":
        raise BerniniError(
            f"--extend continues a clip from a prompt (t2v), not {task}; drop --task_type and the source media"
        )
    if version is not None:
        raise BerniniError("--extend runs on Bernini-R; the full model's planner does not read the clip")
    if isinstance(clip, (str, Path)):
        path = Path(clip).expanduser()
        if not path.is_file():
            raise BerniniError(f"extend clip {path} {'is not a file' if path.exists() else 'not found'}")
    total, native_fps = clip_header(clip)
    if total < keep:
        raise BerniniError(
            f"the clip to extend has {total} frame(s); --extend keeps its last {keep} as the start of the run: "
            "give a longer clip"
        )
    new = frames // 4 * 4
    if new < 4:
        raise BerniniError(f"with --extend, --num_frames counts the new frames: at least 4, got {frames}")
    why = f"new frames come in multiples of 4 (the {keep} kept frames and the new ones make the 4k+1 the VAE takes)"
    adjustments = changed("num_frames", frames, new, why)
    if native_fps is not None and not fps_given and not math.isclose(native_fps, media.fps, rel_tol=1e-6):
        adjustments += changed("fps", media.fps, native_fps, "the continuation runs at the clip's frame rate")
        media = replace(media, fps=native_fps)
    return ExtendSettings(clip, keep, new), media, adjustments


def checked_window_frames(value: object) -> int:
    """``--window_frames`` as the latent grid takes it: 4k+1 pixel frames, at least 5 (one-line error otherwise)."""
    frames = as_int("window_frames", value)
    if frames < 5 or (frames - 1) % 4:
        raise BerniniError(f"window_frames must be 4k+1 and at least 5 (e.g. 81), got {frames}")
    return frames


def resolve_windows(request: GenerationRequest, merged: Merged) -> tuple[WindowSettings | None, list[Adjustment]]:
    """``--window_frames`` / ``--window_overlap`` checked (pixel frames; the latent grid takes 4k+1 and 4k). The
    default overlap shrinks to half a short window (with a note); an overlap given that leaves no advance is refused."""
    overlap = as_int("window_overlap", request.window_overlap)
    overlap_set = merged.layer("window_overlap") in (Layer.CASE, Layer.USER)
    if request.window_frames is None:
        if overlap_set and overlap != GenerationRequest.builtin()["window_overlap"]:
            raise BerniniError("--window_overlap needs --window_frames (e.g. --window_frames 81)")
        return None, []
    frames = checked_window_frames(request.window_frames)
    if overlap < 0 or overlap % 4:
        raise BerniniError(f"window_overlap must be a multiple of 4 (e.g. 16), got {overlap}")
    adjustments: list[Adjustment] = []
    if overlap >= frames - 1 and not overlap_set:
        half = (frames - 1) // 2 // 4 * 4
        why = f"the default overlap is at most half of a {frames}-frame window"
        adjustments, overlap = changed("window_overlap", overlap, half, why), half
    if overlap >= frames - 1:
        raise BerniniError(
            f"window_overlap must be smaller than window_frames - 1 = {frames - 1} so windows advance, got {overlap}"
        )
    return WindowSettings(frames, overlap), adjustments
