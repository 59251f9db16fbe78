"""GPU facts the labels need beyond the inventory: fabric (IMEX clique) and vGPU.

Pure: the NVML backends fill these from NVML and sysfs; core.labels turns them into labels.
The rules follow gpu-feature-discovery v0.20 (NVIDIA/k8s-device-plugin internal/lm/imex.go,
internal/vgpu, go-nvlib's IsFabricAttached).
"""

from __future__ import annotations

from dataclasses import dataclass

# --- GPU fabric (nvmlDeviceGetGpuFabricInfo)

# nvmlGpuFabricState_t
FABRIC_STATE_NOT_SUPPORTED = 0
FABRIC_STATE_NOT_STARTED = 1
FABRIC_STATE_IN_PROGRESS = 2
FABRIC_STATE_COMPLETED = 3
NVML_SUCCESS = 0
ZERO_UUID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True, slots=True)
class FabricInfo:
    """What nvmlDeviceGetGpuFabricInfo says about one GPU's place in an NVLink fabric."""

    # The fabric's cluster UUID in canonical text form; all zeros when the GPU is in none.
    cluster_uuid: str = ZERO_UUID
    clique_id: int = 0
    state: int = FABRIC_STATE_NOT_SUPPORTED
    # An nvmlReturn_t: NVML_SUCCESS once the fabric manager has registered the GPU.
    status: int = NVML_SUCCESS

    @property
    def attached(self) -> bool:
        """go-nvlib's IsFabricAttached: registration completed and succeeded, in a cluster."""
        return (
            self.state == FABRIC_STATE_COMPLETED
            and self.status == NVML_SUCCESS
            and self.cluster_uuid != ZERO_UUID
        )


# --- virtualization (nvmlDeviceGetVirtualizationMode)

VIRTUALIZATION_NONE = 0
VIRTUALIZATION_PASSTHROUGH = 1
# The device is a vGPU inside a virtual machine: the node is a vGPU guest.
VIRTUALIZATION_VGPU = 2
VIRTUALIZATION_HOST_VGPU = 3
VIRTUALIZATION_HOST_VSGA = 4
VIRTUALIZATION_MODES = {
    "none": VIRTUALIZATION_NONE,
    "passthrough": VIRTUALIZATION_PASSTHROUGH,
    "vgpu": VIRTUALIZATION_VGPU,
    "host-vgpu": VIRTUALIZATION_HOST_VGPU,
    "host-vsga": VIRTUALIZATION_HOST_VSGA,
}


# --- vGPU guests: NVIDIA's vendor-specific PCI capability

# The kernel shows unprivileged readers only the first 64 bytes of a device's config space;
# GFD needs the standard 256 (CAP_SYS_ADMIN).
PCI_CONFIG_SIZE = 256
NVIDIA_VENDOR = "0x10de"
_STATUS = 0x06
_STATUS_HAS_CAPABILITIES = 0x10
_FIRST_CAPABILITY = 0x34
_CAPABILITY_VENDOR_SPECIFIC = 0x09
# Bytes 3-4 of a vGPU's vendor capability: "VF".
_VGPU_SIGNATURE = b"VF"
# Records follow the signature: [type][length][data]; type 0 holds the host driver's version
# and branch, 10 NUL-padded bytes each.
_FIRST_RECORD = 5
_HOST_DRIVER_RECORD = 0
_HOST_DRIVER_FIELD = 10


@dataclass(frozen=True, slots=True)
class VgpuHostDriver:
    """The vGPU manager's driver on the hypervisor host, as the guest's capability reports it."""

    version: str
    branch: str


@dataclass(frozen=True, slots=True)
class VgpuDevice:
    """One vGPU found on the guest's PCI bus."""

    # sysfs PCI address, e.g. "0000:00:05.0"
    address: str
    # None when the capability carries no host driver record.
    host_driver: VgpuHostDriver | None


def _byte(data: bytes, pos: int) -> int | None:
    return data[pos] if 0 <= pos < len(data) else None


def vendor_capability(config: bytes) -> bytes | None:
    """The first vendor-specific capability in a PCI config space (at least PCI_CONFIG_SIZE
    bytes), found by walking the capability list as GFD does; None when there is none."""
    if len(config) < PCI_CONFIG_SIZE:
        raise ValueError(f"a PCI config space has {PCI_CONFIG_SIZE} bytes or more, got {len(config)}")
    if not config[_STATUS] & _STATUS_HAS_CAPABILITIES:
        return None
    seen: set[int] = set()
    pos = config[_FIRST_CAPABILITY]
    while pos != 0 and pos not in seen:
        cap_id = config[pos]
        if cap_id == 0xFF:  # a broken chain
            return None
        # Offsets wrap within one byte, as GFD's uint8 arithmetic does.
        following, length = config[(pos + 1) & 0xFF], config[(pos + 2) & 0xFF]
        if cap_id == _CAPABILITY_VENDOR_SPECIFIC:
            return config[pos : pos + length]
        seen.add(pos)
        pos = following
    return None


def is_vgpu_capability(capability: bytes) -> bool:
    return len(capability) >= 5 and capability[3:5] == _VGPU_SIGNATURE


def host_driver(capability: bytes) -> VgpuHostDriver | None:
    """The host driver record of a vGPU capability; None when it is missing or malformed
    (where GFD would loop forever or index past the end, this says None)."""
    pos = _FIRST_RECORD
    record = _byte(capability, pos)
    while record is not None and record != _HOST_DRIVER_RECORD:
        length = _byte(capability, pos + 1)
        if not length:
            return None
        pos += length
        record = _byte(capability, pos)
    start = pos + 2
    end = start + 2 * _HOST_DRIVER_FIELD
    if record is None or end > len(capability):
        return None
    text = capability[start:end].decode("latin-1")
    return VgpuHostDriver(
        version=text[:_HOST_DRIVER_FIELD].strip("\x00"), branch=text[_HOST_DRIVER_FIELD:].strip("\x00")
    )


def vgpu_device(address: str, config: bytes) -> VgpuDevice | None:
    """The vGPU behind one NVIDIA PCI function's full config space, or None when it is not one."""
    capability = vendor_capability(config)
    if capability is None or not is_vgpu_capability(capability):
        return None
    return VgpuDevice(address=address, host_driver=host_driver(capability))


@dataclass(frozen=True, slots=True)
class Vgpu:
    """What GFD's vGPU labeler says about the node: whether it is a vGPU guest and, when the
    capability says, the host's vGPU driver (None: unknown)."""

    present: bool
    host_driver: VgpuHostDriver | None = None


def vgpu_of(devices: tuple[VgpuDevice, ...]) -> Vgpu:
    """GFD's rule: present when any vGPU was found; the host driver is the last one's (every
    vGPU of a guest runs on the same host). One without a record makes the driver unknown."""
    drivers = [d.host_driver for d in devices]
    known = drivers[-1] if drivers and all(drivers) else None
    return Vgpu(present=bool(devices), host_driver=known)
