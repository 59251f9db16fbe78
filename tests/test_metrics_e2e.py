"""End to end: the agent with its metrics endpoint, against the kubelet simulator."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nvplugin.core.address import ListenAddress
from nvplugin.core.config import Config
from nvplugin.simulate.kubelet import KubeletSimulator
from tests.conftest import running_agent

GPU = "nvidia.com/gpu"


async def get(port: int, path: str) -> tuple[int, str]:
    def call() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    return await anyio.to_thread.run_sync(call)


def value(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


@pytest.mark.anyio
async def test_scrape_during_a_run(plugin_dir: Path) -> None:
    config = Config(
        kubelet_socket=str(plugin_dir / "kubelet.sock"), metrics_address=ListenAddress("127.0.0.1", 0)
    )
    async with KubeletSimulator(plugin_dir, dial_timeout=2.0) as kubelet, running_agent(config) as agent:
        plugin = await kubelet.wait_registered(GPU)
        with anyio.fail_after(5):
            while agent.metrics_server is None or agent.metrics_server.port is None:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        port = agent.metrics_server.port
        status, body = await get(port, "/readyz")
        assert status == 200, body
        text = (await get(port, "/metrics"))[1]
        assert value(text, "nvplugin_registrations_total", resource=GPU, result="ok") == 1
        assert value(text, "nvplugin_devices", resource=GPU, health="healthy") == 4

        await kubelet.allocate(GPU, [next(iter(plugin.devices))])
        text = (await get(port, "/metrics"))[1]
        assert value(text, "nvplugin_allocations_total", resource=GPU, result="ok") == 1
        assert value(text, "nvplugin_allocation_seconds_count", resource=GPU) == 1

        await kubelet.preferred(GPU, list(plugin.devices), [], 2)
        text = (await get(port, "/metrics"))[1]
        assert value(text, "nvplugin_preferred_allocations_total", resource=GPU, result="ok") == 1
        assert value(text, "nvplugin_preferred_allocation_seconds_count", resource=GPU) == 1

        uuid = next(iter(plugin.devices))
        agent.state.mark_unhealthy(uuid, "XID 79")
        agent.metrics.xid(79)  # what the health watcher will do on the event
        await kubelet.wait_devices(GPU, lambda p: p.allocatable == 3)
        text = (await get(port, "/metrics"))[1]
        assert value(text, "nvplugin_xid_events_total", code="79") == 1
        assert value(text, "nvplugin_devices", resource=GPU, health="unhealthy") == 1
        assert value(text, "nvplugin_health_transitions_total", resource=GPU, to="unhealthy") == 1

        await kubelet.restart()
        await kubelet.wait_registered(GPU, count=2)
        with anyio.fail_after(5):
            while True:
                text = (await get(port, "/metrics"))[1]
                if value(text, "nvplugin_registrations_total", resource=GPU, result="ok") == 2:
                    break
        assert value(text, "nvplugin_kubelet_restarts_total") == 1
        assert (await get(port, "/healthz"))[0] == 200
