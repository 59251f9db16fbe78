"""The one NVML interface of the agent, implemented by the real (pynvml) and fake backends.

Every method is blocking and may raise NvmlError: the async shell calls them in worker
threads. Devices are addressed by NVML index. Errors are translated into the small set of
exception types below so nothing above this layer imports pynvml.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from nvplugin.core.gpufacts import FabricInfo, VgpuDevice
    from nvplugin.core.inventory import MigDevice


class NvmlError(Exception):
    """An NVML call failed. `call` names it, `code` is NVML's return code when known."""

    def __init__(self, call: str, message: str, code: int | None = None) -> None:
        super().__init__(f"{call}: {message}")
        self.call = call
        self.message = message
        self.code = code


class NvmlLibraryNotFound(NvmlError):
    """libnvidia-ml.so could not be loaded: no driver, or the container cannot see it."""


class NvmlNotSupported(NvmlError):
    """The device or driver does not support this query."""


class NvmlTimeout(NvmlError):
    """An event wait ended without an event."""


class NvmlGpuLost(NvmlError):
    """The GPU has fallen off the bus or stopped answering."""


# What the user must check when the library is missing; shared by every message about it.
LIBRARY_HINT = (
    "check that the NVIDIA driver is installed on the node (nvidia-smi works there), that the "
    "NVIDIA container toolkit is installed, and that the container runtime used for this pod is "
    "the nvidia runtime (the default runtime, or runtimeClassName: nvidia) so that "
    "libnvidia-ml.so.1 is mounted into the container"
)


class Nvml(Protocol):
    """The operations the agent needs from NVML."""

    def init(self) -> None: ...

    def shutdown(self) -> None: ...

    def driver_version(self) -> str: ...

    # NVML's encoding: 1000 * major + 10 * minor.
    def cuda_driver_version(self) -> int: ...

    def device_count(self) -> int: ...

    def device_uuid(self, index: int) -> str: ...

    def device_name(self, index: int) -> str: ...

    def device_minor_number(self, index: int) -> int: ...

    def device_memory_total(self, index: int) -> int: ...

    def device_compute_capability(self, index: int) -> tuple[int, int]: ...

    def device_pci_bus_id(self, index: int) -> str: ...

    # None when unknown (the kernel reports -1 in VMs).
    def device_numa_node(self, index: int) -> int | None: ...

    # --- MIG. Read-only: nvplugin never changes a GPU's MIG mode or its instances.

    # The current MIG mode (nvmlDeviceGetMigMode). Raises NvmlNotSupported where the GPU or
    # driver does not support MIG: that is how "MIG-capable" is told (GFD's mig.capable).
    def device_mig_enabled(self, index: int) -> bool: ...

    # Every MIG device of a MIG-enabled GPU, in NVML's MIG index order.
    def device_mig_devices(self, index: int) -> tuple[MigDevice, ...]: ...

    # --- facts for the node labels (read per discovery; see nvplugin/nodefacts.py)

    # The GPU's PCI class code from sysfs (0x030200 3D controller, 0x030000 VGA controller).
    # Raises NvmlError when it cannot be read.
    def device_pci_class(self, index: int) -> int: ...

    # The GPU's NVLink fabric registration (nvmlDeviceGetGpuFabricInfo). Raises
    # NvmlNotSupported where the GPU or driver has no fabric.
    def device_fabric_info(self, index: int) -> FabricInfo: ...

    # nvmlDeviceGetVirtualizationMode: a core.gpufacts.VIRTUALIZATION_* value.
    def device_virtualization_mode(self, index: int) -> int: ...

    # Every vGPU on the node's PCI bus (GFD's scan of NVIDIA devices' vendor capability in
    # sysfs; needs no nvmlInit). Raises NvmlNotSupported when config space cannot be read in
    # full (the kernel shows 64 of its 256 bytes without CAP_SYS_ADMIN), NvmlError otherwise.
    def vgpu_devices(self) -> tuple[VgpuDevice, ...]: ...

    # --- topology (read once at discovery; see nvml/topology.py)

    # One entry per active NVLink of the GPU: what is at the other end. [] without NVLink.
    def device_nvlink_remotes(self, index: int) -> list[NvLinkRemote]: ...

    # The closest common PCIe ancestor of two GPUs: an nvmlGpuTopologyLevel_t value
    # (0 same board, 10 one switch, 20 several switches, 30 host bridge, 40 NUMA node, 50 system).
    def device_topology_common_ancestor(self, index_a: int, index_b: int) -> int: ...

    # --- health events (appended for the XID watcher; see nvplugin/health.py)

    # An opaque event set; free it with event_set_free.
    def event_set_create(self) -> object: ...

    # Bitmask of NVML event types the device can report (EVENT_* below).
    def device_supported_events(self, index: int) -> int: ...

    def device_register_events(self, index: int, mask: int, event_set: object) -> None: ...

    # Blocks up to timeout_ms; raises NvmlTimeout when no event came.
    def event_set_wait(self, event_set: object, timeout_ms: int) -> NvmlEvent: ...

    def event_set_free(self, event_set: object) -> None: ...

    # A cheap check that the GPU still answers; raises NvmlError (NvmlGpuLost) when it does not.
    def device_probe(self, index: int) -> DeviceProbe: ...


# What NVML says is at the far end of one active NVLink.
NVLINK_REMOTE_GPU = "gpu"
NVLINK_REMOTE_SWITCH = "switch"
NVLINK_REMOTE_UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class NvLinkRemote:
    # The remote's PCI bus id as NVML writes it ("00000000:18:00.0"); "" when unreadable.
    bus_id: str
    # NVLINK_REMOTE_GPU, NVLINK_REMOTE_SWITCH or NVLINK_REMOTE_UNKNOWN (the driver cannot tell).
    kind: str = NVLINK_REMOTE_UNKNOWN


def normalize_bus_id(bus_id: str) -> str:
    """'00000000:18:00.0', '0000:18:00.0' and '18:00.0' -> '0000:18:00.0' (sysfs form), so bus
    ids from different NVML calls compare equal. Unparseable text is returned lowercased."""
    text = bus_id.strip().lower()
    parts = text.split(":")
    try:
        if len(parts) == 2:
            parts = ["0", *parts]
        if len(parts) != 3:
            return text
        domain, bus = int(parts[0], 16), int(parts[1], 16)
        device, _, function = parts[2].partition(".")
        return f"{domain:04x}:{bus:02x}:{int(device, 16):02x}.{int(function or '0', 16):x}"
    except ValueError:
        return text


# NVML event types (nvmlEventType*) the health watcher registers.
EVENT_SINGLE_BIT_ECC = 0x1
EVENT_DOUBLE_BIT_ECC = 0x2
EVENT_XID_CRITICAL = 0x8
HEALTH_EVENTS = EVENT_XID_CRITICAL | EVENT_DOUBLE_BIT_ECC | EVENT_SINGLE_BIT_ECC
# NVML's "no GPU/compute instance" in event data (a full-GPU or parent-level event).
NO_INSTANCE = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class NvmlEvent:
    """One NVML event. The device is named by index where the backend can tell, else by UUID."""

    gpu_index: int | None
    uuid: str | None
    event_type: int
    # The XID for XidCriticalError events.
    data: int
    # MIG placement; None for a full-GPU or parent-level event.
    gpu_instance: int | None = None
    compute_instance: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceProbe:
    """What a successful probe read. `recovery_action` is NVML's GPU recovery action field
    (0 none, 1 GPU reset, 2 node reboot, ...), None where the driver does not report it."""

    uuid: str
    temperature_c: int | None = None
    recovery_action: int | None = None
