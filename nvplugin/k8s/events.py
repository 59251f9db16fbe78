"""Kubernetes Events on the Node for GPU health transitions, rate-limited and aggregated.

`publish_health_event` never blocks and never raises: it queues the event and a background task
(`run()`) sends it. Like client-go's event recorder, repeats of the same event (same device,
XID, reason and direction) within `aggregate_window` update one Event's count instead of
creating new objects, and a token bucket bounds the API traffic (burst, then one per
`refill_seconds`); what the bucket refuses is counted and logged, never queued without bound.
An API server that is unreachable, busy (429) or failing (5xx) keeps the event queued and is
retried on a jittered exponential backoff (nvplugin.k8s.retry); any other refusal drops it.
"""

from __future__ import annotations

import logging
import random
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from nvplugin.k8s.client import ApiError, NodeApi
from nvplugin.k8s.flag import Flag
from nvplugin.k8s.retry import Backoff, Retrier, RetryPolicy
from nvplugin.observability import NULL_METRICS, Metrics

log = logging.getLogger(__name__)

COMPONENT = "nvplugin"
REASON_UNHEALTHY = "GPUUnhealthy"
REASON_HEALTHY = "GPUHealthy"


@dataclass(frozen=True, slots=True)
class HealthEvent:
    uuid: str
    xid: int | None
    reason: str
    healthy: bool
    at: float

    @property
    def key(self) -> tuple[str, int | None, str, bool]:
        return (self.uuid, self.xid, self.reason, self.healthy)

    def message(self) -> str:
        xid = f" (XID {self.xid})" if self.xid is not None else ""
        state = "healthy again" if self.healthy else "unhealthy"
        return f"GPU {self.uuid} is {state}{xid}: {self.reason}"


# Events are not urgent: a slower start than the labels' backoff.
EVENT_RETRY = RetryPolicy(backoff=Backoff(base=1.0, cap=30.0))


def _retryable(exc: Exception) -> bool:
    """The API is unreachable, busy or failing: the event is kept and sent later."""
    return isinstance(exc, ApiError) and (exc.status in (0, 429) or exc.status >= 500)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class NodeEventPublisher:
    """Run `await publisher.run()` in a task; call `publish_health_event` from the loop."""

    def __init__(
        self,
        node_name: str,
        api: Callable[[], Awaitable[NodeApi] | NodeApi | None],
        *,
        node_uid: Callable[[], str | None] = lambda: None,
        namespace: str = "default",
        burst: int = 25,
        refill_seconds: float = 10.0,
        aggregate_window: float = 600.0,
        max_queue: int = 100,
        metrics: Metrics = NULL_METRICS,
        retry: RetryPolicy = EVENT_RETRY,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._metrics = metrics
        self._retry = Retrier(retry, rng or random.Random(), metrics)
        self.node_name = node_name
        self._api = api
        self._node_uid = node_uid
        self.namespace = namespace
        self._burst = burst
        self._tokens = float(burst)
        self._refill_seconds = refill_seconds
        self._aggregate_window = aggregate_window
        self._clock = clock
        self._last_refill = clock()
        self._queue: deque[HealthEvent] = deque()
        self._max_queue = max_queue
        self._wake = Flag()
        # event key -> (Event name, count, time first sent)
        self._sent: dict[tuple[str, int | None, str, bool], tuple[str, int, float]] = {}
        self.created = 0
        self.aggregated = 0
        self.dropped = 0
        self.failed = 0

    def publish_health_event(self, uuid: str, xid: int | None, reason: str, healthy: bool) -> None:
        """Queue a health transition for the Node's Events. Never blocks, never raises."""
        if len(self._queue) >= self._max_queue:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("node events: queue full, %d health events dropped so far", self.dropped)
            return
        self._queue.append(HealthEvent(uuid, xid, reason, healthy, self._clock()))
        self._wake.set()

    def _token_ready(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last_refill) / self._refill_seconds)
        self._last_refill = now
        return self._tokens >= 1

    def _spend_token(self) -> None:
        self._tokens -= 1

    async def run(self) -> None:
        """Send queued events until cancelled. Never raises anything else."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                event = self._queue[0]
                if not self._token_ready():
                    self._queue.popleft()
                    self.dropped += 1
                    log.warning(
                        "node events: rate limit reached, not sending %r (%d dropped so far)",
                        event.message(),
                        self.dropped,
                    )
                    continue
                try:
                    await self._send(event)
                except Exception as exc:
                    call = exc.call if isinstance(exc, ApiError) else "create event"
                    if _retryable(exc):
                        delay = self._retry.failed(call, exc)
                        log.warning("node events: API unavailable (%s); retrying in %.1f s", exc, delay)
                        await anyio.sleep(delay)
                        continue
                    self._queue.popleft()
                    self.failed += 1
                    self._metrics.api_error(call.replace(" ", "_"))
                    log.warning(
                        "node events: could not record %r on node %s: %s",
                        event.message(),
                        self.node_name,
                        exc,
                    )
                    continue
                self._queue.popleft()
                self._spend_token()

    async def _get_api(self) -> NodeApi:
        api = self._api()
        if isinstance(api, Awaitable):
            api = await api
        if api is None:
            raise ApiError("create event", 0, "the Kubernetes client is not connected yet")
        return api

    async def _send(self, event: HealthEvent) -> None:
        api = await self._get_api()
        now = self._clock()
        previous = self._sent.get(event.key)
        if previous is not None and now - previous[2] < self._aggregate_window:
            name, count, first = previous
            try:
                await api.patch_event(
                    self.namespace,
                    name,
                    {"count": count + 1, "lastTimestamp": _iso(now), "message": event.message()},
                )
                self._sent[event.key] = (name, count + 1, first)
                self.aggregated += 1
                self._metrics.event_write()
                return
            except ApiError as exc:
                if exc.status != 404:
                    raise
                # the Event expired (TTL): create a new one
        name = f"{self.node_name}.{uuidlib.uuid4().hex[:16]}"
        await api.create_event(self.namespace, self._body(name, event, now))
        self._sent[event.key] = (name, 1, now)
        self.created += 1
        self._metrics.event_write()

    def _body(self, name: str, event: HealthEvent, now: float) -> dict[str, Any]:
        involved: dict[str, Any] = {"kind": "Node", "apiVersion": "v1", "name": self.node_name}
        uid = self._node_uid()
        if uid:
            involved["uid"] = uid
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": self.namespace},
            "involvedObject": involved,
            "reason": REASON_HEALTHY if event.healthy else REASON_UNHEALTHY,
            "message": event.message(),
            "type": "Normal" if event.healthy else "Warning",
            "source": {"component": COMPONENT, "host": self.node_name},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.node_name,
            "firstTimestamp": _iso(event.at),
            "lastTimestamp": _iso(now),
            "count": 1,
        }
