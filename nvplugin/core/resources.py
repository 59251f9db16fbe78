"""What the agent advertises to the kubelet: resources and their devices, from the inventory.

A Resource is one extended resource name (one gRPC socket, one Register). Its devices are what
the kubelet sees by ID; each keeps the physical GPU it lives on, so health and topology facts
about a GPU reach every device carved from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from nvplugin.core.config import Config
from nvplugin.core.inventory import Inventory

GPU_RESOURCE = "nvidia.com/gpu"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


@dataclass(frozen=True, slots=True)
class AdvertisedDevice:
    # The ID the kubelet sees: a GPU UUID, a MIG UUID or a replica ID "<UUID>::<n>".
    id: str
    # The NVML UUID this device stands for (GPU or MIG device).
    uuid: str
    # NVIDIA's index: "i" for a GPU, "i:j" for a MIG device.
    index: str
    # The physical GPU it lives on: the key for health and topology.
    gpu_uuid: str
    numa_node: int | None
    # Device nodes a container needs for this device (the parent's node, MIG caps too).
    device_nodes: tuple[str, ...]
    # Time-slicing replica number, 0 when not shared.
    replica: int = 0


@dataclass(frozen=True, slots=True)
class Resource:
    name: str
    devices: tuple[AdvertisedDevice, ...]
    # Derived lookup table; not part of identity or repr.
    _by_id: Mapping[str, AdvertisedDevice] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {d.id: d for d in self.devices})

    @property
    def short_name(self) -> str:
        """'nvidia.com/mig-1g.10gb' -> 'mig-1g.10gb' (used in socket and log names)."""
        return self.name.rpartition("/")[2]

    def device(self, device_id: str) -> AdvertisedDevice | None:
        return self._by_id.get(device_id)


def device_health(device: AdvertisedDevice, unhealthy: Mapping[str, str]) -> str:
    """A device is unhealthy when it or the GPU it lives on is marked unhealthy."""
    if device.uuid in unhealthy or device.gpu_uuid in unhealthy:
        return UNHEALTHY
    return HEALTHY


def unhealthy_reason(device: AdvertisedDevice, unhealthy: Mapping[str, str]) -> str | None:
    return unhealthy.get(device.uuid) or unhealthy.get(device.gpu_uuid)


def build_resources(inventory: Inventory, config: Config) -> tuple[Resource, ...]:
    """Every resource to advertise. Full GPUs become `nvidia.com/gpu`."""
    del config  # MIG strategies and sharing arrive with their own issue
    devices = tuple(
        AdvertisedDevice(
            id=gpu.uuid,
            uuid=gpu.uuid,
            index=str(gpu.index),
            gpu_uuid=gpu.uuid,
            numa_node=gpu.numa_node,
            device_nodes=(gpu.device_node,),
        )
        for gpu in inventory.gpus
    )
    return (Resource(GPU_RESOURCE, devices),)
