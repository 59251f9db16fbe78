"""How every Kubernetes API call of the agent is retried: jittered exponential backoff, one
state per retry path (the Node watch loop, the label writer, the Event sender).

A path's delays grow from `base` to `cap` (equal jitter: attempt n waits uniform(d/2, d),
d = min(cap, base * 2^n)), so a failing API server sees at most one attempt per cap/2 seconds
per path once the failures persist, and `Backoff.attempts_within(window)` bounds what it sees
before that. The count starts over only after `healthy_after` seconds without a failure after
the last delay (client-go's backoff manager resets the same way): a server that answers one
request and fails the next (a list that works, then a watch that expires at once) keeps the
delays growing. A 409 Conflict is retried on a faster schedule (the
next attempt carries fresh labels), still growing; a 429 or 503 waits at least its Retry-After
(capped); the first 410 Gone after a healthy period relists at once, a repeated one backs off.
Every retry is counted in `nvplugin_api_retries_total{call,reason}`, every failed call in
`nvplugin_api_errors_total{kind}`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nvplugin.k8s.client import ApiError
from nvplugin.observability import NULL_METRICS, Metrics

log = logging.getLogger(__name__)

# Why a retry happens: the `reason` label of nvplugin_api_retries_total (a closed set).
CONFLICT = "conflict"  # 409
EXPIRED = "expired"  # 410: the watch's resourceVersion was compacted away
THROTTLED = "throttled"  # 429
SERVER_ERROR = "server_error"  # 5xx
NOT_FOUND = "not_found"  # 404: the Node does not exist (yet)
CLIENT_ERROR = "client_error"  # any other 4xx (401, 403, 422...): retried slowly, it may be fixed
TIMEOUT = "timeout"  # no answer in time
CONNECTION = "connection"  # refused, reset, closed mid-answer, unreadable answer
CONFIG = "config"  # no usable kubeconfig or service account
WATCH_ENDED = "watch_ended"  # the server ended a watch long before its timeoutSeconds
NOT_APPLIED = "not_applied"  # a patch was accepted but the Node does not carry it
UNEXPECTED = "unexpected"  # a bug of ours: logged with its traceback


def reason_of(exc: BaseException) -> str:
    if not isinstance(exc, ApiError):
        return UNEXPECTED
    if exc.status == 0:
        if exc.call == "load config":
            return CONFIG
        return TIMEOUT if exc.timed_out else CONNECTION
    if exc.status >= 500:
        return SERVER_ERROR
    return {409: CONFLICT, 410: EXPIRED, 429: THROTTLED, 404: NOT_FOUND}.get(exc.status, CLIENT_ERROR)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with equal jitter: attempt n waits uniform(d/2, d), d = base*2^n
    capped at `cap`."""

    base: float = 0.5
    cap: float = 30.0

    def ceiling(self, attempt: int) -> float:
        return min(self.cap, self.base * 2.0 ** min(attempt, 30))

    def delay(self, attempt: int, rng: random.Random) -> float:
        d = self.ceiling(attempt)
        return rng.uniform(d / 2, d)

    def attempts_within(self, window: float) -> int:
        """The most attempts one retry path can make in `window` seconds of failures (the
        first at once, then the shortest delays the jitter allows): the request-rate bound."""
        attempts, elapsed = 1, 0.0
        while True:
            elapsed += self.ceiling(attempts - 1) / 2
            if elapsed > window:
                return attempts
            attempts += 1


@dataclass(frozen=True)
class RetryPolicy:
    """The defaults follow client-go's reflector (30 s cap) and the API server's habits (a
    Retry-After of a few seconds)."""

    backoff: Backoff = Backoff()
    # 409: the next attempt is computed from the labels just seen, so it may come quickly.
    conflict: Backoff = Backoff(base=0.05, cap=30.0)
    retry_after_cap: float = 60.0
    healthy_after: float = 60.0


DEFAULT_RETRY = RetryPolicy()


@dataclass
class Retrier:
    """The retry state of one path: `failed()` counts a failure and says how long to wait
    before the next attempt."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    rng: random.Random = field(default_factory=random.Random)
    metrics: Metrics = NULL_METRICS
    clock: Callable[[], float] = time.monotonic
    attempt: int = 0
    _retry_at: float | None = None  # when the last delay ended: the healthy period starts there

    def failed(self, call: str, cause: BaseException | str, *, first_at_once: bool = False) -> float:
        """The delay before retrying `call` after `cause` (an exception, or one of the reasons
        above for a failure that is not an API error). `first_at_once`: no delay for the first
        failure after a healthy period (a 410's relist)."""
        now = self.clock()
        if self._retry_at is not None and now - self._retry_at >= self.policy.healthy_after:
            self.attempt = 0
        kind = call.replace(" ", "_")
        if isinstance(cause, BaseException):
            reason = reason_of(cause)
            self.metrics.api_error(kind)
        else:
            reason = cause
        self.metrics.api_retry(kind, reason)
        delay = self._delay(cause, reason, self.attempt, first_at_once)
        self.attempt += 1
        self._retry_at = now + delay
        return delay

    def _delay(self, cause: BaseException | str, reason: str, attempt: int, first_at_once: bool) -> float:
        if first_at_once and attempt == 0:
            return 0.0
        schedule = self.policy.conflict if reason == CONFLICT else self.policy.backoff
        delay = schedule.delay(attempt, self.rng)
        retry_after = cause.retry_after if isinstance(cause, ApiError) else None
        if retry_after is not None:
            # at least what the server asked for (capped), plus a little jitter so that many
            # nodes told the same do not all come back at once
            wait = min(retry_after, self.policy.retry_after_cap)
            delay = max(delay, wait + self.rng.uniform(0, min(1.0, 0.1 * wait + 0.05)))
        return delay
