"""Allocate and GetPreferredAllocation decisions, as pure functions.

The server turns the results into protobuf messages; errors become INVALID_ARGUMENT with the
message unchanged, so it names the offending IDs (a bounded excerpt: see core.excerpt) and
says why.
"""

from __future__ import annotations

import posixpath
import uuid as uuidlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from nvplugin.core.config import Config, SharingStrategy
from nvplugin.core.excerpt import QUOTED_VALUES, counted, excerpt, listed, quote_some
from nvplugin.core.imex import IMEX_CHANNELS_ENV, ImexChannel
from nvplugin.core.mps import CONTAINER_MPS_ROOT, PIPE_DIRECTORY_ENV, SHM_CONTAINER_PATH, MpsRoot
from nvplugin.core.resources import AdvertisedDevice, Resource, unhealthy_reason


class AllocationError(ValueError):
    """The request cannot be honoured; the message names the IDs and the reason."""


# NVIDIA's names, kept so the container toolkit and CDI specs generated for NVIDIA's plugin work.
VISIBLE_DEVICES_ENV = "NVIDIA_VISIBLE_DEVICES"
VOLUME_MOUNTS_ROOT = "/var/run/nvidia-container-devices"
VOLUME_MOUNTS_HOST_PATH = "/dev/null"
CDI_VENDOR = "k8s.device-plugin.nvidia.com"
CDI_DEVICE_KIND = f"{CDI_VENDOR}/gpu"
CDI_ANNOTATION_PLUGIN = "nvidia-device-plugin"
CDI_STRATEGIES = frozenset({"cdi-annotations", "cdi-cri"})
# Set whatever the device-list strategy when the feature is enabled (NVIDIA's server.go).
FEATURE_ENVS = {"gdrcopy": "NVIDIA_GDRCOPY", "gds": "NVIDIA_GDS", "mofed": "NVIDIA_MOFED"}
# Passed with PASS_DEVICE_SPECS when they exist (NVIDIA stats them in its own container).
CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")


@dataclass(frozen=True, slots=True)
class Mount:
    container_path: str
    host_path: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    container_path: str
    host_path: str
    permissions: str = "rw"


@dataclass(frozen=True, slots=True)
class ContainerAllocation:
    envs: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    devices: tuple[DeviceSpec, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    cdi_devices: tuple[str, ...] = ()


def check_request(
    resource: Resource, ids: Sequence[str], unhealthy: Mapping[str, str]
) -> tuple[AdvertisedDevice, ...]:
    """The devices a container asked for, each once in request order, or AllocationError
    naming what is wrong.

    Duplicate IDs count once, as NVIDIA's plugin does (`foo,bar,foo` gives `foo,bar`).
    The message quotes a few bad IDs, each cut short, and counts the rest: a request of any
    size gets an answer of bounded size.
    """
    if not ids:
        raise AllocationError(f"{resource.name}: the request names no device IDs")
    unknown: list[str] = []
    sick: list[tuple[str, str]] = []  # (ID, reason)
    chosen: list[AdvertisedDevice] = []
    for device_id in dict.fromkeys(ids):
        device = resource.device(device_id)
        if device is None:
            unknown.append(device_id)
            continue
        reason = unhealthy_reason(device, unhealthy)
        if reason is not None:
            sick.append((device_id, reason))
            continue
        chosen.append(device)
    problems = []
    # NVIDIA counts the IDs as sent, duplicates included.
    if resource.fail_requests_greater_than_one and len(ids) > 1 and any("::" in i for i in ids):
        section = "mps" if resource.sharing_strategy is SharingStrategy.MPS else "timeSlicing"
        problems.append(
            f"maximum request size for shared resources is 1; found {len(ids)} "
            f"(sharing.{section}.failRequestsGreaterThanOne is true)"
        )
    if unknown:
        problems.append(
            f"{counted(len(unknown), 'unknown device ID')} (not advertised by this plugin): "
            + quote_some(unknown)
        )
    if sick:
        shown = [f"{excerpt(i)} ({reason})" for i, reason in sick[:QUOTED_VALUES]]
        problems.append(f"{counted(len(sick), 'unhealthy device')}: {listed(shown, len(sick))}")
    if problems:
        raise AllocationError(f"{resource.name}: cannot allocate: " + "; ".join(problems))
    return tuple(chosen)


def device_ids(devices: Sequence[AdvertisedDevice], id_strategy: str) -> list[str]:
    """What the container runtime is told: UUIDs (replica suffix stripped) or NVIDIA indexes,
    each physical device once, in request order."""
    ids = (d.index if id_strategy == "index" else d.uuid for d in devices)
    return list(dict.fromkeys(ids))


def cdi_annotation_key(response_id: str, prefix: str = "cdi.k8s.io/") -> str:
    """The key CDI's UpdateAnnotations makes for one allocation, under `prefix`."""
    name = f"{CDI_ANNOTATION_PLUGIN}_{response_id.replace('/', '_')}"
    if len(name) > 63:
        raise ValueError(f"CDI annotation name {name!r} is longer than 63 characters")
    return prefix + name


def host_path(root: str, path: str) -> str:
    """Go's filepath.Join(root, path): "/" + "/dev/nvidia0" is "/dev/nvidia0"."""
    return posixpath.normpath(posixpath.join(root, path.lstrip("/")))


def device_specs(
    devices: Sequence[AdvertisedDevice], root: str, existing_control_nodes: Collection[str] | None = None
) -> tuple[DeviceSpec, ...]:
    """NVIDIA's PASS_DEVICE_SPECS list: the control nodes that exist, then every device's own
    nodes (MIG capability nodes included), each once."""
    present = CONTROL_NODES if existing_control_nodes is None else existing_control_nodes
    paths = [p for p in CONTROL_NODES if p in present]
    paths.extend(node for device in devices for node in device.device_nodes)
    return tuple(DeviceSpec(container_path=p, host_path=host_path(root, p)) for p in dict.fromkeys(paths))


@dataclass(frozen=True, slots=True)
class NodeDevices:
    """What Allocate needs to know about the node beyond the GPUs, found once at start: the
    NVIDIA control device nodes present (None: all of them) and the configured IMEX channels
    found (core.imex.select_imex_channels)."""

    control_nodes: Collection[str] | None = None
    imex_channels: tuple[ImexChannel, ...] = ()


NO_NODE_DEVICES = NodeDevices()


def container_allocation(
    devices: Sequence[AdvertisedDevice],
    config: Config,
    *,
    existing_control_nodes: Collection[str] | None = None,
    response_id: str | None = None,
    imex_channels: Sequence[ImexChannel] = (),
    cdi_modes: Collection[str] = (),
    mps_resource: str | None = None,
) -> ContainerAllocation:
    """NVIDIA's ContainerAllocateResponse for the devices a container was given.

    Follows NVIDIA's getAllocateResponse: CDI devices first - the GPUs, the IMEX channels, then
    `<mode>=all` for each of gds/mofed/gdrcopy that is enabled and has a CDI spec (`cdi_modes`:
    the modes whose spec was written) - as an annotation (key from `response_id`, a fresh UUID
    when None) and/or the CRI field; NVIDIA_GDS / NVIDIA_MOFED / NVIDIA_GDRCOPY=enabled whatever
    the strategy; with only CDI strategies nothing else. `envvar` sets NVIDIA_VISIBLE_DEVICES and
    NVIDIA_IMEX_CHANNELS; `volume-mounts` then points NVIDIA_VISIBLE_DEVICES at the mount root and
    mounts /dev/null per device and per channel; PASS_DEVICE_SPECS adds the device nodes and the
    channels' nodes. `imex_channels`: the configured channels found at start
    (core.imex.select_imex_channels). `existing_control_nodes`: the CONTROL_NODES present on
    the node (checked once by the caller); None means all of them. `mps_resource`: the
    resource's name when it is shared with MPS: then, whatever the strategy, the container gets
    its daemon's pipe directory (mps_allocation).
    """
    ids = device_ids(devices, config.device_id_strategy)
    strategies = set(config.device_list_strategy)
    annotations: dict[str, str] = {}
    cdi_devices: tuple[str, ...] = ()
    if strategies & CDI_STRATEGIES:
        qualified = [f"{CDI_DEVICE_KIND}={i}" for i in ids]
        qualified += [f"{CDI_VENDOR}/imex-channel={c.id}" for c in imex_channels]
        qualified += [
            f"{CDI_VENDOR}/{mode}=all" for mode in enabled_feature_modes(config) if mode in cdi_modes
        ]
        if "cdi-annotations" in strategies and qualified:
            key = cdi_annotation_key(response_id or str(uuidlib.uuid4()), config.cdi_annotation_prefix)
            annotations[key] = ",".join(qualified)
        if "cdi-cri" in strategies:
            cdi_devices = tuple(qualified)
    envs: dict[str, str] = {}
    mounts: tuple[Mount, ...] = ()
    if mps_resource is not None:
        envs, mounts = mps_allocation(mps_resource, config.mps_root)
    envs.update({FEATURE_ENVS[mode]: "enabled" for mode in enabled_feature_modes(config)})
    if strategies <= CDI_STRATEGIES:
        return ContainerAllocation(envs=envs, mounts=mounts, annotations=annotations, cdi_devices=cdi_devices)

    if "envvar" in strategies:
        envs[VISIBLE_DEVICES_ENV] = ",".join(ids)
        if imex_channels:
            envs[IMEX_CHANNELS_ENV] = ",".join(c.id for c in imex_channels)
    if "volume-mounts" in strategies:
        envs[VISIBLE_DEVICES_ENV] = VOLUME_MOUNTS_ROOT
        paths = [posixpath.join(VOLUME_MOUNTS_ROOT, i) for i in ids]
        paths += [posixpath.join(VOLUME_MOUNTS_ROOT, "imex", c.id) for c in imex_channels]
        mounts += tuple(Mount(container_path=p, host_path=VOLUME_MOUNTS_HOST_PATH) for p in paths)
    specs: tuple[DeviceSpec, ...] = ()
    if config.pass_device_specs:
        specs = device_specs(devices, config.device_root, existing_control_nodes)
        specs += tuple(
            DeviceSpec(container_path=c.path, host_path=host_path(config.device_root, c.path))
            for c in imex_channels
        )
    return ContainerAllocation(
        envs=envs, mounts=mounts, devices=specs, annotations=annotations, cdi_devices=cdi_devices
    )


def mps_allocation(resource_name: str, mps_root: str | None) -> tuple[dict[str, str], tuple[Mount, ...]]:
    """NVIDIA's MPS additions to an allocation (internal/plugin/mps.go): the daemon's pipe
    directory as the container sees it, that directory mounted from under the host's MPS root,
    and the daemons' shared /dev/shm. The limits (active threads, pinned memory) are the
    daemon's defaults, set through its control pipe, not env: a pod may still lower its own."""
    if mps_root is None:  # the config layer refuses MPS sharing without a root
        raise AllocationError(f"{resource_name}: shared with MPS but no MPS root is set (--mps-root)")
    host = MpsRoot(mps_root)
    pipe_dir = CONTAINER_MPS_ROOT.pipe_dir(resource_name)
    mounts = (
        Mount(container_path=pipe_dir, host_path=host.pipe_dir(resource_name)),
        Mount(container_path=SHM_CONTAINER_PATH, host_path=host.shm_dir()),
    )
    return {PIPE_DIRECTORY_ENV: pipe_dir}, mounts


def enabled_feature_modes(config: Config) -> tuple[str, ...]:
    """The optional container features switched on, in NVIDIA's order (its CDI modes)."""
    enabled = {"gdrcopy": config.gdrcopy_enabled, "gds": config.gds_enabled, "mofed": config.mofed_enabled}
    return tuple(mode for mode, on in enabled.items() if on)


@dataclass(frozen=True, slots=True)
class PreferenceRequest:
    """One GetPreferredAllocation container request, reduced to what an answer may hold.

    The answer is a hint (the kubelet fills or trims it) and an error fails pod admission, so
    every request gets one, and every answer keeps the same promises: only IDs from
    `available` that this plugin advertises, each once; the must-include ones among them
    first; exactly `size` IDs when there are that many, never more. IDs outside `available`
    or unknown to the plugin are ignored wherever they appear.
    """

    # must_include ∩ available, known, once each, in request order, at most `size`.
    fixed: tuple[AdvertisedDevice, ...]
    # The rest of `available`: known, not fixed, once each, in request order.
    candidates: tuple[AdvertisedDevice, ...]
    # How many candidates the answer adds: never more than there are.
    need: int

    def answer(self, picks: Sequence[AdvertisedDevice]) -> list[str]:
        return [d.id for d in self.fixed] + [d.id for d in picks[: self.need]]


def preference_request(
    resource: Resource, available: Sequence[str], must_include: Sequence[str], size: int
) -> PreferenceRequest:
    offered: dict[str, AdvertisedDevice] = {}
    for device_id in dict.fromkeys(available):
        device = resource.device(device_id)
        if device is not None:
            offered[device_id] = device
    fixed = [offered[i] for i in dict.fromkeys(must_include) if i in offered][: max(size, 0)]
    fixed_ids = {d.id for d in fixed}
    candidates = tuple(d for i, d in offered.items() if i not in fixed_ids)
    need = max(0, min(size - len(fixed), len(candidates)))
    return PreferenceRequest(tuple(fixed), candidates, need)


def preferred_in_order(
    resource: Resource, available: Sequence[str], must_include: Sequence[str], size: int
) -> list[str]:
    """The plainest answer keeping PreferenceRequest's promises: must-include IDs, then
    available ones in the kubelet's order."""
    request = preference_request(resource, available, must_include, size)
    return request.answer(request.candidates)


def preferred_shared_allocation(
    resource: Resource,
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    policy: str = "distributed",
) -> list[str]:
    """NVIDIA's greedy choice among time-sliced replicas.

    Every must-include ID first; then, one at a time, a replica of the device (GPU or MIG)
    that the policy ranks best: `distributed` prefers the device with the fewest replicas
    allocated (taken by other containers or already chosen), `packed` the most; ties go to
    the device picked from least in this request, then to inventory order (NVIDIA's heap order
    is arbitrary there). Keeps PreferenceRequest's promises.
    """
    request = preference_request(resource, available, must_include, size)
    groups: dict[str, list[AdvertisedDevice]] = {}
    for device in request.candidates:
        groups.setdefault(device.uuid, []).append(device)
    order: dict[str, int] = {}
    total: dict[str, int] = {}
    for device in resource.devices:
        order.setdefault(device.uuid, len(order))
        total[device.uuid] = total.get(device.uuid, 0) + 1
    free = {key: len(devices) for key, devices in groups.items()}
    picked: dict[str, int] = dict.fromkeys(groups, 0)
    for device in request.fixed:
        if device.uuid in picked:
            picked[device.uuid] += 1
    sign = -1 if policy == "packed" else 1

    def rank(key: str) -> tuple[int, int, int]:
        return (sign * (total[key] - free[key]), picked[key], order[key])

    picks: list[AdvertisedDevice] = []
    while len(picks) < request.need:
        best = min(groups, key=rank)
        picks.append(groups[best].pop(0))
        free[best] -= 1
        picked[best] += 1
        if not groups[best]:
            del groups[best]
    return request.answer(picks)
