"""The metrics facade (nvplugin.observability) and the HTTP endpoint (nvplugin.metrics_server),
over real TCP connections on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nvplugin.core.address import ListenAddress
from nvplugin.core.resources import AdvertisedDevice, Resource
from nvplugin.metrics_server import MetricsServer, parse_request_line
from nvplugin.observability import (
    LATENCY_BUCKETS,
    NULL_METRICS,
    Metrics,
    record_device_changes,
    track_devices,
)

GPU = "nvidia.com/gpu"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def serving(metrics: Metrics | None = None, **options: Any) -> AsyncIterator[MetricsServer]:
    server = MetricsServer(ListenAddress("127.0.0.1", 0), metrics or Metrics(), **options)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


async def http_get(server: MetricsServer, path: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    """A real HTTP client (urllib) in a worker thread: status, headers, body."""

    def call() -> tuple[int, dict[str, str], str]:
        request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read().decode()

    return await anyio.to_thread.run_sync(call)


async def raw_exchange(server: MetricsServer, data: bytes, close_write: bool = False) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    assert server.port is not None
    async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
        if data:
            await stream.send(data)
        if close_write:
            await stream.send_eof()
        received = b""
        with anyio.fail_after(5):
            while True:
                try:
                    received += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return received


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def sample(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


async def scrape(server: MetricsServer) -> str:
    status, headers, body = await http_get(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    return body


# --------------------------------------------------------------------------- /metrics


@pytest.mark.anyio
async def test_counters_move_when_the_facade_is_called() -> None:
    metrics = Metrics()
    metrics.registered(GPU)  # before the server starts: must not be lost
    async with serving(metrics) as server:
        before = await scrape(server)
        assert sample(before, "nvplugin_registrations_total", resource=GPU, result="ok") == 1
        assert sample(before, "nvplugin_kubelet_restarts_total") == 0  # plain counters exist from the start
        assert sample(before, "nvplugin_xid_events_total", code="79") is None
        assert sample(before, "nvplugin_build_info", version=__import__("nvplugin").__version__) == 1

        metrics.registered(GPU)
        metrics.registered(GPU, ok=False)
        metrics.kubelet_restart()
        metrics.xid(79)
        metrics.xid(79)
        metrics.xid(48)
        metrics.health_transition(GPU, "Unhealthy")
        metrics.health_transition(GPU, "healthy")
        metrics.devices(GPU, healthy=3, unhealthy=1)
        metrics.allocation(GPU, 0.0003, ok=True)
        metrics.allocation(GPU, 0.002, ok=False)
        metrics.preferred_allocation(GPU, 0.00005, ok=True)
        metrics.label_write()
        metrics.event_write()
        metrics.api_error("patch_node")
        metrics.api_error("patch_node")

        after = await scrape(server)
    assert sample(after, "nvplugin_registrations_total", resource=GPU, result="ok") == 2
    assert sample(after, "nvplugin_registrations_total", resource=GPU, result="error") == 1
    assert sample(after, "nvplugin_kubelet_restarts_total") == 1
    assert sample(after, "nvplugin_xid_events_total", code="79") == 2
    assert sample(after, "nvplugin_xid_events_total", code="48") == 1
    assert sample(after, "nvplugin_health_transitions_total", resource=GPU, to="unhealthy") == 1
    assert sample(after, "nvplugin_health_transitions_total", resource=GPU, to="healthy") == 1
    assert sample(after, "nvplugin_devices", resource=GPU, health="healthy") == 3
    assert sample(after, "nvplugin_devices", resource=GPU, health="unhealthy") == 1
    assert sample(after, "nvplugin_allocations_total", resource=GPU, result="ok") == 1
    assert sample(after, "nvplugin_allocations_total", resource=GPU, result="error") == 1
    assert sample(after, "nvplugin_allocation_seconds_count", resource=GPU) == 2
    assert sample(after, "nvplugin_allocation_seconds_sum", resource=GPU) == pytest.approx(0.0023)
    # sub-millisecond resolution: 0.3 ms lands in le=0.0005, not before
    assert sample(after, "nvplugin_allocation_seconds_bucket", resource=GPU, le="0.00025") == 0
    assert sample(after, "nvplugin_allocation_seconds_bucket", resource=GPU, le="0.0005") == 1
    assert sample(after, "nvplugin_allocation_seconds_bucket", resource=GPU, le="0.0025") == 2
    assert sample(after, "nvplugin_allocation_seconds_bucket", resource=GPU, le="+Inf") == 2
    assert sample(after, "nvplugin_preferred_allocation_seconds_bucket", resource=GPU, le="0.0001") == 1
    assert sample(after, "nvplugin_label_writes_total") == 1
    assert sample(after, "nvplugin_event_writes_total") == 1
    assert sample(after, "nvplugin_api_errors_total", kind="patch_node") == 2
    # process figures for the memory budget
    assert (sample(after, "process_resident_memory_bytes") or 0) > 1_000_000


@pytest.mark.anyio
async def test_forgotten_resource_leaves_the_device_gauge() -> None:
    metrics = Metrics()
    metrics.devices("nvidia.com/mig-1g.10gb", 7, 0)
    metrics.devices(GPU, 1, 0)
    metrics.forget_resource("nvidia.com/mig-1g.10gb")
    async with serving(metrics) as server:
        text = await scrape(server)
    assert sample(text, "nvplugin_devices", resource="nvidia.com/mig-1g.10gb", health="healthy") is None
    assert sample(text, "nvplugin_devices", resource=GPU, health="healthy") == 1


@pytest.mark.anyio
async def test_query_string_is_ignored() -> None:
    async with serving() as server:
        status, _, body = await http_get(server, "/metrics?name[]=nvplugin_devices")
    assert status == 200
    assert "nvplugin_build_info" in body


# --------------------------------------------------------------------------- probes


@pytest.mark.anyio
async def test_healthz_and_readyz_follow_their_callables() -> None:
    state = {"alive": True, "ready": False}
    async with serving(
        liveness=lambda: (state["alive"], "tasks running" if state["alive"] else "task kubelet-side died"),
        readiness=lambda: (
            state["ready"],
            "registered" if state["ready"] else "not registered: nvidia.com/gpu",
        ),
    ) as server:
        status, headers, body = await http_get(server, "/healthz")
        assert (status, body) == (200, "ok: tasks running\n")
        assert headers["Connection"] == "close"
        status, _, body = await http_get(server, "/readyz")
        assert (status, body) == (503, "not ok: not registered: nvidia.com/gpu\n")

        state["ready"] = True
        status, _, body = await http_get(server, "/readyz")
        assert (status, body) == (200, "ok: registered\n")

        state["alive"] = False
        status, _, body = await http_get(server, "/healthz")
        assert (status, body) == (503, "not ok: task kubelet-side died\n")


@pytest.mark.anyio
async def test_a_check_that_raises_answers_503_and_the_server_goes_on() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("state lock poisoned")

    async with serving(liveness=broken) as server:
        status, _, body = await http_get(server, "/healthz")
        assert status == 503
        assert "RuntimeError: state lock poisoned" in body
        assert (await http_get(server, "/readyz"))[0] == 200


# --------------------------------------------------------------------------- bad requests


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD", "OPTIONS"])
async def test_non_get_is_405_with_allow(method: str) -> None:
    async with serving() as server:
        status, headers, _ = await http_get(server, "/metrics", method=method)
    assert status == 405
    assert headers["Allow"] == "GET"


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/", "/metricsx", "/healthz/", "/debug/pprof", "/../etc/passwd"])
async def test_unknown_path_is_404(path: str) -> None:
    async with serving() as server:
        status, _, body = await http_get(server, path)
    assert status == 404
    assert "/metrics" in body


@pytest.mark.anyio
@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS ClientHello-like blob
        b"GET\r\n\r\n",
        b"GET /metrics\r\n\r\n",  # HTTP/0.9
        b"GET /metrics SPDY/3\r\n\r\n",
        b"get /metrics HTTP/1.1\r\n\r\n",
        b"GET metrics HTTP/1.1\r\n\r\n",
        b"GET /metr\xffics HTTP/1.1\r\n\r\n",
        b"GET  /metrics HTTP/1.1\r\n\r\n",
    ],
)
async def test_garbage_gets_400_and_the_connection_is_closed(garbage: bytes) -> None:
    async with serving() as server:
        answer = await raw_exchange(server, garbage)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"Connection: close" in answer
        # still serving
        assert (await http_get(server, "/healthz"))[0] == 200


@pytest.mark.anyio
async def test_incomplete_request_then_close_is_dropped_quietly() -> None:
    async with serving() as server:
        assert await raw_exchange(server, b"GET /metrics HTTP/1.1\r\nHost: x", close_write=True) == b""
        assert await raw_exchange(server, b"", close_write=True) == b""
        assert (await http_get(server, "/healthz"))[0] == 200


@pytest.mark.anyio
async def test_oversized_request_gets_431() -> None:
    async with serving() as server:
        answer = await raw_exchange(server, b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert (await http_get(server, "/healthz"))[0] == 200


@pytest.mark.anyio
async def test_a_silent_client_is_cut_off_and_does_not_block_others() -> None:
    async with serving(request_timeout=0.3) as server:
        assert server.port is not None
        async with await anyio.connect_tcp("127.0.0.1", server.port) as silent:
            # another client is served while the silent one holds its connection
            assert (await http_get(server, "/healthz"))[0] == 200
            with anyio.fail_after(3):
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await silent.receive()


@pytest.mark.anyio
async def test_connections_beyond_the_limit_are_closed_at_once() -> None:
    async with serving(request_timeout=2.0, max_connections=2) as server:
        assert server.port is not None
        held = [await anyio.connect_tcp("127.0.0.1", server.port) for _ in range(2)]
        await anyio.sleep(0.05)  # let the server accept both
        try:
            assert await raw_exchange(server, b"GET /healthz HTTP/1.1\r\n\r\n") == b""
        finally:
            for stream in held:
                await stream.aclose()
        with anyio.fail_after(3):
            while True:  # the slots come back once the held connections are closed
                if (await http_get(server, "/healthz"))[0] == 200:
                    break


@pytest.mark.anyio
async def test_bare_lf_request_is_understood() -> None:
    async with serving() as server:
        answer = await raw_exchange(server, b"GET /healthz HTTP/1.0\n\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"ok: ok\n")


@pytest.mark.anyio
async def test_empty_host_listens_on_every_interface() -> None:
    # ":8080" (the default) must be reachable on the pod IP, where the kubelet probes.
    server = MetricsServer(ListenAddress("", 0), Metrics())
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        assert (await raw_exchange(server, b"GET /healthz HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_bind_failure_names_the_address() -> None:
    async with serving() as first:
        assert first.port is not None
        taken = MetricsServer(ListenAddress("127.0.0.1", first.port), Metrics())
        with pytest.raises(
            OSError, match=rf"cannot listen on 127\.0\.0\.1:{first.port} for metrics and probes"
        ):
            await taken.serve()


# --------------------------------------------------------------------------- facade units


def test_request_line_parser() -> None:
    assert parse_request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a") == ("GET", "/metrics")
    assert parse_request_line(b"POST /readyz HTTP/1.0") == ("POST", "/readyz")
    for bad in (b"", b"GET / HTTP/2", b"G3T / HTTP/1.1", b"GET /\tx HTTP/1.1 extra"):
        assert parse_request_line(bad) is None


def test_histogram_bounds_are_inclusive() -> None:
    metrics = Metrics()
    for bound in LATENCY_BUCKETS:
        metrics.allocation(GPU, bound, ok=True)
    metrics.allocation(GPU, 99.0, ok=True)
    metrics.allocation(GPU, -1.0, ok=True)  # a clock step backwards counts as 0, not as garbage
    _, _, histograms = metrics.snapshot()
    buckets, total = histograms["allocation_seconds"][(GPU,)]
    counts = dict(buckets)
    assert counts[repr(LATENCY_BUCKETS[0])] == 2  # the first bound and the clamped -1
    assert counts[repr(LATENCY_BUCKETS[-1])] == len(LATENCY_BUCKETS) + 1
    assert counts["+Inf"] == len(LATENCY_BUCKETS) + 2
    assert total == pytest.approx(sum(LATENCY_BUCKETS) + 99.0)


def test_null_metrics_records_nothing_and_accepts_every_call() -> None:
    calls: list[Callable[[], None]] = [
        lambda: NULL_METRICS.devices(GPU, 1, 1),
        lambda: NULL_METRICS.xid(79),
        lambda: NULL_METRICS.health_transition(GPU, "Unhealthy"),
        lambda: NULL_METRICS.allocation(GPU, 0.1, ok=True),
        lambda: NULL_METRICS.preferred_allocation(GPU, 0.1, ok=True),
        lambda: NULL_METRICS.registered(GPU),
        lambda: NULL_METRICS.kubelet_restart(),
        lambda: NULL_METRICS.label_write(),
        lambda: NULL_METRICS.event_write(),
        lambda: NULL_METRICS.api_error("watch"),
        lambda: NULL_METRICS.forget_resource(GPU),
    ]
    for call in calls:
        call()
    devices, counters, histograms = NULL_METRICS.snapshot()
    assert devices == {}
    assert all(not series for series in counters.values())
    assert all(not series for series in histograms.values())


def test_every_facade_method_has_a_null_twin() -> None:
    public = {name for name in vars(Metrics) if not name.startswith("_")}
    assert {"allocation", "registered", "kubelet_restart", "xid", "health_transition", "devices"} <= public
    for name in public:
        assert callable(getattr(NULL_METRICS, name))


def test_value_reads_back() -> None:
    metrics = Metrics()
    assert metrics.value("xid_events", "79") == 0
    metrics.xid(79)
    metrics.devices(GPU, 2, 1)
    assert metrics.value("xid_events", "79") == 1
    assert metrics.value("devices", GPU, "unhealthy") == 1


def test_recording_does_not_import_prometheus_client() -> None:
    # The facade is used from the first second of start-up; the exposition library must only
    # be imported when the server starts (after Register).
    code = (
        "import sys\n"
        "from nvplugin.observability import Metrics\n"
        "import nvplugin.metrics_server\n"
        "m = Metrics(); m.allocation('nvidia.com/gpu', 0.001, True); m.xid(79); m.snapshot()\n"
        "assert 'prometheus_client' not in sys.modules, 'imported too early'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- device gauges from the state


def gpu_device(uuid: str, replica: int = 0) -> AdvertisedDevice:
    device_id = f"{uuid}::{replica}" if replica else uuid
    return AdvertisedDevice(device_id, uuid, "0", uuid, None, ("/dev/nvidia0",), replica)


class StandInState:
    """The part of the agent's NodeState that track_devices reads ."""

    def __init__(self, resources: tuple[Resource, ...]) -> None:
        self.version = 0
        self.resources = resources
        self.unhealthy: dict[str, str] = {}
        self._changed = anyio.Event()

    def change(self, **marks: str | None) -> None:
        for uuid, reason in marks.items():
            if reason is None:
                self.unhealthy.pop(uuid, None)
            else:
                self.unhealthy[uuid] = reason
        self.version += 1
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_changed(self, seen_version: int) -> int:
        if self.version == seen_version:
            await self._changed.wait()
        return self.version


def test_record_device_changes_counts_transitions_per_advertised_device() -> None:
    metrics = Metrics()
    mig = "nvidia.com/mig-1g.10gb"
    before = {GPU: {"A": "Healthy", "B": "Healthy"}, mig: {"M": "Healthy"}}
    after = {GPU: {"A": "Unhealthy", "B": "Healthy", "C": "Unhealthy"}}  # C is new: not a transition
    record_device_changes(metrics, before, after)
    assert metrics.value("health_transitions", GPU, "unhealthy") == 1
    assert metrics.value("health_transitions", GPU, "healthy") == 0
    assert metrics.value("devices", GPU, "healthy") == 1
    assert metrics.value("devices", GPU, "unhealthy") == 2
    devices, _, _ = metrics.snapshot()
    assert not any(resource == mig for resource, _ in devices)  # the vanished resource is dropped


@pytest.mark.anyio
async def test_track_devices_follows_health_marks_without_polling() -> None:
    # GPU-a is shared by time-slicing (2 replicas), GPU-b is whole.
    resource = Resource(GPU, (gpu_device("GPU-a", 1), gpu_device("GPU-a", 2), gpu_device("GPU-b")))
    state = StandInState((resource,))
    metrics = Metrics()

    async def until(condition: Callable[[], bool]) -> None:
        with anyio.fail_after(2):
            while not condition():  # noqa: ASYNC110 (the tracker's effect is what we wait for)
                await anyio.sleep(0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(track_devices, state, metrics)
        await until(lambda: metrics.value("devices", GPU, "healthy") == 3)
        state.change(**{"GPU-a": "XID 79"})
        await until(lambda: metrics.value("devices", GPU, "unhealthy") == 2)
        assert metrics.value("devices", GPU, "healthy") == 1
        assert metrics.value("health_transitions", GPU, "unhealthy") == 2  # both replicas went
        state.change(**{"GPU-a": None})
        await until(lambda: metrics.value("devices", GPU, "healthy") == 3)
        assert metrics.value("health_transitions", GPU, "healthy") == 2
        tg.cancel_scope.cancel()
