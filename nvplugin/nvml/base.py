"""The one NVML interface of the agent, implemented by the real (pynvml) and fake backends.

Every method is blocking and may raise NvmlError: the async shell calls them in worker
threads. Devices are addressed by NVML index. Errors are translated into the small set of
exception types below so nothing above this layer imports pynvml.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
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

    # False where the GPU does not support MIG.
    def device_mig_enabled(self, index: int) -> bool: ...

    # Every MIG device of a MIG-enabled GPU, in NVML's MIG index order.
    def device_mig_devices(self, index: int) -> tuple[MigDevice, ...]: ...

    # --- topology (read once at discovery; see nvml/topology.py)

    # One entry per active NVLink of the GPU: what is at the other end. [] without NVLink.
    def device_nvlink_remotes(self, index: int) -> list[NvLinkRemote]: ...

    # The closest common PCIe ancestor of two GPUs: an nvmlGpuTopologyLevel_t value
    # (0 same board, 10 one switch, 20 several switches, 30 host bridge, 40 NUMA node, 50 system).
    def device_topology_common_ancestor(self, index_a: int, index_b: int) -> int: ...


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
