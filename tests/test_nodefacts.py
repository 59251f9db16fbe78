"""read_node_facts over the fake backend: every fact through the Nvml interface, and how each
failure degrades (to what GFD writes when it cannot tell, never to a stopped labeller)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nvplugin.core.gpufacts import FABRIC_STATE_COMPLETED, FabricInfo, Vgpu, VgpuHostDriver
from nvplugin.core.inventory import Inventory
from nvplugin.nodefacts import read_node_facts
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.fake import FakeNvml, parse_layout

CLUSTER = "0b1f0a54-7a2c-4d8e-9c7e-3f2a1b0c9d8e"


def started(layout: dict[str, object]) -> tuple[FakeNvml, Inventory]:
    nvml = FakeNvml(parse_layout(layout))
    nvml.init()
    return nvml, discover(nvml)


def test_facts_of_a_described_node(tmp_path: Path) -> None:
    machine = tmp_path / "product_name"
    machine.write_text("ThinkSystem SR675 V3\n")
    nvml, inventory = started(
        {
            "gpu": {"fabric": {"clusterUuid": CLUSTER, "cliqueId": 4}},
            "gpus": [{"migCapable": False}, {"pciClass": "0x030000"}],
        }
    )
    facts = read_node_facts(nvml, inventory, machine_type_file=str(machine), clock=lambda: 1764115200.7)
    assert facts.machine == "ThinkSystem SR675 V3"
    assert facts.timestamp == 1764115200
    assert facts.mig_capable  # GPU 1 supports nvmlDeviceGetMigMode
    assert facts.pci_classes == (0x030200, 0x030000)
    assert facts.fabrics == (FabricInfo(CLUSTER, 4, FABRIC_STATE_COMPLETED, 0),) * 2
    assert facts.vgpu == Vgpu(present=False)


def test_no_gpu_supports_mig_and_none_has_a_fabric() -> None:
    nvml, inventory = started({"gpu": {"name": "NVIDIA L40S", "computeCapability": "8.9"}, "count": 2})
    facts = read_node_facts(nvml, inventory, machine_type_file="/nonexistent", timestamp=False)
    assert not facts.mig_capable
    assert facts.fabrics == ()
    assert facts.timestamp is None and facts.machine == "unknown"


def test_unreadable_facts_degrade_one_by_one(caplog: pytest.LogCaptureFixture) -> None:
    nvml, inventory = started({"count": 2})
    # after discovery: a GPU failing these calls during it would be left out altogether
    nvml.inject_device_fault(0, "device_pci_class", "unknown")
    nvml.inject_device_fault(0, "device_mig_enabled", "unknown")
    nvml.inject_device_fault(1, "device_fabric_info", "gpu-lost")
    caplog.set_level(logging.WARNING, "nvplugin.nodefacts")
    facts = read_node_facts(nvml, inventory, machine_type_file="/nonexistent", timestamp=False)
    assert facts.pci_classes == (None, 0x030200)  # gpu.mode unknown, as GFD
    assert facts.mig_capable  # GPU 1 still answers
    assert facts.fabrics is None  # no clique label rather than a guess
    assert facts.vgpu == Vgpu(present=False)
    text = caplog.text
    assert "PCI class of GPU 0 unreadable" in text and "gpu.mode=unknown" in text
    assert "GPU fabric of GPU 1 unreadable" in text and "no nvidia.com/gpu.clique label" in text


def test_vgpu_guest_with_its_host_driver() -> None:
    driver = {"version": "550.90.05", "branch": "r550_00"}
    nvml, inventory = started({"count": 2, "gpu": {"vgpuHostDriver": driver}})
    facts = read_node_facts(nvml, inventory, machine_type_file="/nonexistent", timestamp=False)
    assert facts.vgpu == Vgpu(True, VgpuHostDriver("550.90.05", "r550_00"))


def test_vgpu_scan_refused_falls_back_to_the_virtualization_mode(caplog: pytest.LogCaptureFixture) -> None:
    """Without CAP_SYS_ADMIN the PCI scan cannot run; NVML still tells a vGPU guest apart."""
    caplog.set_level(logging.INFO, "nvplugin.nodefacts")
    scan_refused = {"node": {"vgpu_devices": "not-supported"}}
    nvml, inventory = started({"count": 2, "gpu": {"virtualizationMode": "vgpu"}, "faults": scan_refused})
    facts = read_node_facts(nvml, inventory, machine_type_file="/nonexistent", timestamp=False)
    assert facts.vgpu == Vgpu(present=True, host_driver=None)
    assert "needs CAP_SYS_ADMIN" in caplog.text
    nvml, inventory = started(
        {"count": 1, "gpu": {"virtualizationMode": "passthrough"}, "faults": scan_refused}
    )
    assert read_node_facts(nvml, inventory, timestamp=False).vgpu == Vgpu(present=False)
    # neither the scan nor NVML can tell: no vgpu labels at all (GFD writes none then either)
    scan_refused["devices"] = {"0": {"device_virtualization_mode": "unknown"}}  # type: ignore[dict-item]
    nvml, inventory = started({"count": 1, "faults": scan_refused})
    assert read_node_facts(nvml, inventory, timestamp=False).vgpu is None


def test_facts_without_gpus() -> None:
    nvml, inventory = started({"count": 0})
    facts = read_node_facts(nvml, inventory, machine_type_file="/nonexistent", timestamp=False)
    assert facts.pci_classes == () and facts.fabrics == () and not facts.mig_capable
    assert facts.vgpu == Vgpu(present=False)
