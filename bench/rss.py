"""The peak-RSS probe shared by the loading benches.

A bench runs each measured load in a fresh interpreter (:func:`run_child`), so nothing an earlier load
left in the allocator or the page tables is counted. Inside the child, :class:`PeakRss` notes the RSS after
the imports (the baseline) and samples it from a watcher thread until the block ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent


class PeakRss:
    """``with PeakRss() as probe: load()`` → ``probe.extra``: peak RSS above the RSS at entry, in bytes."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.process = psutil.Process()
        self.baseline = self.peak = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _sample(self) -> None:
        self.peak = max(self.peak, self.process.memory_info().rss)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakRss:
        self.baseline = self.peak = self.process.memory_info().rss
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def extra(self) -> int:
        return self.peak - self.baseline


def run_child(code: str, *args: str) -> dict:
    """Run ``code`` (which may ``from rss import PeakRss``) in a fresh interpreter; its last stdout line is JSON."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), env.get("PYTHONPATH", "")) if p)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"the measuring child failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
