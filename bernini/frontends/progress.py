"""What a command-line front end shows while a run goes: one bar (or plain log lines) per phase, kept in the
log, and the final timings line. It listens to the library's ``on_progress(phase, done, total)`` hook.

On a terminal each phase is a tqdm bar left in place when it ends (``leave=True``); when stderr is not a
terminal (a log file, a pipe) each phase prints plain lines: its first unit, every tenth of the way, its end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any

LABELS = {
    "load": ("loading", "module"),
    "encode": ("encoding media", "input"),
    "text": ("encoding text", "prompt"),
    "denoise": ("denoising", "step"),
    "decode": ("decoding", "chunk"),
    "write": ("writing", "file"),
}
ORDER = ("load", "encode", "text", "denoise", "decode", "write")


class ConsoleProgress:
    """An ``on_progress`` hook that prints to ``stream`` and adds up the seconds spent in each phase."""

    def __init__(
        self, stream: IO[str] | None = None, tty: bool | None = None, clock: Callable[[], float] = time.perf_counter
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.started = clock()
        self.seconds: dict[str, float] = {}
        self._open: dict[str, tuple[float, int, Any]] = {}  # phase → (start, last printed, bar)

    def __call__(self, phase: str, done: int, total: int) -> None:
        label, unit = LABELS.get(phase, (phase, "unit"))
        now = self.clock()
        if done == 0 or phase not in self._open:
            self._close(phase, now)
            bar = None
            if self.tty:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, desc=label, unit=unit, leave=True, file=self.stream)
            self._open[phase] = (now, 0, bar)
        start, printed, bar = self._open[phase]
        if bar is not None:
            bar.update(done - bar.n)
        elif done and (done == 1 or done == total or done - printed >= max(1, total // 10)):
            self._print(f"{label}: {done}/{total} {unit}(s), {now - start:.1f} s")
            printed = done
        self._open[phase] = (start, printed, bar)
        if done >= total:
            self._close(phase, now)

    def _close(self, phase: str, now: float) -> None:
        opened = self._open.pop(phase, None)
        if opened is None:
            return
        start, _, bar = opened
        if bar is not None:
            bar.close()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - start

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def summary(self) -> str:
        """``done in 12.3 s: load 2.1, encode 0.4, text 0.2, denoise 9.0, decode 0.6, write 0.2``."""
        now = self.clock()
        for phase in list(self._open):
            self._close(phase, now)
        parts = [f"{phase} {self.seconds[phase]:.1f}" for phase in ORDER if phase in self.seconds]
        parts += [f"{phase} {value:.1f}" for phase, value in self.seconds.items() if phase not in ORDER]
        return f"done in {now - self.started:.1f} s" + (": " + ", ".join(parts) if parts else "")


FULL_SIZE = (81, 480 * 848, 40)  # upstream's default frames, pixels per frame, steps
LONG_S = 600.0


class SizeAdvice:
    """The ``note:`` line before a CPU run at the full default sizes (or one estimated to take long)."""

    def __init__(self) -> None:
        self.rate: float | None = None

    def __call__(self, pipe, resolved) -> str | None:
        """The note for ``plan``, or None. Plans sized by a source video or image are left out: their size is
        only known once the source is read, and the flags would not be what sets it."""
        if (
            getattr(pipe.device, "type", str(pipe.device)) != "cpu"
            or resolved.media.video
            or resolved.media.image is not None
        ):
            return None
        from ..runtime.estimate import describe_seconds, estimate_seconds, measured_flops_per_s

        geometry = resolved.geometry
        asked = (geometry.frames, geometry.height * geometry.width, resolved.num_inference_steps)
        full = all(value >= least for value, least in zip(asked, FULL_SIZE, strict=True))
        if self.rate is None:
            self.rate = measured_flops_per_s(pipe.device, pipe.dtype)
        seconds = estimate_seconds(pipe, resolved, self.rate)
        if not full and seconds < LONG_S:
            return None
        return (
            f"note: {geometry.frames} frames at {geometry.width}x{geometry.height} with {resolved.num_inference_steps} "
            f"steps on the CPU: at least {describe_seconds(seconds)} (estimated); for a quick try pass "
            "--num_frames 17 --height 240 --width 416 --num_inference_steps 10"
        )
