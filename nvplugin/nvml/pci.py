"""PCI facts from sysfs for the real backend: a GPU's class code and the node's vGPUs.

Blocking file reads under a configurable sysfs root (tests point it at a directory tree).
Failures raise the backend's error types, naming the file and what was wrong.
"""

from __future__ import annotations

import os

from nvplugin.core.gpufacts import NVIDIA_VENDOR, PCI_CONFIG_SIZE, VgpuDevice, vgpu_device
from nvplugin.nvml.base import NvmlError, NvmlNotSupported, normalize_bus_id

_DEVICES = "bus/pci/devices"


def device_dir(sysfs_root: str, pci_bus_id: str) -> str:
    """The sysfs directory of a PCI device named as NVML names it ('00000000:18:00.0')."""
    return os.path.join(sysfs_root, _DEVICES, normalize_bus_id(pci_bus_id))


def read_pci_class(sysfs_root: str, pci_bus_id: str) -> int:
    path = os.path.join(device_dir(sysfs_root, pci_bus_id), "class")
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError as exc:
        raise NvmlError("read PCI class", f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return int(text, 16)
    except ValueError:
        raise NvmlError(
            "read PCI class", f"{path}: expected a hex class code such as 0x030200, got {text!r}"
        ) from None


def scan_vgpus(sysfs_root: str) -> tuple[VgpuDevice, ...]:
    """GFD's vGPU scan: every NVIDIA PCI function whose first vendor-specific capability
    carries the vGPU signature. Reading one config space in part (no CAP_SYS_ADMIN) raises
    NvmlNotSupported, as GFD refuses to guess then too."""
    root = os.path.join(sysfs_root, _DEVICES)
    call = "scan PCI devices for vGPUs"
    try:
        addresses = sorted(os.listdir(root))
    except OSError as exc:
        raise NvmlError(call, f"cannot list {root}: {exc.strerror or exc}") from None
    found: list[VgpuDevice] = []
    for address in addresses:
        directory = os.path.join(root, address)
        try:
            with open(os.path.join(directory, "vendor")) as f:
                vendor = f.read().strip()
            if vendor != NVIDIA_VENDOR:
                continue
            with open(os.path.join(directory, "config"), "rb") as f:
                config = f.read()
        except OSError as exc:
            raise NvmlError(call, f"cannot read {exc.filename}: {exc.strerror or exc}") from None
        if len(config) < PCI_CONFIG_SIZE:
            raise NvmlNotSupported(
                call,
                f"{directory}/config: only {len(config)} of its {PCI_CONFIG_SIZE} bytes are readable; "
                "reading the vGPU capability needs CAP_SYS_ADMIN",
            )
        device = vgpu_device(address, config)
        if device is not None:
            found.append(device)
    return tuple(found)
