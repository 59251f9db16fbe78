"""NVML health events: the fake backend's semantics, and the real H100 (marked nvml)."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from nvplugin.core.config import Config
from nvplugin.core.resources import build_resources
from nvplugin.core.xid import DEFAULT_POLICY
from nvplugin.health import HealthWatcher
from nvplugin.nvml.base import HEALTH_EVENTS, NvmlError, NvmlGpuLost, NvmlNotSupported, NvmlTimeout
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.fake import FakeLayout, FakeNvml


def fake(count: int = 2) -> FakeNvml:
    nvml = FakeNvml(FakeLayout.of(count))
    nvml.init()
    return nvml


def test_wait_times_out_after_timeout_ms() -> None:
    nvml = fake()
    es = nvml.event_set_create()
    nvml.device_register_events(0, HEALTH_EVENTS, es)
    started = time.monotonic()
    with pytest.raises(NvmlTimeout):
        nvml.event_set_wait(es, 100)
    assert 0.09 <= time.monotonic() - started < 0.5


def test_injection_wakes_a_blocked_wait_at_once() -> None:
    nvml = fake()
    es = nvml.event_set_create()
    nvml.device_register_events(1, HEALTH_EVENTS, es)
    timer = threading.Timer(0.05, nvml.inject_xid, args=(1, 79), kwargs={"gi": 2, "ci": 0})
    started = time.monotonic()
    timer.start()
    event = nvml.event_set_wait(es, 5000)
    assert time.monotonic() - started < 1.0
    assert (event.gpu_index, event.data, event.gpu_instance, event.compute_instance) == (1, 79, 2, 0)
    assert event.uuid == nvml.device_uuid(1)


def test_events_reach_only_sets_registered_for_that_gpu_and_type() -> None:
    nvml = fake()
    es = nvml.event_set_create()
    nvml.device_register_events(0, 0x8, es)
    assert nvml.inject_xid(1, 79) == 0
    assert nvml.inject_event(0, 0x1, 1) == 0  # single-bit ECC not registered
    assert nvml.inject_xid(0, 79) == 1
    assert nvml.event_set_wait(es, 10).data == 79


def test_registering_unsupported_events_fails() -> None:
    nvml = fake()
    nvml.set_supported_events(0, 0x8)
    assert nvml.device_supported_events(0) == 0x8
    with pytest.raises(NvmlNotSupported):
        nvml.device_register_events(0, HEALTH_EVENTS, nvml.event_set_create())


def test_wait_errors_lost_gpu_and_reset() -> None:
    nvml = fake()
    es = nvml.event_set_create()
    nvml.device_register_events(0, HEALTH_EVENTS, es)
    nvml.inject_wait_error("unknown")
    with pytest.raises(NvmlError, match="injected"):
        nvml.event_set_wait(es, 10)
    nvml.inject_xid(0, 95)
    assert nvml.event_set_wait(es, 10).data == 95
    assert nvml.device_probe(0).recovery_action == 1
    nvml.reset_gpu(0)
    assert nvml.device_probe(0).recovery_action == 0
    nvml.lose_gpu(1)
    with pytest.raises(NvmlGpuLost):
        nvml.event_set_wait(es, 10)
    with pytest.raises(NvmlGpuLost):
        nvml.device_probe(1)
    assert nvml.device_probe(0).uuid == nvml.device_uuid(0)
    with pytest.raises(ValueError, match="no fake GPU 7"):
        nvml.inject_xid(7, 79)


def test_free_wakes_a_waiter() -> None:
    nvml = fake()
    es = nvml.event_set_create()
    threading.Timer(0.05, nvml.event_set_free, args=(es,)).start()
    with pytest.raises(NvmlError, match="freed"):
        nvml.event_set_wait(es, 5000)
    assert nvml.event_stats()["event_sets"] == 0


# --- the real GPU


@pytest.fixture
def real_nvml():  # type: ignore[no-untyped-def]
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        pytest.skip(f"no NVIDIA GPU here: {exc}")
    pynvml.nvmlShutdown()
    from nvplugin.nvml.real import RealNvml

    nvml = RealNvml()
    nvml.init()
    yield nvml
    nvml.shutdown()


@pytest.mark.nvml
def test_real_events_register_and_a_wait_times_out(real_nvml) -> None:  # type: ignore[no-untyped-def]
    es = real_nvml.event_set_create()
    try:
        for index in range(real_nvml.device_count()):
            supported = real_nvml.device_supported_events(index)
            assert supported & 0x8, f"GPU {index} does not report XID events ({supported:#x})"
            real_nvml.device_register_events(index, supported & HEALTH_EVENTS, es)
        started = time.monotonic()
        with pytest.raises(NvmlTimeout):
            real_nvml.event_set_wait(es, 500)
        assert 0.4 <= time.monotonic() - started < 1.0
        probe = real_nvml.device_probe(0)
        assert probe.uuid.startswith("GPU-")
        print(f"probe: {probe}")
    finally:
        real_nvml.event_set_free(es)


@pytest.mark.nvml
def test_real_watcher_registers_waits_and_cancels_cleanly(real_nvml) -> None:  # type: ignore[no-untyped-def]
    from nvplugin.state import NodeState

    inventory = discover(real_nvml)
    state = NodeState(inventory, build_resources(inventory, Config()))
    watcher = HealthWatcher(real_nvml, state, DEFAULT_POLICY)

    async def main() -> float:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.run)
            with anyio.fail_after(10):
                await watcher.ready.wait()
            await anyio.sleep(1.3)
            started = time.monotonic()
            tg.cancel_scope.cancel()
        return time.monotonic() - started

    cancel_s = anyio.run(main)
    assert watcher.stats.registered == len(inventory.gpus) >= 1
    assert watcher.stats.timeouts >= 2
    assert dict(state.unhealthy) == {}
    assert cancel_s < 1.0
    assert watcher.wait_stopped(1.0)  # the abandoned wait ends and frees the set before shutdown
