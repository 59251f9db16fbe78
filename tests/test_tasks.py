"""The task guard, and the agent's declared tasks wired as they run in production."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest

from nvplugin.agent import TASKS
from nvplugin.core.address import ListenAddress
from nvplugin.core.config import Config
from nvplugin.core.resources import GPU_RESOURCE
from nvplugin.nvml.fake import FakeLayout, FakeNvml
from nvplugin.simulate.kubelet import KubeletSimulator
from nvplugin.tasks import Backoff, StopAgent, TaskFailed, TaskSpec, guarded
from tests.conftest import eventually, running_agent
from tests.test_health import CrashingNvml

pytestmark = pytest.mark.anyio

QUICK = Backoff(initial=0.001, cap=0.002)


class Script:
    """A task body that fails in the given ways, one per run, then waits to be cancelled."""

    def __init__(self, *outcomes: BaseException | None) -> None:
        self.outcomes = list(outcomes)
        self.runs = 0
        self.parked = anyio.Event()

    async def __call__(self, owner: object) -> None:
        self.runs += 1
        if self.outcomes:
            outcome = self.outcomes.pop(0)
            if outcome is not None:
                raise outcome
            return
        self.parked.set()
        await anyio.sleep_forever()


async def run_until_parked(spec: TaskSpec[object], script: Script) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(guarded, spec, None)
        with anyio.fail_after(5):
            await script.parked.wait()
        tg.cancel_scope.cancel()


async def test_a_crash_is_logged_with_its_cause_and_the_task_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Script(RuntimeError("boom"), ValueError("again"))
    await run_until_parked(TaskSpec("worker", script, restart=QUICK), script)
    assert script.runs == 3
    crashes = [r.getMessage() for r in caplog.records if "crashed" in r.getMessage()]
    assert crashes == ["task worker crashed: RuntimeError: boom", "task worker crashed: ValueError: again"]


async def test_a_crash_inside_a_task_group_names_the_real_cause(caplog: pytest.LogCaptureFixture) -> None:
    async def nested(owner: object) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(script, owner)

    script = Script(KeyError("inner"))
    await run_until_parked(TaskSpec("outer", nested, restart=QUICK), script)
    assert "task outer crashed: KeyError: 'inner'" in caplog.text


async def test_an_expected_failure_is_one_line_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    script = Script(TaskFailed("port 8080 is taken"))
    await run_until_parked(TaskSpec("metrics", script, restart=QUICK), script)
    failed = [r for r in caplog.records if r.getMessage() == "task metrics failed: port 8080 is taken"]
    assert len(failed) == 1 and failed[0].exc_info is None


async def test_an_unexpected_end_is_a_fault_and_a_normal_end_is_not(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    script = Script(None)
    await run_until_parked(TaskSpec("server", script, restart=QUICK), script)
    assert script.runs == 2 and "task server ended unexpectedly" in caplog.text

    finishing = Script(None)
    await guarded(TaskSpec("oneshot", finishing, may_finish=True), None)  # returns: its normal end
    assert finishing.runs == 1 and "task oneshot ended unexpectedly" not in caplog.text


async def test_a_task_without_restart_policy_stops_the_agent() -> None:
    script = Script(RuntimeError("broken"))
    with pytest.raises(StopAgent, match="signals: RuntimeError: broken"):
        await guarded(TaskSpec("signals", script, restart=None), None)


def test_backoff_doubles_to_its_cap_and_resets_after_a_healthy_run() -> None:
    delays = Backoff(initial=1.0, cap=4.0, healthy_after=30.0).delays()
    observed = [delays(0.1) for _ in range(4)]
    for got, nominal in zip(observed, (1.0, 2.0, 4.0, 4.0), strict=True):
        assert 0.75 * nominal <= got <= 1.25 * nominal
    assert 0.75 <= delays(31.0) <= 1.25


def test_every_declared_task_has_a_unique_name() -> None:
    names = [spec.name for spec in TASKS]
    assert len(names) == len(set(names))


async def test_the_agent_restarts_a_crashed_health_watcher(
    plugin_dir: Path, kubelet: KubeletSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    nvml = CrashingNvml(FakeLayout.of(2))
    config = Config(kubelet_socket=str(plugin_dir / "kubelet.sock"), metrics_address=None)
    async with running_agent(config, nvml, fake_control=str(plugin_dir) + "-fake.sock") as agent:
        await kubelet.wait_registered(GPU_RESOURCE)
        await eventually(lambda: agent.health is not None, what="the health watcher")
        assert agent.health is not None
        await eventually(lambda: agent.health is not None and agent.health.stats.registrations == 2)
        nvml.inject_xid(1, 79)
        plugin = await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.allocatable == 1)
        assert plugin.devices[nvml.layout.gpus[1].uuid] == "Unhealthy"
    assert "task health crashed: RuntimeError: bug in the backend" in caplog.text


async def test_xids_reach_the_metrics(plugin_dir: Path, kubelet: KubeletSimulator) -> None:
    nvml = FakeNvml(FakeLayout.of(2))
    config = Config(
        kubelet_socket=str(plugin_dir / "kubelet.sock"), metrics_address=ListenAddress("127.0.0.1", 0)
    )
    async with running_agent(config, nvml, fake_control=str(plugin_dir) + "-fake.sock") as agent:
        await kubelet.wait_registered(GPU_RESOURCE)
        await eventually(lambda: agent.health is not None, what="the health watcher")
        assert agent.health is not None
        await agent.health.ready.wait()
        nvml.inject_xid(0, 13)  # ignored by the policy, still counted
        nvml.inject_xid(1, 79)
        await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.allocatable == 1)
        await eventually(lambda: agent.metrics.value("health_transitions", GPU_RESOURCE, "unhealthy") == 1)
        assert agent.metrics.value("xid_events", "13") == 1
        assert agent.metrics.value("xid_events", "79") == 1
        assert agent.metrics.value("devices", GPU_RESOURCE, "unhealthy") == 1
