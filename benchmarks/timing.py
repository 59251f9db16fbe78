"""What the benchmarks share: one timing loop (warm up, then time each call in milliseconds) and
one percentile (nearest rank, so every figure is a value that was measured)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any


def time_calls(
    call: Callable[..., Any], *args: Any, calls: int, warmup: int = 20, **kwargs: Any
) -> list[float]:
    for _ in range(warmup):
        call(*args, **kwargs)
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        call(*args, **kwargs)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
