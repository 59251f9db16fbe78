"""The health watcher inside the real agent, seen from the kubelet simulator."""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from grpclib import GRPCError

from nvplugin.agent import Agent
from nvplugin.commands import inject_xid
from nvplugin.core.config import Config
from nvplugin.core.resources import GPU_RESOURCE
from nvplugin.core.xid import DEFAULT_POLICY, RecoveryPolicy
from nvplugin.nvml.fake import FakeNvml, load_layout
from nvplugin.simulate.kubelet import KubeletSimulator
from tests.conftest import eventually, fake_nvml, nvplugin_process

pytestmark = pytest.mark.anyio
FAST = replace(
    DEFAULT_POLICY, recovery=RecoveryPolicy(enabled=True, quiet_period_s=0.3, probe_interval_s=0.05)
)


@asynccontextmanager
async def agent_with_health(config: Config, nvml: FakeNvml, control: str) -> AsyncIterator[Agent]:
    """The agent as `run --fake-gpus` will run it: the watcher and the control socket are tasks."""
    agent = Agent(config, nvml, handle_signals=False, health_policy=FAST, fake_control=control)
    async with anyio.create_task_group() as tg:
        tg.start_soon(agent.run)
        with anyio.fail_after(5):
            await agent.wait_started()
        await eventually(lambda: Path(control).exists(), what="the control socket")
        try:
            yield agent
        finally:
            tg.cancel_scope.cancel()


def command(control: str, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    inject_xid.add_parser(parser.add_subparsers())
    return inject_xid.run(parser.parse_args(["inject-xid", "--control", control, *argv]))


@pytest.fixture
def control(plugin_dir: Path) -> str:
    # beside the plugin directory, never inside it
    return str(plugin_dir.parent / f"{plugin_dir.name}-fake.sock")


async def test_injected_xid_reaches_the_kubelet_and_allocate_refuses(
    kubelet: KubeletSimulator, config: Config, control: str
) -> None:
    nvml = fake_nvml(4)
    async with agent_with_health(config, nvml, control):
        plugin = await kubelet.wait_registered(GPU_RESOURCE)
        assert plugin.allocatable == 4
        sick = nvml.layout.gpus[2].uuid
        assert await anyio.to_thread.run_sync(command, control, "--gpu", "2", "--xid", "79") == 0
        plugin = await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.devices[sick] == "Unhealthy")
        assert plugin.allocatable == 3 and plugin.capacity == 4
        with pytest.raises(GRPCError) as refused:
            await kubelet.allocate(GPU_RESOURCE, [sick])
        assert "XID 79 on GPU 2, needs reboot" in (refused.value.message or "")
        healthy = nvml.layout.gpus[0].uuid
        response = await kubelet.allocate(GPU_RESOURCE, [healthy])
        assert response.envs["NVIDIA_VISIBLE_DEVICES"] == healthy
        # an ignored XID changes nothing the kubelet sees: once the XID sent after it has
        # reached the kubelet, that is the only change
        updates = plugin.updates
        assert await anyio.to_thread.run_sync(command, control, "--gpu", "0", "--xid", "13") == 0
        assert await anyio.to_thread.run_sync(command, control, "--gpu", "1", "--xid", "79") == 0
        plugin = await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.allocatable == 2)
        assert plugin.updates == updates + 1 and plugin.devices[healthy] == "Healthy"


async def test_recovery_brings_the_device_back(
    kubelet: KubeletSimulator, config: Config, control: str
) -> None:
    nvml = fake_nvml(2)
    async with agent_with_health(config, nvml, control):
        await kubelet.wait_registered(GPU_RESOURCE)
        uuid = nvml.layout.gpus[1].uuid
        assert await anyio.to_thread.run_sync(command, control, "--gpu", "1", "--xid", "95") == 0
        await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.allocatable == 1)
        # An application-class XID on GPU 0, later: once it has recovered, GPU 1's fault is past
        # its quiet period too, yet a reset-class fault waits for the reset.
        assert await anyio.to_thread.run_sync(command, control, "--gpu", "0", "--xid", "8") == 0
        await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.allocatable == 0)
        await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.allocatable == 1)
        assert kubelet.plugins[GPU_RESOURCE].devices[uuid] == "Unhealthy"
        assert await anyio.to_thread.run_sync(command, control, "--gpu", "1", "--reset") == 0
        plugin = await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.allocatable == 2)
        assert plugin.devices[uuid] == "Healthy"


async def test_lost_gpu_leaves_the_rest_allocatable(
    kubelet: KubeletSimulator, config: Config, control: str
) -> None:
    nvml = fake_nvml(4)
    async with agent_with_health(config, nvml, control):
        await kubelet.wait_registered(GPU_RESOURCE)
        assert await anyio.to_thread.run_sync(command, control, "--gpu", "3", "--lose") == 0
        plugin = await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.allocatable == 3)
        assert [h for h in plugin.devices.values()].count("Unhealthy") == 1
        assert plugin.devices[nvml.layout.gpus[3].uuid] == "Unhealthy"
        response = await kubelet.allocate(GPU_RESOURCE, [nvml.layout.gpus[1].uuid])
        assert response.envs["NVIDIA_VISIBLE_DEVICES"] == nvml.layout.gpus[1].uuid


async def test_agent_stops_promptly_during_a_wait(
    kubelet: KubeletSimulator, config: Config, control: str
) -> None:
    nvml = fake_nvml(2)
    async with agent_with_health(config, nvml, control) as agent:
        await kubelet.wait_registered(GPU_RESOURCE)
        await eventually(lambda: agent.health is not None, what="the health watcher")
        assert agent.health is not None
        waits = agent.health.stats.waits
        await eventually(lambda: agent.health is not None and agent.health.stats.waits > waits)
        started = time.monotonic()  # the watcher is inside a blocking NVML wait
        agent.stop()
        with anyio.fail_after(2):
            while agent.started is not None and nvml.event_stats()["event_sets"]:  # noqa: ASYNC110
                await anyio.sleep(0.01)
    assert time.monotonic() - started < 1.0
    assert not await anyio.Path(control).exists()


def test_a_control_socket_in_the_plugin_dir_is_a_usage_error(config: Config) -> None:
    proc = nvplugin_process(
        "run",
        "--fake-gpus",
        "1",
        "--kubelet-socket",
        config.kubelet_socket,
        "--fake-control",
        str(Path(config.plugin_dir) / "fake.sock"),
    )
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert "must not be in the kubelet's device-plugin directory" in err


async def test_mig_event_reaches_only_its_mig_device(
    kubelet: KubeletSimulator, config: Config, control: str
) -> None:
    layout = Path(__file__).resolve().parents[1] / "nvplugin/nvml/layouts/mig-mixed-2gpu.yaml"
    nvml = FakeNvml(load_layout(str(layout)))
    async with agent_with_health(config.with_changes(mig_strategy="mixed"), nvml, control):
        await kubelet.wait_registered("nvidia.com/mig-1g.10gb")
        assert (
            await anyio.to_thread.run_sync(
                command, control, "--gpu", "0", "--xid", "94", "--gi", "3", "--ci", "0"
            )
            == 0
        )
        plugin = await kubelet.wait_devices(
            "nvidia.com/mig-1g.10gb", lambda p: p.allocatable == p.capacity - 1
        )
        sick = [d for d, h in plugin.devices.items() if h == "Unhealthy"]
        assert len(sick) == 1
        # every other resource, including the other MIG devices of GPU 0, stays whole
        for name in ("nvidia.com/mig-3g.40gb", "nvidia.com/mig-2g.20gb", "nvidia.com/mig-4g.40gb"):
            view = kubelet.plugins[name]
            assert view.allocatable == view.capacity
        # a parent-level XID on GPU 0 takes every MIG device on it, and nothing on GPU 1
        assert await anyio.to_thread.run_sync(command, control, "--gpu", "0", "--xid", "79") == 0
        await kubelet.wait_devices("nvidia.com/mig-3g.40gb", lambda p: p.allocatable == 0)
        await kubelet.wait_devices("nvidia.com/mig-2g.20gb", lambda p: p.allocatable == 0)
        assert kubelet.plugins["nvidia.com/mig-4g.40gb"].allocatable == 1
        assert kubelet.plugins["nvidia.com/mig-1g.10gb"].allocatable == 1  # GPU 1's 1g.10gb
