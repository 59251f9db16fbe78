"""PCI config spaces built byte by byte, for the vGPU scan's tests (core.gpufacts, nvml.pci).

Laid out as on real NVIDIA functions: vendor 0x10de, the capability list bit in the status
register, a power-management and an MSI capability, then NVIDIA's vendor-specific one.
"""

from __future__ import annotations

from pathlib import Path

NVIDIA_VENDOR_ID = 0x10DE
VENDOR_SPECIFIC = 0x09


def vgpu_capability(version: str = "550.90.05", branch: str = "r550_00", records: bytes = b"") -> bytes:
    """A vGPU's vendor capability body after id and next pointer: length, "VF", `records`
    (other records before the host driver's), then the host driver record (type 0)."""
    host = bytes([0, 22]) + version.encode().ljust(10, b"\0") + branch.encode().ljust(10, b"\0")
    body = b"VF" + records + host
    return bytes([3 + len(body)]) + body


def passthrough_capability() -> bytes:
    """A vendor capability without the vGPU signature, as physical GPUs carry."""
    return bytes([20]) + b"\x01\x00" + bytes(15)


def config_space(
    vendor_capability: bytes | None,
    *,
    size: int = 256,
    capability_list: bool = True,
    vendor_at: int = 0xC8,
) -> bytes:
    """A config space of `size` bytes whose capability list ends in `vendor_capability`
    (length byte onwards, as the helpers above return it) at offset `vendor_at`."""
    config = bytearray(max(size, 256))
    config[0:2] = NVIDIA_VENDOR_ID.to_bytes(2, "little")
    config[0x0A:0x0C] = (0x0302).to_bytes(2, "little")  # class: 3D controller
    if capability_list:
        config[0x06] = 0x10
    config[0x34] = 0x60
    config[0x60:0x62] = bytes([0x01, 0x68])  # power management -> MSI
    config[0x68:0x6A] = bytes([0x05, vendor_at if vendor_capability is not None else 0])  # MSI -> vendor
    if vendor_capability is not None:
        cap = bytes([VENDOR_SPECIFIC, 0]) + vendor_capability
        config[vendor_at : vendor_at + len(cap)] = cap
    return bytes(config[:size])


def write_pci_device(
    sysfs_root: Path, address: str, config: bytes, vendor: str = "0x10de", pci_class: str = "0x030200"
) -> Path:
    """A PCI function under <sysfs_root>/bus/pci/devices as the kernel shows it."""
    directory = sysfs_root / "bus" / "pci" / "devices" / address
    directory.mkdir(parents=True)
    (directory / "vendor").write_text(vendor + "\n")
    (directory / "class").write_text(pci_class + "\n")
    (directory / "config").write_bytes(config)
    return directory
