"""The retry policy shared by every Kubernetes API path (nvplugin.k8s.retry): pure, on a fake
clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvplugin.k8s.client import ApiError
from nvplugin.k8s.retry import (
    CONFIG,
    CONFLICT,
    CONNECTION,
    DEFAULT_RETRY,
    EXPIRED,
    NOT_FOUND,
    SERVER_ERROR,
    THROTTLED,
    TIMEOUT,
    WATCH_ENDED,
    Backoff,
    Retrier,
    RetryPolicy,
    reason_of,
)
from nvplugin.observability import Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def retrier(policy: RetryPolicy = DEFAULT_RETRY, seed: int = 0) -> tuple[Retrier, FakeClock, Metrics]:
    clock, metrics = FakeClock(), Metrics()
    return Retrier(policy, random.Random(seed), metrics, clock), clock, metrics


def test_reasons() -> None:
    assert reason_of(ApiError("list node", 503, "x")) == SERVER_ERROR
    assert reason_of(ApiError("patch node", 409, "x")) == CONFLICT
    assert reason_of(ApiError("watch node", 410, "x")) == EXPIRED
    assert reason_of(ApiError("watch node", 429, "x")) == THROTTLED
    assert reason_of(ApiError("list node", 404, "x")) == NOT_FOUND
    assert reason_of(ApiError("list node", 0, "x", timed_out=True)) == TIMEOUT
    assert reason_of(ApiError("list node", 0, "refused")) == CONNECTION
    assert reason_of(ApiError("load config", 0, "no kubeconfig")) == CONFIG


def test_attempts_within_is_the_worst_case_of_the_jitter() -> None:
    backoff = Backoff(base=0.5, cap=30.0)
    # shortest delays: 0.25, 0.5, 1, 2, 4, 8, 15, 15, ... (cumulative 0.25, 0.75, 1.75, 3.75, ...)
    assert backoff.attempts_within(0.0) == 1
    assert backoff.attempts_within(0.25) == 2
    assert backoff.attempts_within(3.0) == 4
    assert backoff.attempts_within(10.0) == 6
    assert backoff.attempts_within(60.0) == 9
    # sustained: one attempt per cap/2 at most
    assert backoff.attempts_within(600.0 + 60.75) - backoff.attempts_within(60.75) == 40


@given(seed=st.integers(0, 2**32), window=st.floats(0, 120))
def test_a_failing_path_never_exceeds_the_bound(seed: int, window: float) -> None:
    policy = RetryPolicy()
    path, clock, _ = retrier(policy, seed)
    start, attempts = clock.now, 0
    while clock.now - start <= window:
        attempts += 1
        clock.now += path.failed("list node", ApiError("list node", 500, "storm"))
    assert attempts <= policy.backoff.attempts_within(window)


def test_delays_grow_are_jittered_and_capped() -> None:
    path, clock, _ = retrier()
    delays = []
    for _ in range(12):
        delays.append(path.failed("list node", ApiError("list node", 500, "x")))
        clock.now += delays[-1]
    assert 0.25 <= delays[0] <= 0.5 and 0.5 <= delays[1] <= 1.0 and 1.0 <= delays[2] <= 2.0
    assert all(15.0 <= d <= 30.0 for d in delays[7:])


def test_first_410_relists_at_once_repeated_ones_back_off() -> None:
    path, clock, _ = retrier()
    gone = ApiError("watch node", 410, "too old resource version")
    assert path.failed("watch node", gone, first_at_once=True) == 0.0
    second = path.failed("watch node", gone, first_at_once=True)
    clock.now += second
    third = path.failed("watch node", gone, first_at_once=True)
    assert 0.5 <= second <= 1.0 and 1.0 <= third <= 2.0


def test_backoff_starts_over_only_after_a_healthy_period() -> None:
    policy = RetryPolicy(healthy_after=60.0)
    path, clock, _ = retrier(policy)
    gone = ApiError("watch node", 410, "x")
    for _ in range(5):
        clock.now += path.failed("watch node", gone, first_at_once=True)
    # failures 50 s apart (after the delay) keep growing: not healthy long enough
    clock.now += 50.0
    assert path.failed("watch node", gone, first_at_once=True) >= 4.0
    # a minute without failures: the next 410 relists at once again
    clock.now += 90.0
    assert path.failed("watch node", gone, first_at_once=True) == 0.0


def test_retry_after_is_honoured_and_capped() -> None:
    path, _, _ = retrier(RetryPolicy(retry_after_cap=60.0))
    assert 5.0 <= path.failed("patch node", ApiError("patch node", 429, "slow down", retry_after=5)) <= 6.0
    capped = path.failed("patch node", ApiError("patch node", 429, "slow down", retry_after=3600))
    assert 60.0 <= capped <= 61.0
    # a Retry-After shorter than the backoff does not shorten it
    path2, clock, _ = retrier()
    for _ in range(6):
        clock.now += path2.failed("list node", ApiError("list node", 500, "x"))
    assert path2.failed("list node", ApiError("list node", 503, "x", retry_after=1)) >= 8.0


def test_conflicts_retry_quickly_but_still_grow() -> None:
    path, clock, _ = retrier()
    conflict = ApiError("patch node", 409, "the object has been modified")
    delays = []
    for _ in range(10):
        delays.append(path.failed("patch node", conflict))
        clock.now += delays[-1]
    assert delays[0] <= 0.05
    assert 0.05 * 2**8 / 2 <= delays[9] <= 30.0


def test_retries_and_errors_are_counted_by_call_and_reason() -> None:
    path, _, metrics = retrier()
    path.failed("patch node", ApiError("patch node", 409, "x"))
    path.failed("patch node", ApiError("patch node", 500, "x"))
    path.failed("watch node", WATCH_ENDED)  # not an API error: a retry only
    assert metrics.value("api_retries", "patch_node", "conflict") == 1
    assert metrics.value("api_retries", "patch_node", "server_error") == 1
    assert metrics.value("api_retries", "watch_node", "watch_ended") == 1
    assert metrics.value("api_errors", "patch_node") == 2
    assert metrics.value("api_errors", "watch_node") == 0


@pytest.mark.parametrize("base", [0.01, 0.5, 2.0])
def test_backoff_ceiling(base: float) -> None:
    backoff = Backoff(base=base, cap=30.0)
    assert backoff.ceiling(0) == base
    assert backoff.ceiling(1000) == 30.0
