"""The HTTP endpoint: GET /metrics, /healthz and /readyz on one TCP address.

A deliberately tiny HTTP/1.1 server on anyio's TCP listener (one request per connection,
Connection: close): lighter to import and to run than a web framework, and it lives in the
agent's TaskGroup. Anything but GET gets 405, unknown paths 404, garbage 400; a slow or silent
client is cut off after a timeout and a flood of connections is turned away, so no request can
stall or break it. prometheus-client is imported when the server starts, not before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import anyio
from anyio.abc import SocketStream, TaskStatus

from nvplugin import __version__
from nvplugin.core.address import ListenAddress
from nvplugin.observability import COUNTER_FAMILIES, HISTOGRAM_FAMILIES, Metrics

log = logging.getLogger(__name__)


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
            for name, (help_text, label_names) in COUNTER_FAMILIES.items():
                family = CounterMetricFamily(f"nvplugin_{name}", help_text, labels=list(label_names))
                for labels, value in sorted(counters[name].items()):
                    family.add_metric(list(labels), value)
                if not label_names and not counters[name]:
                    family.add_metric([], 0.0)  # a plain counter exists from the start: rate() works
                yield family
            for name, (help_text, label_names) in HISTOGRAM_FAMILIES.items():
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
