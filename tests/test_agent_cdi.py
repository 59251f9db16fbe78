"""The agent writes the CDI spec its CDI device names resolve in: at start, and again on reload
(before it serves the new configuration); an unwritable spec stops start-up with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nvplugin.agent import Agent, AgentError
from nvplugin.configload import ConfigSource
from nvplugin.core.allocation import CDI_DEVICE_KIND
from nvplugin.core.config import Config, DeviceListStrategy
from nvplugin.core.resources import GPU_RESOURCE
from nvplugin.nvml.fake import FakeLayout, FakeNvml
from nvplugin.simulate.kubelet import KubeletSimulator
from nvplugin.testing.driverroot import make_driver_root
from tests.conftest import running_agent

pytestmark = pytest.mark.anyio
SPEC = "k8s.device-plugin.nvidia.com-gpu.json"


def cdi_config(plugin_dir: Path, tmp_path: Path, gpus: int) -> Config:
    root = make_driver_root(tmp_path / "driver", "580.159.04", gpu_minors=range(gpus))
    return Config(
        kubelet_socket=str(plugin_dir / "kubelet.sock"),
        metrics_address=None,
        device_list_strategy=(DeviceListStrategy.CDI_CRI,),
        nvidia_driver_root=str(root.root),
        cdi_spec_dir=str(tmp_path / "cdi"),
    )


def spec_names(tmp_path: Path) -> set[str]:
    spec = json.loads((tmp_path / "cdi" / SPEC).read_text())
    assert spec["kind"] == CDI_DEVICE_KIND
    return {f"{spec['kind']}={d['name']}" for d in spec["devices"]}


async def test_every_cdi_name_allocate_returns_resolves_in_the_written_spec(
    plugin_dir: Path, tmp_path: Path, kubelet: KubeletSimulator
) -> None:
    config = cdi_config(plugin_dir, tmp_path, 2)
    async with running_agent(config, FakeNvml(FakeLayout.of(2))):
        plugin = await kubelet.wait_registered(GPU_RESOURCE)
        response = await kubelet.allocate(GPU_RESOURCE, list(plugin.devices))
        names = [d.name for d in response.cdi_devices]
        assert len(names) == 2
        assert set(names) <= spec_names(tmp_path)


async def test_a_reload_rewrites_the_spec_before_serving(
    plugin_dir: Path, tmp_path: Path, kubelet: KubeletSimulator
) -> None:
    config = cdi_config(plugin_dir, tmp_path, 2)
    file = tmp_path / "config.yaml"
    file.write_text("version: v1\n")
    flags = {
        "kubelet_socket": config.kubelet_socket,
        "metrics_address": "off",
        "device_list_strategy": "cdi-cri",
        "nvidia_driver_root": config.nvidia_driver_root,
        "cdi_spec_dir": config.cdi_spec_dir,
        "device_id_strategy": "index",
        "config_file": str(file),
    }
    source = ConfigSource(flags)
    async with running_agent(source.load(), FakeNvml(FakeLayout.of(2)), config_source=source) as agent:
        await kubelet.wait_registered(GPU_RESOURCE)
        file.write_text(
            "version: v1\nsharing:\n  timeSlicing:\n    resources:\n"
            "      - name: nvidia.com/gpu\n        replicas: 2\n"
        )
        assert await agent.reload()
        plugin = await kubelet.wait_registered(GPU_RESOURCE, count=2)
        response = await kubelet.allocate(GPU_RESOURCE, list(plugin.devices)[:1])
        assert {d.name for d in response.cdi_devices} <= spec_names(tmp_path)
        assert f"{CDI_DEVICE_KIND}=0" in spec_names(tmp_path)


async def test_a_spec_that_cannot_be_written_stops_start_up(plugin_dir: Path, tmp_path: Path) -> None:
    config = cdi_config(plugin_dir, tmp_path, 1)
    (tmp_path / "cdi").write_text("a file where the spec directory should be")
    agent = Agent(
        config, FakeNvml(FakeLayout.of(1)), handle_signals=False, fake_control=f"{plugin_dir}-f.sock"
    )
    with pytest.raises(AgentError, match="CDI spec") as refused:
        await agent.run()
    assert str(tmp_path / "cdi") in str(refused.value)


async def test_fake_gpus_without_a_driver_serve_without_a_spec(plugin_dir: Path, tmp_path: Path) -> None:
    config = cdi_config(plugin_dir, tmp_path, 1).with_changes(nvidia_driver_root=str(tmp_path / "nothing"))
    async with KubeletSimulator(plugin_dir) as kubelet, running_agent(config, FakeNvml(FakeLayout.of(1))):
        await kubelet.wait_registered(GPU_RESOURCE)
    assert not (tmp_path / "cdi" / SPEC).exists()
