"""The one timing loop the benchmarks share: warm up, then time each call in milliseconds."""

from __future__ import annotations

import time
from collections.abc import Callable
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
