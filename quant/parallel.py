"""A shared thread pool for the codec's pure-numpy steps.

numpy's element loops release the GIL, but run on one core each; the codec cuts such a
step into slices and runs them here, one per core. Torch work stays on
torch's own intra-op threads: running torch operations from several Python threads was
measured slower (each operation hands the GIL over) and two thread pools on the same
cores wait on each other.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_WORKERS = 8


@cache
def workers() -> int:
    """Threads a step is cut into: the cores this process may run on, at most
    :data:`MAX_WORKERS` (asked once: the count takes a read of /sys each time)."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))


def run_all(function: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[function(item) for item in items]``, the items on the pool's threads."""
    if len(items) <= 1:
        return [function(item) for item in items]
    return list(_pool(workers()).map(function, items))


def spans(length: int, minimum: int, align: int = 1) -> list[tuple[int, int]]:
    """``[start, end)`` spans cutting ``range(length)`` into one per worker.

    Every start is a multiple of ``align``; a single span when ``length`` is below
    ``minimum`` per worker (not worth a thread).
    """
    count = max(1, min(workers(), length // max(1, minimum)))
    bounds = [length * i // count // align * align for i in range(count)] + [length]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


@cache
def _pool(size: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=size, thread_name_prefix="fedq-codec")


def for_spans(
    length: int, function: Callable[[int, int], None], minimum: int = 1 << 20, align: int = 1
) -> None:
    """``function(start, end)`` over `spans` of ``range(length)``, on the pool's threads."""
    run_all(lambda span: function(*span), spans(length, minimum, align))
