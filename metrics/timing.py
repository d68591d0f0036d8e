"""Where a scoring run's wall time goes, per stage, when stages overlap in threads.

Every stage (decode, align, pixel metrics, SSIM, LPIPS, CLIP preprocess, CLIP forward, writing,
summary, ...) is entered with `timer.stage(name)` from whichever thread runs it. Two numbers per
stage:

- `busy_s`: the time spent inside the stage, summed over threads (two workers aligning for 1 s each
  count 2 s);
- `wall_s`: the stage's share of the wall clock. At every instant the elapsed time is divided
  equally among the stages running then (one worker aligning while the main thread runs the CLIP
  forward: each gets half). So the `wall_s` of all stages plus `idle_s` (time when no stage ran)
  equals the run's wall time exactly, and a stage that is fully hidden behind another shows how
  much of the clock it shared rather than vanishing.

Stages must not nest within one thread (a nested stage would share the clock with its parent).

A timer may count from an earlier instant than its creation (`StageTimer(since=...)`, e.g. the
process's start from `process_started()`); the time before its creation is then the stage
`startup`, so the account covers the whole process and not only the part that was timed.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

# The canonical order of the stages a scoring run reports (others follow in first-seen order).
STAGES = ("startup", "index", "read", "decode", "load", "align", "clip_preprocess", "pixel", "ssim", "locality",
          "lpips", "clip_text", "clip_forward", "region_remote", "judge", "writing", "summary")


def process_started() -> float | None:
    """The `time.perf_counter()` reading at which this process started, from the operating system
    (Linux: /proc, 10 ms resolution; elsewhere psutil where installed), or None where it cannot be
    read. Counting from it puts the interpreter's start and the imports into the account."""
    try:
        if sys.platform.startswith("linux"):
            # /proc's start time and CLOCK_BOOTTIME count from the same boot, suspend included
            with open("/proc/self/stat", "rb") as fh:
                stat = fh.read()
            ticks = int(stat[stat.rindex(b")") + 2:].split()[19])  # field 22: starttime; the name may hold spaces
            age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        else:
            import psutil

            age = time.time() - psutil.Process().create_time()
    except (ImportError, OSError, ValueError, IndexError, AttributeError):
        return None
    return time.perf_counter() - age if age >= 0 else None


class StageTimer:
    def __init__(self, since: float | None = None) -> None:
        """`since`: a `time.perf_counter()` reading before now from which the account counts; the time
        from it to now becomes the stage `startup` (default: count from now)."""
        self._lock = threading.Lock()
        now = self._last = time.perf_counter()
        self._start = now if since is None else min(since, now)
        self._active: Counter[str] = Counter()
        self._wall: defaultdict[str, float] = defaultdict(float)
        self._busy: defaultdict[str, float] = defaultdict(float)
        self._calls: Counter[str] = Counter()
        self._idle = 0.0
        if since is not None:
            self._wall["startup"] = self._busy["startup"] = now - self._start
            self._calls["startup"] = 1

    def _advance(self, now: float) -> None:
        # Called under the lock: hand the time since the last event to the stages running in it.
        dt = now - self._last
        self._last = now
        running = sum(self._active.values())
        if running == 0:
            self._idle += dt
            return
        for name, count in self._active.items():
            self._wall[name] += dt * count / running

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        with self._lock:
            self._advance(t0)
            self._active[name] += 1
        try:
            yield
        finally:
            t1 = time.perf_counter()
            with self._lock:
                self._advance(t1)
                self._active[name] -= 1
                if self._active[name] == 0:
                    del self._active[name]
                self._busy[name] += t1 - t0
                self._calls[name] += 1

    def report(self) -> dict[str, Any]:
        """{"wall_s", "idle_s", "stages": {name: {"wall_s", "busy_s", "calls"}}}, seconds rounded to 1 ms;
        stages in `STAGES` order."""
        with self._lock:
            now = time.perf_counter()
            self._advance(now)
            names = [s for s in STAGES if s in self._busy] + [s for s in self._busy if s not in STAGES]
            return {
                "wall_s": round(now - self._start, 3),
                "idle_s": round(self._idle, 3),
                "stages": {s: {"wall_s": round(self._wall[s], 3), "busy_s": round(self._busy[s], 3),
                               "calls": self._calls[s]} for s in names},
            }


def time_line(report: dict[str, Any], top: int = 4) -> str:
    """The report in one line: the wall time, then its `top` largest stages with their shares of it,
    e.g. "43.2 s: clip_forward 37.1 s (86%), load 2.0 s (5%), ...". """
    wall = report["wall_s"]
    largest = sorted(report["stages"].items(), key=lambda item: -item[1]["wall_s"])[:top]
    parts = [f"{name} {s['wall_s']:.1f} s ({s['wall_s'] / wall:.0%})" for name, s in largest] if wall > 0 else []
    return f"{wall:.1f} s" + (": " + ", ".join(parts) if parts else "")
