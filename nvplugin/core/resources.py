"""What the agent advertises to the kubelet: resources and their devices, from the inventory.

A Resource is one extended resource name (one gRPC socket, one Register). Its devices are what
the kubelet sees by ID; each keeps the physical GPU it lives on, so health and topology facts
about a GPU reach every device carved from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from nvplugin.core.config import Config, ConfigError, ReplicatedResources, SharingStrategy
from nvplugin.core.inventory import Gpu, Inventory, MigDevice
from nvplugin.core.mig import resource_suffix

GPU_RESOURCE = "nvidia.com/gpu"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
# What one resource may advertise: ListAndWatch sends every device in one message, which the
# kubelet reads with gRPC's 4 MiB default limit (about 80 bytes per device).
MAX_DEVICES_PER_RESOURCE = 32_768
# Clients one MPS server takes (NVIDIA's mps-control-daemon: compute capability 7.5 and newer
# 48, older 16).
MPS_MAX_CLIENTS = 48
MPS_MAX_CLIENTS_OLDER = 16


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

    # Sharing: how many times each device is advertised (1: not shared), whether a request for
    # more than one replica is refused, the name before renameByDefault, and how the replicas
    # share the device (NVIDIA's sharing-strategy label value).
    replicas: int = 1
    fail_requests_greater_than_one: bool = False
    renamed_from: str | None = None
    sharing_strategy: SharingStrategy = SharingStrategy.NONE

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


class MigConfigurationError(ConfigError):
    """The GPUs' MIG layout cannot be advertised under the configured MIG strategy."""


@dataclass(frozen=True, slots=True)
class ResourcePlan:
    """The resources to advertise, and what the user should know about how they were built."""

    resources: tuple[Resource, ...]
    warnings: tuple[str, ...] = ()


def build_resources(inventory: Inventory, config: Config) -> tuple[Resource, ...]:
    """Every resource to advertise; MigConfigurationError when the MIG layout does not fit the
    strategy. See plan_resources for the warnings too."""
    return plan_resources(inventory, config).resources


def plan_resources(inventory: Inventory, config: Config) -> ResourcePlan:
    """NVIDIA's resources for the MIG strategy, then time-slicing replicas.

    - none: every GPU, MIG-enabled or not, is one `nvidia.com/gpu` device.
    - single: MIG devices are `nvidia.com/gpu`; all must be identical, and every GPU must have
      the same MIG mode; a MIG-enabled GPU without MIG devices is an error.
    - mixed: MIG-disabled GPUs are `nvidia.com/gpu`; MIG devices are
      `nvidia.com/mig-<profile>` (`+` becomes `.`); a MIG-enabled GPU without MIG devices is
      left out with a warning.
    Sharing (time-slicing or MPS) then advertises each device of a shared resource as
    `<id>::<n>`. MPS is refused where NVIDIA refuses it: with MIG devices, and with more replicas
    than an MPS server takes clients.
    """
    warnings: list[str] = []
    if config.mig_strategy == "none":
        base = {GPU_RESOURCE: [_gpu_device(gpu) for gpu in inventory.gpus]}
    elif config.mig_strategy == "single":
        base = _single(inventory.gpus)
    else:
        base = _mixed(inventory.gpus, warnings)
    resources = _apply_sharing(base, config, inventory, warnings)
    return ResourcePlan(resources=resources, warnings=tuple(warnings))


def _gpu_device(gpu: Gpu) -> AdvertisedDevice:
    return AdvertisedDevice(
        id=gpu.uuid,
        uuid=gpu.uuid,
        index=str(gpu.index),
        gpu_uuid=gpu.uuid,
        numa_node=gpu.numa_node,
        device_nodes=(gpu.device_node,),
    )


def _mig_device(gpu: Gpu, mig: MigDevice) -> AdvertisedDevice:
    return AdvertisedDevice(
        id=mig.uuid,
        uuid=mig.uuid,
        index=mig.nvidia_index,
        gpu_uuid=gpu.uuid,
        numa_node=gpu.numa_node,
        device_nodes=mig.device_nodes or (gpu.device_node,),
    )


def _gpu_names(gpus: Sequence[Gpu]) -> str:
    return ", ".join(f"{g.index} ({g.uuid})" for g in gpus)


def _single(gpus: Sequence[Gpu]) -> dict[str, list[AdvertisedDevice]]:
    mig_gpus = [g for g in gpus if g.mig_enabled]
    empty = [g for g in mig_gpus if not g.mig_devices]
    if empty:
        raise MigConfigurationError(
            f"mig-strategy single: GPU {_gpu_names(empty)} has MIG enabled but no MIG devices "
            "configured; create MIG devices on it or disable MIG on it"
        )
    full = [g for g in gpus if not g.mig_enabled]
    if full and mig_gpus:
        raise MigConfigurationError(
            "mig-strategy single: all GPUs on the node must have the same MIG mode, but GPU "
            f"{_gpu_names(full)} has MIG disabled while GPU {_gpu_names(mig_gpus)} has MIG enabled; "
            "use mig-strategy mixed, or enable MIG on every GPU"
        )
    if full:
        return {GPU_RESOURCE: [_gpu_device(g) for g in full]}
    pairs = [(g, m) for g in mig_gpus for m in g.mig_devices]
    first_gpu, first = pairs[0] if pairs else (None, None)
    for gpu, mig in pairs[1:]:
        assert first is not None and first_gpu is not None
        if mig.attributes != first.attributes:
            raise MigConfigurationError(
                "mig-strategy single: all MIG devices on the node must be identical, but MIG device "
                f"{mig.nvidia_index} on GPU {gpu.index} ({gpu.uuid}) is {mig.profile} while "
                f"MIG device {first.nvidia_index} on GPU {first_gpu.index} is {first.profile}"
                + ("" if mig.profile != first.profile else " with different attributes")
                + "; use mig-strategy mixed, or give every GPU the same MIG devices"
            )
    return {GPU_RESOURCE: [_mig_device(g, m) for g, m in pairs]}


def _mixed(gpus: Sequence[Gpu], warnings: list[str]) -> dict[str, list[AdvertisedDevice]]:
    base: dict[str, list[AdvertisedDevice]] = {GPU_RESOURCE: []}
    by_profile: dict[str, list[AdvertisedDevice]] = {}
    for gpu in gpus:
        if not gpu.mig_enabled:
            base[GPU_RESOURCE].append(_gpu_device(gpu))
            continue
        if not gpu.mig_devices:
            warnings.append(
                f"GPU {gpu.index} ({gpu.uuid}) has MIG enabled but no MIG devices configured: "
                "nothing on it is advertised"
            )
            continue
        for mig in gpu.mig_devices:
            if mig.ci_slices != mig.gi_slices:
                raise MigConfigurationError(
                    f"mig-strategy mixed: MIG device {mig.nvidia_index} ({mig.uuid}) on GPU "
                    f"{gpu.index} has profile {mig.profile}, whose compute instance uses fewer "
                    "slices than its GPU instance; NVIDIA's mixed strategy has no resource for "
                    "such profiles: give each GPU instance one compute instance spanning it"
                )
            by_profile.setdefault(f"nvidia.com/{resource_suffix(mig.profile)}", []).append(
                _mig_device(gpu, mig)
            )
    if not base[GPU_RESOURCE] and by_profile:
        del base[GPU_RESOURCE]
    for name in sorted(by_profile):
        base[name] = by_profile[name]
    return base


def _apply_sharing(
    base: Mapping[str, list[AdvertisedDevice]], config: Config, inventory: Inventory, warnings: list[str]
) -> tuple[Resource, ...]:
    strategy = config.sharing.strategy
    sharing = config.sharing.active
    section = "sharing.mps" if config.sharing.mps is not None else "sharing.timeSlicing"
    if strategy is SharingStrategy.MPS:
        _check_mps(base, sharing, inventory)
    for wanted in sharing.resources:
        if not base.get(wanted.name):
            warnings.append(
                f"{section}: resource {wanted.name} has no devices on this node "
                f"(advertised: {', '.join(n for n in base if base[n]) or 'none'}); nothing to share"
            )
    resources: list[Resource] = []
    for name, devices in base.items():
        shared = sharing.for_resource(name)
        if shared is None or not devices:
            resources.append(Resource(name, tuple(devices)))
            continue
        if len(devices) * shared.replicas > MAX_DEVICES_PER_RESOURCE:
            raise ConfigError(
                f"{section}: {name}: {len(devices)} devices x {shared.replicas} replicas would advertise "
                f"{len(devices) * shared.replicas} devices; at most {MAX_DEVICES_PER_RESOURCE} fit in one "
                "kubelet message: lower replicas"
            )
        replicas = tuple(
            replace(device, id=f"{device.id}::{n}", replica=n)
            for device in devices
            for n in range(shared.replicas)
        )
        resources.append(
            Resource(
                shared.advertised_name,
                replicas,
                replicas=shared.replicas,
                fail_requests_greater_than_one=sharing.fail_requests_greater_than_one,
                renamed_from=name if shared.advertised_name != name else None,
                sharing_strategy=strategy,
            )
        )
    names = [r.name for r in resources]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ConfigError(
            f"{section}: resource name {', '.join(clashes)} would be advertised twice; "
            "rename one of the shared resources"
        )
    return tuple(resources)


def _check_mps(
    base: Mapping[str, list[AdvertisedDevice]], sharing: ReplicatedResources, inventory: Inventory
) -> None:
    """NVIDIA's refusals for MPS: any MIG device (its plugin fails for every resource then), and
    more replicas than the MPS server takes clients on a GPU."""
    for name, devices in base.items():
        mig = [d for d in devices if d.uuid != d.gpu_uuid]
        if mig:
            raise MigConfigurationError(
                f"sharing.mps: MPS sharing is not supported for MIG devices, and {name} has MIG device "
                f"{mig[0].index} ({mig[0].uuid}); NVIDIA refuses this too: use mig-strategy none or "
                "sharing.timeSlicing"
            )
    for name, devices in base.items():
        shared = sharing.for_resource(name)
        if shared is None:
            continue
        for gpu_uuid in dict.fromkeys(d.gpu_uuid for d in devices):
            gpu = inventory.gpu_by_uuid(gpu_uuid)
            if gpu is None:
                continue
            limit = MPS_MAX_CLIENTS if gpu.compute_capability >= (7, 5) else MPS_MAX_CLIENTS_OLDER
            if shared.replicas > limit:
                raise ConfigError(
                    f"sharing.mps: {name}: {shared.replicas} replicas exceed the {limit} clients an MPS "
                    f"server takes on GPU {gpu.index} ({gpu.uuid}, compute capability "
                    f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}); NVIDIA refuses this too"
                )
