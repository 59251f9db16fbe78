"""On a real NVIDIA GPU (the GPU test machine): discovery, registration and Allocate.

Skipped where NVML cannot be initialised (CI). Run there with `pytest -m nvml -s`.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from nvplugin.core.config import Config
from nvplugin.core.resources import GPU_RESOURCE
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.real import RealNvml
from nvplugin.simulate.kubelet import KubeletSimulator
from tests.conftest import running_agent


def _nvml_or_skip() -> RealNvml:
    nvml = RealNvml()
    try:
        nvml.init()
    except Exception as exc:
        pytest.skip(f"no real NVML here: {exc}")
    return nvml


def _smi(query: str) -> list[list[str]]:
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi not found")
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [[field.strip() for field in line.split(",")] for line in out.strip().splitlines()]


@pytest.mark.nvml
def test_discovery_matches_nvidia_smi() -> None:
    nvml = _nvml_or_skip()
    try:
        inventory = discover(nvml)
    finally:
        nvml.shutdown()
    rows = _smi("index,uuid,name,memory.total,driver_version,pci.bus_id,compute_cap")
    assert len(inventory.gpus) == len(rows)
    for gpu, (index, uuid, name, memory_mib, driver, bus_id, cc) in zip(inventory.gpus, rows, strict=True):
        print(f"GPU {gpu.index}: {gpu}")
        assert gpu.index == int(index)
        assert gpu.uuid == uuid
        assert gpu.name == name
        assert gpu.memory_mib == int(memory_mib)
        assert inventory.driver_version == driver
        assert gpu.pci_bus_id.lower() == bus_id.lower()
        assert f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}" == cc
        assert gpu.device_node == f"/dev/nvidia{gpu.minor}"
    print(f"driver {inventory.driver_version}, CUDA driver API {inventory.cuda_driver_version}")
    assert not inventory.problems


@pytest.mark.nvml
@pytest.mark.anyio
async def test_agent_registers_real_gpus_and_allocates(plugin_dir: object, config: Config) -> None:
    nvml = _nvml_or_skip()
    nvml.shutdown()
    uuids = [row[0] for row in _smi("uuid")]
    async with KubeletSimulator(config.plugin_dir) as kubelet, running_agent(config, RealNvml()):
        plugin = await kubelet.wait_registered(GPU_RESOURCE, timeout=10)
        assert list(plugin.devices) == uuids
        assert set(plugin.devices.values()) == {"Healthy"}
        response = await kubelet.allocate(GPU_RESOURCE, uuids[:1])
        print(f"registered {plugin.resource_name}: {plugin.devices}; Allocate envs {response.envs}")
        assert response.envs == {"NVIDIA_VISIBLE_DEVICES": uuids[0]}
