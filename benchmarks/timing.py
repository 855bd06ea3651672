"""Shared by the benchmark scripts: best-of-N wall-clock timing."""

from __future__ import annotations

import time


def best_of(fn, repeat: int):
    """(shortest of ``repeat`` runs in seconds, the last result)."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result
