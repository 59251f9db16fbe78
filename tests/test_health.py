"""The health watcher on the fake backend: real NodeState, real worker threads, real waits."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from nvplugin.core.config import Config
from nvplugin.core.resources import (
    HEALTHY,
    UNHEALTHY,
    AdvertisedDevice,
    Resource,
    build_resources,
    device_health,
)
from nvplugin.core.xid import DEFAULT_POLICY, HealthPolicy, RecoveryPolicy
from nvplugin.health import HealthWatcher, event_targets, placements_from_state
from nvplugin.nvml.base import NvmlEvent
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.fake import FakeLayout, FakeNvml
from nvplugin.state import HealthTransition, NodeState
from nvplugin.tasks import Backoff, TaskSpec, guarded
from tests.conftest import eventually, running_agent

pytestmark = pytest.mark.anyio

FAST = replace(
    DEFAULT_POLICY, recovery=RecoveryPolicy(enabled=True, quiet_period_s=0.3, probe_interval_s=0.05)
)


def make(count: int = 2) -> tuple[FakeNvml, NodeState]:
    fake = FakeNvml(FakeLayout.of(count))
    fake.init()
    inventory = discover(fake)
    return fake, NodeState(inventory, build_resources(inventory, Config()))


class Clock:
    """The watcher's clock, moved by the test: fault ages without waiting them out."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def watching(
    fake: FakeNvml, state: NodeState, policy: HealthPolicy = FAST, **kwargs: object
) -> AsyncIterator[HealthWatcher]:
    """The watcher run as the agent runs it: under the task guard."""
    watcher = HealthWatcher(fake, state, policy, wait_timeout_ms=200, **kwargs)  # type: ignore[arg-type]
    spec = TaskSpec[HealthWatcher]("health", HealthWatcher.run, restart=Backoff(initial=0.05, cap=0.1))
    async with anyio.create_task_group() as tg:
        tg.start_soon(guarded, spec, watcher)
        with anyio.fail_after(5):
            await watcher.ready.wait()
        yield watcher
        tg.cancel_scope.cancel()


async def until(condition: Callable[[], bool], state: NodeState, limit_s: float = 3.0) -> None:
    """Wait on NodeState's change notification (no sleeping) until `condition` holds."""
    with anyio.fail_after(limit_s):
        seen = state.version
        while not condition():
            seen = await state.wait_changed(seen)


def uuid(state: NodeState, index: int) -> str:
    return state.inventory.gpus[index].uuid


async def test_xid_marks_only_its_gpu_unhealthy() -> None:
    fake, state = make(2)
    transitions: list[HealthTransition] = []
    state.subscribe(transitions.append)
    async with watching(fake, state) as watcher:
        fake.inject_xid(0, 79)
        await until(lambda: uuid(state, 0) in state.unhealthy, state)
        assert uuid(state, 1) not in state.unhealthy
        assert "XID 79 on GPU 0, needs reboot" in state.unhealthy[uuid(state, 0)]
        devices = state.resources[0].devices
        assert [device_health(d, state.unhealthy) for d in devices] == [UNHEALTHY, HEALTHY]
        assert transitions == [HealthTransition(uuid(state, 0), False, state.unhealthy[uuid(state, 0)], 79)]
        assert watcher.stats.registered == 2


async def test_ignored_xids_and_ecc_events_change_nothing() -> None:
    fake, state = make(2)
    async with watching(fake, state) as watcher:
        version = state.version
        for xid in (13, 31, 43, 45, 68, 109):
            fake.inject_xid(0, xid)
        fake.inject_event(0, 0x2, 1)  # a double-bit ECC event: counted, XID 48 carries the action
        fake.inject_xid(1, 48)  # a marker event processed after the ones above
        await until(lambda: uuid(state, 1) in state.unhealthy, state)
        assert uuid(state, 0) not in state.unhealthy
        assert state.version == version + 1
        assert watcher.stats.ignored_xids == 6 and watcher.stats.ecc_events == 1


async def test_env_policy_checks_an_application_xid() -> None:
    fake, state = make(1)
    policy = replace(FAST, checked_xids=frozenset({13}))
    async with watching(fake, state, policy):
        fake.inject_xid(0, 13)
        await until(lambda: uuid(state, 0) in state.unhealthy, state)


async def test_restart_app_fault_recovers_after_the_quiet_period() -> None:
    fake, state = make(1)
    transitions: list[HealthTransition] = []
    state.subscribe(transitions.append)
    async with watching(fake, state):
        fake.inject_xid(0, 8)
        await until(lambda: uuid(state, 0) in state.unhealthy, state)
        marked = time.monotonic()
        await until(lambda: uuid(state, 0) not in state.unhealthy, state)
        assert time.monotonic() - marked >= 0.25
        assert [(t.healthy, t.xid) for t in transitions] == [(False, 8), (True, 8)]
        assert transitions[1].reason == f"recovered from: {transitions[0].reason}"


async def test_reset_class_fault_waits_for_the_gpu_reset() -> None:
    fake, state = make(1)
    clock = Clock()
    async with watching(fake, state, clock=clock) as watcher:
        fake.inject_xid(0, 95)
        await until(lambda: uuid(state, 0) in state.unhealthy, state)
        clock.now += 60  # long past the quiet period
        probes = watcher.stats.probes
        await eventually(lambda: watcher.stats.probes >= probes + 2)  # probed since: still no reset
        assert uuid(state, 0) in state.unhealthy
        assert watcher.faults[uuid(state, 0)].reset_requested
        fake.reset_gpu(0)
        await until(lambda: uuid(state, 0) not in state.unhealthy, state)


async def test_a_reset_right_after_the_xid_counts() -> None:
    fake, state = make(1)
    async with watching(fake, state) as watcher:
        fake.inject_xid(0, 95)
        await until(lambda: uuid(state, 0) in state.unhealthy, state)
        fake.reset_gpu(0)  # before any recovery pass (the order docs/xid.md gives)
        await until(lambda: uuid(state, 0) not in state.unhealthy, state)
        assert watcher.stats.recoveries == 1


async def test_reboot_class_fault_stays_unhealthy() -> None:
    fake, state = make(2)
    clock = Clock()
    async with watching(fake, state, clock=clock) as watcher:
        fake.inject_xid(0, 79)
        await until(lambda: uuid(state, 0) in state.unhealthy, state)
        fake.reset_gpu(0)
        # A recoverable fault on the other GPU: once it has recovered, recovery passes ran long
        # past the quiet period, and none of them may have touched the reboot-class fault.
        fake.inject_xid(1, 8)
        await until(lambda: uuid(state, 1) in state.unhealthy, state)
        clock.now += 60
        await until(lambda: uuid(state, 1) not in state.unhealthy, state)
        assert uuid(state, 0) in state.unhealthy
        assert watcher.stats.recoveries == 1


def replicated(state: NodeState, replicas: int) -> tuple[Resource, ...]:
    devices = tuple(
        AdvertisedDevice(f"{g.uuid}::{n}", g.uuid, str(g.index), g.uuid, None, (g.device_node,), replica=n)
        for g in state.inventory.gpus
        for n in range(replicas)
    )
    return (Resource("nvidia.com/gpu", devices),)


async def test_every_replica_of_the_faulted_gpu_turns_unhealthy() -> None:
    fake, state = make(2)
    state.replace(state.inventory, replicated(state, 4))
    async with watching(fake, state):
        fake.inject_xid(1, 48)
        await until(lambda: uuid(state, 1) in state.unhealthy, state)
    health = {d.id: device_health(d, state.unhealthy) for d in state.resources[0].devices}
    assert [health[f"{uuid(state, 1)}::{n}"] for n in range(4)] == [UNHEALTHY] * 4
    assert [health[f"{uuid(state, 0)}::{n}"] for n in range(4)] == [HEALTHY] * 4


MIG_A = "MIG-aaaaaaaa-0000-4000-8000-000000000001"
MIG_B = "MIG-bbbbbbbb-0000-4000-8000-000000000002"
MIG_C = "MIG-cccccccc-0000-4000-8000-000000000003"


def mig_state() -> tuple[FakeNvml, NodeState, dict[str, tuple[int, int]]]:
    fake, state = make(2)
    gpu0, gpu1 = state.inventory.gpus
    placements = {MIG_A: (1, 0), MIG_B: (2, 0), MIG_C: (2, 1)}
    migs = tuple(
        AdvertisedDevice(m, m, f"0:{i}", gpu0.uuid, None, (gpu0.device_node,))
        for i, m in enumerate(placements)
    )
    whole = AdvertisedDevice(gpu1.uuid, gpu1.uuid, "1", gpu1.uuid, None, (gpu1.device_node,))
    state.replace(
        state.inventory, (Resource("nvidia.com/mig-1g.10gb", migs), Resource("nvidia.com/gpu", (whole,)))
    )
    return fake, state, placements


def health_of(state: NodeState) -> dict[str, str]:
    return {d.uuid: device_health(d, state.unhealthy) for r in state.resources for d in r.devices}


async def test_mig_event_marks_only_its_instance() -> None:
    fake, state, placements = mig_state()
    async with watching(fake, state, placements=lambda: placements):
        fake.inject_xid(0, 94, gi=1, ci=0)
        await until(lambda: MIG_A in state.unhealthy, state)
        assert health_of(state) == {MIG_A: UNHEALTHY, MIG_B: HEALTHY, MIG_C: HEALTHY, uuid(state, 1): HEALTHY}
        fake.inject_xid(0, 94, gi=2)  # a GPU-instance-level event: both compute instances in it
        await until(lambda: MIG_C in state.unhealthy, state)
        assert MIG_B in state.unhealthy and uuid(state, 0) not in state.unhealthy


async def test_parent_level_event_marks_every_mig_device_on_the_gpu() -> None:
    fake, state, placements = mig_state()
    async with watching(fake, state, placements=lambda: placements):
        fake.inject_xid(0, 79)
        await until(lambda: uuid(state, 0) in state.unhealthy, state)
    assert health_of(state) == {MIG_A: UNHEALTHY, MIG_B: UNHEALTHY, MIG_C: UNHEALTHY, uuid(state, 1): HEALTHY}


def test_event_targets_fall_back_to_the_whole_gpu() -> None:
    _, state, placements = mig_state()
    gpu0, gpu1 = (g.uuid for g in state.inventory.gpus)
    assert event_targets(state.resources, placements, gpu0, 2, 1) == [MIG_C]
    assert event_targets(state.resources, placements, gpu0, 7, 0) == [gpu0]  # unknown instance
    assert event_targets(state.resources, placements, gpu1, 1, 0) == [gpu1]  # MIG strategy none
    assert event_targets(state.resources, {}, gpu0, 1, 0) == [gpu0]  # placements unknown


def test_placements_from_legacy_mig_uuids() -> None:
    _, state = make(1)
    gpu = state.inventory.gpus[0]
    legacy = f"MIG-{gpu.uuid}/3/0"
    device = AdvertisedDevice(legacy, legacy, "0:0", gpu.uuid, None, ())
    state.replace(state.inventory, (Resource("nvidia.com/mig-1g.10gb", (device,)),))
    assert placements_from_state(state) == {legacy: (3, 0)}


async def test_lost_gpu_makes_only_its_own_devices_unhealthy() -> None:
    fake, state = make(3)
    async with watching(fake, state) as watcher:
        fake.lose_gpu(1)
        await until(lambda: uuid(state, 1) in state.unhealthy, state)
        # Events are handled in order: once this marker XID is, every probe of the lost GPU's
        # wait error is done. The watcher keeps watching the others.
        fake.inject_xid(2, 79)
        await until(lambda: uuid(state, 2) in state.unhealthy, state)
        assert set(state.unhealthy) == {uuid(state, 1), uuid(state, 2)}
        assert "lost" in state.unhealthy[uuid(state, 1)]
        assert watcher.stats.wait_errors == 1


async def test_wait_error_probes_per_device_and_marks_only_failing_ones() -> None:
    fake, state = make(3)
    async with watching(fake, state) as watcher:
        fake.inject_wait_error("unknown")
        await eventually(lambda: watcher.stats.probes >= 3)
        assert dict(state.unhealthy) == {}
        fake.inject_device_fault(2, "device_uuid", "unknown")  # GPU 2 stops answering
        fake.inject_wait_error("unknown")
        await until(lambda: uuid(state, 2) in state.unhealthy, state)
        assert set(state.unhealthy) == {uuid(state, 2)}
        assert "not answering" in state.unhealthy[uuid(state, 2)]
        fake.clear_device_faults()  # it answers again: Healthy after the quiet period
        await until(lambda: uuid(state, 2) not in state.unhealthy, state)


class CrashingNvml(FakeNvml):
    """A backend whose first wait fails with a bug (not an NVML error)."""

    crashes_left = 1

    def event_set_wait(self, event_set: object, timeout_ms: int) -> NvmlEvent:
        if self.crashes_left:
            self.crashes_left -= 1
            raise RuntimeError("bug in the backend")
        return super().event_set_wait(event_set, timeout_ms)


async def test_a_crashed_watcher_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    fake = CrashingNvml(FakeLayout.of(1))
    fake.init()
    inventory = discover(fake)
    state = NodeState(inventory, build_resources(inventory, Config()))
    async with watching(fake, state) as watcher:
        await eventually(lambda: watcher.stats.restarts >= 1)
        await eventually(lambda: fake.event_stats()["event_sets"] == 1)
        fake.inject_xid(0, 79)
        await until(lambda: uuid(state, 0) in state.unhealthy, state)
    crashes = [r for r in caplog.records if r.message.startswith("task health crashed")]
    assert [r.message for r in crashes] == ["task health crashed: RuntimeError: bug in the backend"]
    assert crashes[0].exc_info is not None  # the traceback is logged with it
    assert any(r.message.startswith("restarting task health in") for r in caplog.records)


async def test_cancellation_during_a_wait_is_prompt_and_frees_the_event_set() -> None:
    fake, state = make(2)
    watcher = HealthWatcher(fake, state, DEFAULT_POLICY)  # the default 500 ms wait
    async with anyio.create_task_group() as tg:
        tg.start_soon(watcher.run)
        await watcher.ready.wait()
        waits = watcher.stats.waits
        await eventually(lambda: watcher.stats.waits > waits)  # now inside a blocking wait
        assert fake.event_stats()["event_sets"] == 1
        started = time.monotonic()
        tg.cancel_scope.cancel()
    # run() returns at once: the wait thread is abandoned, and leaves within one wait timeout,
    # freeing the event set on its way out (NVML may shut down after wait_stopped()).
    assert time.monotonic() - started < 0.2
    assert await anyio.to_thread.run_sync(watcher.wait_stopped, 2.0)
    assert fake.event_stats()["event_sets"] == 0


async def test_a_gpu_without_events_is_reported_once_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    fake, state = make(2)
    fake.set_supported_events(1, 0x4)  # only PState changes: none of the health events
    async with watching(fake, state) as watcher:
        fake.inject_xid(0, 79)
        await until(lambda: uuid(state, 0) in state.unhealthy, state)
        assert watcher.stats.registered == 1 and watcher.stats.unsupported == 1
        # a new inventory makes the watcher register again; the warning is not repeated
        state.replace(replace(state.inventory, gpus=state.inventory.gpus[1:]), state.resources)
        await eventually(lambda: watcher.stats.registrations == 2)
    warnings = [r for r in caplog.records if "supports none of the XID and ECC events" in r.message]
    assert len(warnings) == 1
    assert watcher.stats.registered == 0  # the new inventory holds only the GPU without events


async def test_disabled_policy_starts_no_watcher(plugin_dir: Path) -> None:
    fake = FakeNvml(FakeLayout.of(1))
    config = Config(kubelet_socket=str(plugin_dir / "kubelet.sock"), metrics_address=None)
    async with running_agent(config, fake, health_policy=HealthPolicy(all_disabled=True)) as agent:
        assert agent.health is None
        assert fake.event_stats()["event_sets"] == 0
