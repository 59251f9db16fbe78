"""The real backend's sysfs reads (PCI class, the vGPU scan) over a sysfs tree written to disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from nvplugin.core.gpufacts import VgpuDevice, VgpuHostDriver
from nvplugin.nvml.base import NvmlError, NvmlNotSupported
from nvplugin.nvml.pci import device_dir, read_pci_class, scan_vgpus
from nvplugin.nvml.real import RealNvml
from tests.pciconfig import config_space, passthrough_capability, vgpu_capability, write_pci_device


def test_device_dir_takes_nvml_bus_ids(tmp_path: Path) -> None:
    assert device_dir("/sys", "00000000:00:06.0") == "/sys/bus/pci/devices/0000:00:06.0"
    assert device_dir("/sys", "00000001:AB:00.0") == "/sys/bus/pci/devices/0001:ab:00.0"


def test_pci_class(tmp_path: Path) -> None:
    write_pci_device(tmp_path, "0000:18:00.0", config_space(None), pci_class="0x030200")
    write_pci_device(tmp_path, "0000:28:00.0", config_space(None), pci_class="0x030000")
    write_pci_device(tmp_path, "0000:38:00.0", config_space(None), pci_class="garbage")
    assert read_pci_class(str(tmp_path), "00000000:18:00.0") == 0x030200
    assert read_pci_class(str(tmp_path), "00000000:28:00.0") == 0x030000
    with pytest.raises(NvmlError, match=r"0000:38:00.0/class: expected a hex class code .*'garbage'"):
        read_pci_class(str(tmp_path), "00000000:38:00.0")
    with pytest.raises(NvmlError, match=r"cannot read .*0000:48:00.0/class"):
        read_pci_class(str(tmp_path), "00000000:48:00.0")


def test_vgpu_scan_finds_vgpus_among_nvidia_functions(tmp_path: Path) -> None:
    write_pci_device(tmp_path, "0000:00:05.0", config_space(vgpu_capability("550.90.05", "r550_00")))
    write_pci_device(tmp_path, "0000:00:06.0", config_space(passthrough_capability()))
    # another vendor's device is never read past its vendor file, whatever its config holds
    write_pci_device(tmp_path, "0000:00:01.0", b"\0" * 64, vendor="0x8086", pci_class="0x060000")
    found = scan_vgpus(str(tmp_path))
    assert found == (VgpuDevice("0000:00:05.0", VgpuHostDriver("550.90.05", "r550_00")),)
    # the backend's own entry point needs no nvmlInit
    assert RealNvml(sysfs_root=str(tmp_path)).vgpu_devices() == found


def test_vgpu_scan_on_a_node_without_nvidia_devices(tmp_path: Path) -> None:
    write_pci_device(tmp_path, "0000:00:01.0", b"\0" * 64, vendor="0x8086")
    assert scan_vgpus(str(tmp_path)) == ()


def test_vgpu_scan_without_cap_sys_admin_is_not_supported(tmp_path: Path) -> None:
    # what an unprivileged reader gets: the first 64 bytes
    write_pci_device(tmp_path, "0000:00:05.0", config_space(vgpu_capability(), size=64))
    with pytest.raises(NvmlNotSupported, match=r"only 64 of its 256 bytes .* needs CAP_SYS_ADMIN"):
        scan_vgpus(str(tmp_path))


def test_vgpu_scan_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(NvmlError, match=r"cannot list .*bus/pci/devices"):
        scan_vgpus(str(tmp_path))
    directory = write_pci_device(tmp_path, "0000:00:05.0", config_space(None))
    (directory / "config").unlink()
    with pytest.raises(NvmlError, match=r"cannot read .*0000:00:05.0/config"):
        scan_vgpus(str(tmp_path))
