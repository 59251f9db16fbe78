"""Metrics and probes: what the agent counts, and the HTTP endpoint that shows it.

`Metrics` is the facade every component calls (`metrics.allocation(...)`, `metrics.xid(...)`).
It records into plain Python counters from the first moment of start-up, so nothing that
happens before the HTTP server starts (the first Register, above all) is lost, and it needs
no third-party import: prometheus-client is imported only when the server starts, off the
path to Register.
At scrape time a collector turns the recorded values into Prometheus metric families.
`NULL_METRICS` has the same methods and does nothing (metrics switched off, tests, tools), so
callers never check for None.

`MetricsServer` serves GET /metrics, /healthz and /readyz over a deliberately tiny HTTP/1.1
implementation on anyio's TCP listener (one request per connection, Connection: close): it is
lighter to import and to run than a web framework, and it lives in the agent's TaskGroup.
Anything but GET gets 405, unknown paths 404, garbage 400; no request can stall or break it.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from anyio.abc import SocketStream, TaskStatus

from nvplugin import __version__
from nvplugin.core.address import ListenAddress
from nvplugin.core.resources import HEALTHY as KUBELET_HEALTHY
from nvplugin.core.resources import Resource, device_health

log = logging.getLogger(__name__)

# Allocate answers in well under a millisecond on the fast path; the buckets resolve that
# region and still catch the slow tail (NVIDIA's topology look-ups took ~0.6 s per GPU pair).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5)

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"


# --------------------------------------------------------------------------- the facade

# Exposed names (with the nvplugin_ prefix), help texts and label names.
_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "xid_events": ("XID events received from NVML, by XID code", ("code",)),
    "health_transitions": ("Device health changes, by resource and new state", ("resource", "to")),
    "allocations": ("Allocate calls answered, by resource and result", ("resource", "result")),
    "preferred_allocations": (
        "GetPreferredAllocation calls answered, by resource and result",
        ("resource", "result"),
    ),
    "registrations": ("Register calls made to the kubelet, by resource and result", ("resource", "result")),
    "kubelet_restarts": ("Kubelet restarts seen (kubelet.sock re-created)", ()),
    "label_writes": ("Successful writes of the node's labels", ()),
    "event_writes": ("Kubernetes Events created or updated", ()),
    "api_errors": ("Failed Kubernetes API calls, by call", ("kind",)),
}
_HISTOGRAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "allocation_seconds": ("Time to answer Allocate, by resource", ("resource",)),
    "preferred_allocation_seconds": ("Time to answer GetPreferredAllocation, by resource", ("resource",)),
}


@dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; last = +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "less or equal").
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip((*map(_float_label, self.buckets), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class Metrics:
    """Records what the agent does. Cheap (a lock and a dict update), thread-safe, and free of
    third-party imports.

    Label values come from a small set (resource names, XID codes, API call kinds), so the
    number of series stays bounded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._devices: dict[tuple[str, str], int] = {}
        self._counters: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in _COUNTERS}
        self._histograms: dict[str, dict[tuple[str, ...], _Histogram]] = {name: {} for name in _HISTOGRAMS}

    # --- what components call

    def devices(self, resource: str, healthy: int, unhealthy: int) -> None:
        """The resource's current device count by health (after every ListAndWatch change)."""
        with self._lock:
            self._devices[(resource, HEALTHY)] = healthy
            self._devices[(resource, UNHEALTHY)] = unhealthy

    def forget_resource(self, resource: str) -> None:
        """The resource is no longer advertised (reload): drop its device gauges."""
        with self._lock:
            self._devices.pop((resource, HEALTHY), None)
            self._devices.pop((resource, UNHEALTHY), None)

    def xid(self, code: int) -> None:
        """An XID event arrived from NVML (whether or not it changed any device's health)."""
        self._count("xid_events", (str(code),))

    def health_transition(self, resource: str, to_state: str) -> None:
        """A device of `resource` went healthy -> unhealthy or back; `to_state` is the new state,
        "Healthy"/"healthy" or anything else for unhealthy (the kubelet's own rule)."""
        state = HEALTHY if to_state.lower() == HEALTHY else UNHEALTHY
        self._count("health_transitions", (resource, state))

    def allocation(self, resource: str, seconds: float, ok: bool) -> None:
        """One Allocate call: how long it took and whether it succeeded."""
        self._count("allocations", (resource, _result(ok)))
        self._observe("allocation_seconds", (resource,), seconds)

    def preferred_allocation(self, resource: str, seconds: float, ok: bool) -> None:
        """One GetPreferredAllocation call."""
        self._count("preferred_allocations", (resource, _result(ok)))
        self._observe("preferred_allocation_seconds", (resource,), seconds)

    def registered(self, resource: str, ok: bool = True) -> None:
        """One Register call to the kubelet for `resource` (ok=False: it was refused or failed)."""
        self._count("registrations", (resource, _result(ok)))

    def kubelet_restart(self) -> None:
        """The kubelet restarted (kubelet.sock re-created): the plugin servers start over."""
        self._count("kubelet_restarts", ())

    def label_write(self) -> None:
        """Node labels were written (one successful patch of the Node)."""
        self._count("label_writes", ())

    def event_write(self) -> None:
        """A Kubernetes Event was created or updated."""
        self._count("event_writes", ())

    def api_error(self, kind: str) -> None:
        """A Kubernetes API call failed; `kind` names the call, e.g. patch_node, create_event, watch."""
        self._count("api_errors", (kind,))

    # --- reading back (tests, the collector)

    def value(self, name: str, *labels: str) -> float:
        """A counter's value or a device gauge ('devices'); 0 when never recorded."""
        with self._lock:
            if name == "devices":
                return float(self._devices.get((labels[0], labels[1]), 0))
            return self._counters[name].get(tuple(labels), 0.0)

    def _count(self, name: str, labels: tuple[str, ...]) -> None:
        with self._lock:
            series = self._counters[name]
            series[labels] = series.get(labels, 0.0) + 1

    def _observe(self, name: str, labels: tuple[str, ...], seconds: float) -> None:
        with self._lock:
            series = self._histograms[name]
            histogram = series.get(labels)
            if histogram is None:
                histogram = series[labels] = _Histogram(LATENCY_BUCKETS)
            histogram.observe(max(0.0, seconds))

    def snapshot(
        self,
    ) -> tuple[dict[tuple[str, str], int], dict[str, dict[tuple[str, ...], float]], dict[str, Any]]:
        """A consistent copy for one scrape."""
        with self._lock:
            histograms = {
                name: {labels: (h.cumulative(), h.total) for labels, h in series.items()}
                for name, series in self._histograms.items()
            }
            return (
                dict(self._devices),
                {name: dict(series) for name, series in self._counters.items()},
                histograms,
            )


class NullMetrics(Metrics):
    """Same methods, records nothing: for when metrics are switched off."""

    def _count(self, name: str, labels: tuple[str, ...]) -> None:
        pass

    def _observe(self, name: str, labels: tuple[str, ...], seconds: float) -> None:
        pass

    def devices(self, resource: str, healthy: int, unhealthy: int) -> None:
        pass


NULL_METRICS = NullMetrics()


def _result(ok: bool) -> str:
    return "ok" if ok else "error"


def _float_label(value: float) -> str:
    return repr(float(value))


# --------------------------------------------------------------------------- device gauges


class StateView(Protocol):
    """What track_devices reads of the agent's NodeState."""

    @property
    def version(self) -> int: ...

    @property
    def resources(self) -> tuple[Resource, ...]: ...

    @property
    def unhealthy(self) -> Mapping[str, str]: ...

    async def wait_changed(self, seen_version: int) -> int: ...


DeviceHealth = dict[str, dict[str, str]]  # resource name -> advertised device ID -> health


def device_health_map(resources: tuple[Resource, ...], unhealthy: Mapping[str, str]) -> DeviceHealth:
    """What the kubelet is told, per resource and device (the same rule as ListAndWatch)."""
    return {r.name: {d.id: device_health(d, unhealthy) for d in r.devices} for r in resources}


def record_device_changes(metrics: Metrics, previous: DeviceHealth, current: DeviceHealth) -> None:
    """Set the device gauges from `current`; count a transition for every advertised device
    whose health differs from `previous` (devices that appear or vanish on reload are not
    transitions); drop the gauges of resources that are gone."""
    for name, devices in current.items():
        healthy = sum(1 for health in devices.values() if health == KUBELET_HEALTHY)
        metrics.devices(name, healthy, len(devices) - healthy)
        before = previous.get(name, {})
        for device_id, health in devices.items():
            if device_id in before and before[device_id] != health:
                metrics.health_transition(name, health)
    for name in previous.keys() - current.keys():
        metrics.forget_resource(name)


async def track_devices(state: StateView, metrics: Metrics) -> None:
    """Keep nvplugin_devices and nvplugin_health_transitions_total in step with the state:
    wakes on every state change (no polling), runs until cancelled."""
    previous: DeviceHealth = {}
    seen = -1
    while True:
        if state.version != seen:
            seen = state.version
            current = device_health_map(state.resources, state.unhealthy)
            record_device_changes(metrics, previous, current)
            previous = current
        await state.wait_changed(seen)


# --------------------------------------------------------------------------- exposition


def _build_registry(metrics: Metrics) -> Any:
    """A fresh prometheus-client registry: the recorded values plus process figures (RSS, CPU,
    open fds) for the memory budget. Imported here, the first time the server starts."""
    from prometheus_client import CollectorRegistry, ProcessCollector
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    class RecordedCollector:
        def collect(self) -> Iterator[Any]:
            devices, counters, histograms = metrics.snapshot()
            info = GaugeMetricFamily("nvplugin_build_info", "nvplugin version", labels=["version"])
            info.add_metric([__version__], 1)
            yield info
            gauge = GaugeMetricFamily(
                "nvplugin_devices",
                "Devices advertised to the kubelet, by resource and health",
                labels=["resource", "health"],
            )
            for (resource, health), count in sorted(devices.items()):
                gauge.add_metric([resource, health], count)
            yield gauge
            for name, (help_text, label_names) in _COUNTERS.items():
                family = CounterMetricFamily(f"nvplugin_{name}", help_text, labels=list(label_names))
                for labels, value in sorted(counters[name].items()):
                    family.add_metric(list(labels), value)
                if not label_names and not counters[name]:
                    family.add_metric([], 0.0)  # a plain counter exists from the start: rate() works
                yield family
            for name, (help_text, label_names) in _HISTOGRAMS.items():
                hist = HistogramMetricFamily(f"nvplugin_{name}", help_text, labels=list(label_names))
                for labels, (buckets, total) in sorted(histograms[name].items()):
                    hist.add_metric(list(labels), buckets, total)
                yield hist

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RecordedCollector())
    ProcessCollector(registry=registry)
    return registry


# --------------------------------------------------------------------------- the HTTP endpoint

Check = Callable[[], tuple[bool, str]]

# One request line plus headers; a Prometheus or kubelet request is a few hundred bytes.
MAX_REQUEST_BYTES = 8192
# A client must send its whole request within this time (no slow-loris can hold a slot).
REQUEST_TIMEOUT = 5.0
# Connections served at once; more are closed at once rather than queued.
MAX_CONNECTIONS = 32

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def always_ok() -> tuple[bool, str]:
    return True, "ok"


class MetricsServer:
    """GET /metrics, /healthz (liveness) and /readyz (readiness) on one TCP address.

    `liveness` and `readiness` are called on the loop for every probe and return (ok, detail):
    200 with the detail when ok, 503 with it when not. Answering at all proves the loop runs."""

    def __init__(
        self,
        address: ListenAddress,
        metrics: Metrics,
        *,
        liveness: Check = always_ok,
        readiness: Check = always_ok,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.address = address
        self.metrics = metrics
        self.liveness = liveness
        self.readiness = readiness
        self.port: int | None = None
        self._registry: Any = None
        self._generate: Callable[[Any], bytes] | None = None
        self._content_type = "text/plain; version=0.0.4; charset=utf-8"
        self.request_timeout = request_timeout
        self._slots = anyio.CapacityLimiter(max_connections)

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the bound port through task_status (`port = await tg.start(server.serve)`),
        and serve until cancelled. A bind failure raises OSError with the address in its message."""
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        self._registry = _build_registry(self.metrics)
        self._generate = generate_latest
        self._content_type = CONTENT_TYPE_LATEST
        try:
            listener = await anyio.create_tcp_listener(
                local_host=self.address.bind_host, local_port=self.address.port
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot listen on {self.address} for metrics and probes: {exc.strerror or exc}"
            ) from exc
        async with listener:
            from anyio.abc import SocketAttribute

            self.port = int(listener.extra(SocketAttribute.local_port))
            log.info("serving /metrics, /healthz and /readyz on %s (port %d)", self.address, self.port)
            task_status.started(self.port)
            await listener.serve(self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        try:
            self._slots.acquire_on_behalf_of_nowait(stream)
        except anyio.WouldBlock:
            await stream.aclose()
            return
        try:
            status, body, extra = await self._answer(stream)
            if status:
                await self._send(stream, status, body, extra)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
            pass  # the client went away: nothing to answer
        finally:
            self._slots.release_on_behalf_of(stream)
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _answer(self, stream: SocketStream) -> tuple[int, bytes, dict[str, str]]:
        with anyio.move_on_after(self.request_timeout):
            head = await _read_head(stream)
            if head is None:
                return 431, b"request too large\n", {}
            if not head:
                return 0, b"", {}  # closed before a complete request: nothing to say
            request = parse_request_line(head)
            if request is None:
                return 400, b"malformed request\n", {}
            method, path = request
            if path not in ("/metrics", "/healthz", "/readyz"):
                return 404, b"not found: try /metrics, /healthz or /readyz\n", {}
            if method != "GET":
                return 405, f"method {method} not allowed: only GET\n".encode(), {"Allow": "GET"}
            return self._route(path)
        return 0, b"", {}  # the request did not arrive in time

    def _route(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        if path == "/metrics":
            assert self._generate is not None
            try:
                return 200, self._generate(self._registry), {"Content-Type": self._content_type}
            except Exception as exc:
                log.exception("rendering /metrics failed")
                return 500, f"rendering metrics failed: {exc}\n".encode(), {}
        check = self.liveness if path == "/healthz" else self.readiness
        try:
            ok, detail = check()
        except Exception as exc:
            log.exception("%s check raised", path)
            ok, detail = False, f"check raised {type(exc).__name__}: {exc}"
        return (200 if ok else 503), f"{'ok' if ok else 'not ok'}: {detail}\n".encode(), {}

    async def _send(self, stream: SocketStream, status: int, body: bytes, extra: dict[str, str]) -> None:
        headers = {"Content-Type": "text/plain; charset=utf-8", **extra}
        lines = [f"HTTP/1.1 {status} {_REASONS[status]}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
        with anyio.move_on_after(self.request_timeout):
            await stream.send("\r\n".join(lines).encode("latin-1") + body)


async def _read_head(stream: SocketStream) -> bytes | None:
    """The request up to the blank line after the headers; b"" if the peer closed first,
    None if it exceeds MAX_REQUEST_BYTES. The body, if any, is never read (GET has none)."""
    data = b""
    while True:
        end = _head_end(data)
        if end >= 0:
            return data[:end]
        if len(data) > MAX_REQUEST_BYTES:
            return None
        try:
            chunk = await stream.receive(4096)
        except anyio.EndOfStream:
            return b""
        data += chunk


def _head_end(data: bytes) -> int:
    for marker in (b"\r\n\r\n", b"\n\n"):
        index = data.find(marker)
        if index >= 0:
            return index
    return -1


def parse_request_line(head: bytes) -> tuple[str, str] | None:
    """(method, path without query) from a request head, or None when it is not HTTP/1.x."""
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        text = first.decode("ascii")
    except UnicodeDecodeError:
        return None
    parts = text.split(" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if not method.isalpha() or not method.isupper() or not version.startswith("HTTP/1."):
        return None
    if not target.startswith("/"):
        return None
    return method, target.split("?", 1)[0]
