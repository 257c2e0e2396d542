"""Timestamps of the steps of a round, for the round-overhead benchmark.

Off unless the environment variable FEDQ_TRACE names a file: then every process of a run
(ServerApp, SuperExecs, ClientApps) appends one JSON line per step to that file, and
bench/round_overhead.py puts the round back together from them. Each line is
``{"t": <Unix time, s>, "pid": ..., "event": ..., **fields}``; lines are short, and an
append-mode write of a short line is atomic, so processes do not interleave within a line.
"""

from __future__ import annotations

import json
import os
import time

TRACE_ENV = "FEDQ_TRACE"


def enabled() -> bool:
    """Whether this process records its steps."""
    return bool(os.environ.get(TRACE_ENV))


def mark(event: str, *, at: float | None = None, **fields: object) -> None:
    """Record ``event`` at ``at`` (Unix time in seconds; now if None) with ``fields``."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    record = {"t": time.time() if at is None else at, "pid": os.getpid(), "event": event}
    record.update(fields)
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(record, default=str) + "\n")


def process_start_time() -> float | None:
    """When this process started (Unix time, s, to 10 ms), read from /proc; None elsewhere."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    since_start = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - since_start
