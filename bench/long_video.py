"""Context windows against the naive baseline, measured on the tiny bundle: seam flicker and, for an edit, PSNR.

Two ways to make a clip longer than one window: context windows (``--window_frames``, blended at every step) and the
naive baseline, "cut into chunks, run each chunk independently, concatenate". For a t2v run and a v2v edit, each
with 3+ windows, it prints

* seam flicker: the mean absolute difference between neighbouring frames across the chunk boundaries, against the
  same mean inside the chunks, and their ratio (1: a boundary looks like any other frame step; the naive chunks,
  which never see each other, jump there);
* for the v2v edit, the PSNR of the output against the source video, a stand-in for "the regions the prompt should
  not change" (the tiny bundle's random weights follow no prompt, so the whole frame stands in for them).

The tiny bundle's weights are random: the numbers compare the two methods' structure (seams), not quality. Run:
``python bench/long_video.py`` (CPU, a few minutes; ``--bundle DIR`` for another bundle, ``--steps``, sizes).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np


def frame_steps(frames: np.ndarray) -> np.ndarray:
    """Mean |difference| between each frame and the next, in 0..255 units."""
    values = frames.astype(np.float64) * (255.0 if frames.dtype != np.uint8 else 1.0)
    return np.abs(np.diff(values, axis=0)).mean(axis=(1, 2, 3))


def seam_flicker(frames: np.ndarray, seams: list[int]) -> tuple[float, float]:
    """(mean frame step across the seams, mean frame step elsewhere); a seam ``s`` is the step from ``s-1`` to
    ``s``."""
    steps = frame_steps(frames)
    across = [s - 1 for s in seams if 0 < s < len(frames)]
    inside = [i for i in range(len(steps)) if i not in across]
    return float(steps[across].mean()), float(steps[inside].mean())


def psnr(reference: np.ndarray, other: np.ndarray) -> float:
    mse = float(np.mean((reference.astype(np.float64) - other.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def source_video(frames: int, height: int, width: int) -> np.ndarray:
    """A smooth moving pattern in [0, 1]."""
    t = np.linspace(0, 1, frames)[:, None, None, None]
    y, x = np.linspace(0, 1, height)[None, :, None, None], np.linspace(0, 1, width)[None, None, :, None]
    return (0.5 + 0.4 * np.sin(6 * x + 4 * y + 5 * t + np.array([0.0, 1.0, 2.0]))).clip(0, 1).astype(np.float32)


def chunks(total: int, size: int) -> list[tuple[int, int]]:
    """The naive baseline's chunks of ``size`` frames covering ``total`` (the last one shifted back to end at
    ``total``; only its new frames are kept)."""
    starts = list(range(0, total, size))
    return [(min(start, total - size), start) for start in starts]


def naive(pipe, kwargs: dict, total: int, size: int, source: np.ndarray | None) -> np.ndarray:
    """Each chunk run on its own (its own seed; for an edit, its own slice of the source), concatenated."""
    pieces = []
    for index, (run_from, keep_from) in enumerate(chunks(total, size)):
        extra = {"video": source[run_from : run_from + size]} if source is not None else {}
        frames = pipe(**{**kwargs, "seed": kwargs["seed"] + index}, **extra, num_frames=size).frames
        pieces.append(frames[keep_from - run_from : min(size, total - run_from)])
    return np.concatenate(pieces)[:total]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default=None, help="a bundle (default: a tiny random one written to a temp dir)")
    parser.add_argument("--frames", type=int, default=49, help="frames of the long clip (4k+1)")
    parser.add_argument("--window_frames", type=int, default=17, help="frames per window and per naive chunk")
    parser.add_argument("--window_overlap", type=int, default=8, help="frames neighbouring windows share")
    parser.add_argument("--height", type=int, default=16)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    from bernini import BerniniPipeline
    from bernini.tiny.bundle import write_tiny_bundle

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or write_tiny_bundle(Path(tmp) / "tiny", "diffusers")
        pipe = BerniniPipeline.from_pretrained(bundle, device="cpu")
        pipe.set_progress_bar_config(disable=True)
        size, total = args.window_frames, args.frames
        seams = [start for _, start in chunks(total, size)][1:]
        common = {"num_inference_steps": args.steps, "seed": 7}
        windows = {"window_frames": size, "window_overlap": args.window_overlap}
        source = source_video(total, args.height, args.width)
        cases = {
            "t2v": ({"prompt": "a boat on a lake", "height": args.height, "width": args.width, **common}, None),
            "v2v": ({"prompt": "make it night", **common}, source),
        }
        print(f"{total} frames, windows of {size} (overlap {args.window_overlap}) vs naive chunks of {size}; "
              f"seams at frames {seams}; {args.steps} steps; {args.height}x{args.width}")  # fmt: skip
        header = f"{'run':5s} {'method':8s} {'windows':>7s} {'seam step':>9s} {'inside':>7s} {'ratio':>6s}"
        print(header + f" {'PSNR vs source':>14s} {'seconds':>7s}")
        for task, (kwargs, video) in cases.items():
            started = time.perf_counter()
            extra = {"video": video} if video is not None else {}
            out = pipe(**kwargs, **extra, **windows, num_frames=total)
            count = len(out.parameters["resolved"]["windows"]["latent_windows"])
            results = [("windows", out.frames[:total], count, time.perf_counter() - started)]
            started = time.perf_counter()
            baseline = naive(pipe, kwargs, total, size, video)
            results.append(("naive", baseline, len(seams) + 1, time.perf_counter() - started))
            for method, frames, count, seconds in results:
                across, inside = seam_flicker(frames, seams)
                quality = f"{psnr(video, frames):14.2f}" if video is not None else f"{'-':>14s}"
                print(f"{task:5s} {method:8s} {count:7d} {across:9.2f} {inside:7.2f} {across / inside:6.2f} "
                      f"{quality} {seconds:7.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
