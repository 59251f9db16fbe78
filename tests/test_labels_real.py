"""On a real NVIDIA GPU: the label facts the real backend reads (MIG mode, virtualization mode,
fabric, PCI class, the vGPU scan) against what nvidia-smi and sysfs say, and the labels they
give. Skipped where NVML cannot be initialised; run there with `pytest -m nvml -s`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from nvplugin.core.gpufacts import FABRIC_STATE_COMPLETED, FABRIC_STATE_NOT_SUPPORTED, VIRTUALIZATION_VGPU
from nvplugin.nvml.base import NvmlNotSupported, normalize_bus_id
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.real import RealNvml

pytestmark = pytest.mark.nvml

# nvidia-smi's virtualization_mode values, lowercased without spaces and dashes.
SMI_VIRTUALIZATION = {"none": 0, "passthrough": 1, "vgpu": 2, "hostvgpu": 3, "hostvsga": 4}


@pytest.fixture
def nvml() -> RealNvml:
    backend = RealNvml()
    try:
        backend.init()
    except Exception as exc:
        pytest.skip(f"no real NVML here: {exc}")
    if shutil.which("nvidia-smi") is None:
        backend.shutdown()
        pytest.skip("nvidia-smi not found")
    return backend


def smi_query(field: str) -> list[str] | None:
    """One value per GPU, or None where this nvidia-smi does not know the field."""
    result = subprocess.run(
        ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        return None
    return [line.strip() for line in result.stdout.strip().splitlines()]


def smi_fabric() -> list[dict[str, str]]:
    """The Fabric section of `nvidia-smi -q` for each GPU (empty where there is none)."""
    text = subprocess.run(["nvidia-smi", "-q"], capture_output=True, text=True, check=True).stdout
    sections: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith("GPU "):
            sections.append({})
            current = None
        elif line.strip() == "Fabric" and sections:
            current = sections[-1]
            indent = len(line) - len(line.lstrip())
        elif current is not None:
            if len(line) - len(line.lstrip()) <= indent:
                current = None
            elif ":" in line:
                key, _, value = line.partition(":")
                current.setdefault(key.strip(), value.strip())
    return sections


def test_mig_and_virtualization_modes_agree_with_nvidia_smi(nvml: RealNvml) -> None:
    try:
        inventory = discover(nvml)
        mig_modes = smi_query("mig.mode.current")
        virtualization = smi_query("virtualization_mode")
        for gpu in inventory.gpus:
            if mig_modes is not None:
                smi = mig_modes[gpu.index]
                if smi in ("[N/A]", "N/A"):
                    with pytest.raises(NvmlNotSupported):
                        nvml.device_mig_enabled(gpu.index)
                else:
                    assert nvml.device_mig_enabled(gpu.index) == (smi == "Enabled")
            if virtualization is not None:
                expected = SMI_VIRTUALIZATION[
                    virtualization[gpu.index].lower().replace(" ", "").replace("-", "")
                ]
                assert nvml.device_virtualization_mode(gpu.index) == expected
    finally:
        nvml.shutdown()


def test_pci_class_and_fabric_agree_with_sysfs_and_nvidia_smi(nvml: RealNvml) -> None:
    try:
        inventory = discover(nvml)
        fabrics = smi_fabric()
        for gpu in inventory.gpus:
            sysfs = Path("/sys/bus/pci/devices", normalize_bus_id(gpu.pci_bus_id), "class").read_text()
            assert nvml.device_pci_class(gpu.index) == int(sysfs, 16)
            smi = fabrics[gpu.index] if gpu.index < len(fabrics) else {}
            state = smi.get("State", "N/A")
            try:
                info = nvml.device_fabric_info(gpu.index)
            except NvmlNotSupported:
                assert state == "N/A", f"GPU {gpu.index}: nvidia-smi says fabric state {state}"
                continue
            print(f"GPU {gpu.index} fabric: {info} (nvidia-smi: {smi})")
            if state == "Completed":
                assert info.state == FABRIC_STATE_COMPLETED
                assert info.cluster_uuid == smi["ClusterUUID"].lower()
                assert str(info.clique_id) == smi["CliqueId"]
            elif state == "N/A":
                assert info.state == FABRIC_STATE_NOT_SUPPORTED
    finally:
        nvml.shutdown()


def test_vgpu_scan_agrees_with_the_virtualization_mode(nvml: RealNvml) -> None:
    try:
        inventory = discover(nvml)
        guest = any(nvml.device_virtualization_mode(g.index) == VIRTUALIZATION_VGPU for g in inventory.gpus)
    finally:
        nvml.shutdown()
    try:
        found = nvml.vgpu_devices()
    except NvmlNotSupported as exc:
        pytest.skip(f"the PCI scan needs CAP_SYS_ADMIN here: {exc}")
    assert bool(found) == guest
