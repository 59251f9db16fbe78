"""Allocate and GetPreferredAllocation decisions, as pure functions.

The server turns the results into protobuf messages; errors become INVALID_ARGUMENT with the
message unchanged, so it must name every offending ID and say why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nvplugin.core.config import Config
from nvplugin.core.resources import AdvertisedDevice, Resource, unhealthy_reason


class AllocationError(ValueError):
    """The request cannot be honoured; the message names the IDs and the reason."""


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


def _quoted(ids: Sequence[str]) -> str:
    return ", ".join(repr(i) for i in ids)


def check_request(
    resource: Resource, ids: Sequence[str], unhealthy: Mapping[str, str]
) -> tuple[AdvertisedDevice, ...]:
    """The devices a container asked for, or AllocationError naming every bad ID."""
    if not ids:
        raise AllocationError(f"{resource.name}: the request names no device IDs")
    seen: set[str] = set()
    duplicates: list[str] = []
    unknown: list[str] = []
    sick: list[str] = []
    chosen: list[AdvertisedDevice] = []
    for device_id in ids:
        if device_id in seen:
            if device_id not in duplicates:
                duplicates.append(device_id)
            continue
        seen.add(device_id)
        device = resource.device(device_id)
        if device is None:
            unknown.append(device_id)
            continue
        reason = unhealthy_reason(device, unhealthy)
        if reason is not None:
            sick.append(f"{device_id!r} ({reason})")
            continue
        chosen.append(device)
    problems = []
    if unknown:
        problems.append(f"unknown device IDs {_quoted(unknown)} (not advertised by this plugin)")
    if duplicates:
        problems.append(f"duplicate device IDs {_quoted(duplicates)}")
    if sick:
        problems.append(f"unhealthy devices {', '.join(sick)}")
    if problems:
        raise AllocationError(f"{resource.name}: cannot allocate: " + "; ".join(problems))
    return tuple(chosen)


def container_allocation(devices: Sequence[AdvertisedDevice], config: Config) -> ContainerAllocation:
    """The envvar strategy: NVIDIA_VISIBLE_DEVICES lists the devices' UUIDs (or indexes)."""
    ids = [d.index if config.device_id_strategy == "index" else d.uuid for d in devices]
    # Replicas of one GPU share its UUID: pass each physical device once, in request order.
    visible = ",".join(dict.fromkeys(ids))
    return ContainerAllocation(envs={"NVIDIA_VISIBLE_DEVICES": visible})


def preferred_allocation(available: Sequence[str], must_include: Sequence[str], size: int) -> list[str]:
    """A best-effort choice of `size` IDs: every must-include ID, then available ones in order.

    Never fails: IDs are de-duplicated, must-include IDs not in `available` are still kept
    (the kubelet already committed to them), and a short supply returns what there is.
    """
    chosen = list(dict.fromkeys(must_include))
    if size <= len(chosen):
        return chosen
    taken = set(chosen)
    for device_id in available:
        if len(chosen) >= size:
            break
        if device_id not in taken:
            taken.add(device_id)
            chosen.append(device_id)
    return chosen
