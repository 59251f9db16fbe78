"""MPS sharing as NVIDIA's plugin and mps-control-daemon (v0.20) do it: the directory layout
under the MPS root, and what each resource's control daemon is started with. Pure.

Layout (NVIDIA's mps.Root), for an advertised resource name R such as nvidia.com/gpu:
    <root>/R/pipe      the daemon's CUDA_MPS_PIPE_DIRECTORY, mounted into every client
    <root>/R/log       its CUDA_MPS_LOG_DIRECTORY (control.log, server.log)
    <root>/R/.started  written once the daemon runs with its limits set
    <root>/shm         the /dev/shm that the daemon, its servers and every client share
The host's root is --mps-root; containers see it at /mps (NVIDIA's ContainerRoot): a client's
CUDA_MPS_PIPE_DIRECTORY is /mps/R/pipe, and the agent itself sees the root there when the
DaemonSet mounts it so (as NVIDIA's charts mount it into the plugin and the daemon).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from nvplugin.core.config import SharingStrategy
from nvplugin.core.inventory import Inventory
from nvplugin.core.resources import Resource

CONTAINER_ROOT = "/mps"
SHM_CONTAINER_PATH = "/dev/shm"
PIPE_DIRECTORY_ENV = "CUDA_MPS_PIPE_DIRECTORY"
LOG_DIRECTORY_ENV = "CUDA_MPS_LOG_DIRECTORY"
CONTROL_BINARY = "nvidia-cuda-mps-control"
# What the control daemon writes into its pipe directory: its PID, and the control socket.
PID_FILE = "nvidia-cuda-mps-control.pid"
CONTROL_LOG = "control.log"
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class MpsRoot:
    """NVIDIA's mps.Root: where per-resource pipe and log directories live."""

    path: str

    def _join(self, *parts: str) -> str:
        return posixpath.normpath(posixpath.join(self.path, *parts))

    def pipe_dir(self, resource: str) -> str:
        return self._join(resource, "pipe")

    def log_dir(self, resource: str) -> str:
        return self._join(resource, "log")

    def started_file(self, resource: str) -> str:
        return self._join(resource, ".started")

    def shm_dir(self) -> str:
        return self._join("shm")


CONTAINER_MPS_ROOT = MpsRoot(CONTAINER_ROOT)


@dataclass(frozen=True, slots=True)
class MpsDaemonPlan:
    """One MPS control daemon: the resource it serves, where it lives, and its defaults.

    `gpu_uuids` become the daemon's CUDA_VISIBLE_DEVICES (UUIDs, as NVIDIA's MPS guide
    recommends), so CUDA ordinal n is the n-th of them; the pinned memory limits are keyed by
    that ordinal. NVIDIA sets no CUDA_VISIBLE_DEVICES and keys the limits by NVML index: with
    MPS every GPU belongs to the one shared resource, so both name the same devices.
    """

    resource: str
    root: MpsRoot
    gpu_uuids: tuple[str, ...]
    # Replicas advertised per GPU (NVIDIA: devices / distinct GPUs, an integer division).
    replicas: int
    # 100 / replicas (NVIDIA's set_default_active_thread_percentage).
    active_thread_percentage: int
    # (CUDA ordinal, limit) for set_default_device_pinned_mem_limit: the GPU's memory divided by
    # its replicas, in MiB ("<n>M"); GPUs whose memory NVML did not report get none.
    pinned_memory_limits: tuple[tuple[int, str], ...]

    @property
    def pipe_dir(self) -> str:
        return self.root.pipe_dir(self.resource)

    @property
    def log_dir(self) -> str:
        return self.root.log_dir(self.resource)

    @property
    def started_file(self) -> str:
        return self.root.started_file(self.resource)

    @property
    def shm_dir(self) -> str:
        return self.root.shm_dir()

    @property
    def pid_file(self) -> str:
        return posixpath.join(self.pipe_dir, PID_FILE)

    @property
    def control_log(self) -> str:
        return posixpath.join(self.log_dir, CONTROL_LOG)

    def environment(self) -> dict[str, str]:
        """What the daemon (and every control command sent to it) runs with, beyond PATH."""
        return {
            PIPE_DIRECTORY_ENV: self.pipe_dir,
            LOG_DIRECTORY_ENV: self.log_dir,
            "CUDA_VISIBLE_DEVICES": ",".join(self.gpu_uuids),
        }

    def settings(self) -> tuple[str, ...]:
        """The control commands sent once the daemon runs, in NVIDIA's order: the pinned memory
        limits, then the active thread percentage."""
        limits = tuple(
            f"set_default_device_pinned_mem_limit {n} {limit}" for n, limit in self.pinned_memory_limits
        )
        return (*limits, f"set_default_active_thread_percentage {self.active_thread_percentage}")


def is_mps_shared(resource: Resource) -> bool:
    return resource.sharing_strategy is SharingStrategy.MPS and bool(resource.devices)


def plan_mps_daemons(
    resources: Sequence[Resource], inventory: Inventory, root: MpsRoot
) -> tuple[MpsDaemonPlan, ...]:
    """One daemon per MPS-shared resource with devices (NVIDIA's mps.Manager.Daemons)."""
    plans = []
    for resource in resources:
        if not is_mps_shared(resource):
            continue
        per_gpu: dict[str, int] = {}
        for device in resource.devices:
            per_gpu[device.gpu_uuid] = per_gpu.get(device.gpu_uuid, 0) + 1
        uuids = tuple(per_gpu)
        replicas = len(resource.devices) // len(uuids)
        limits = []
        for ordinal, uuid in enumerate(uuids):
            gpu = inventory.gpu_by_uuid(uuid)
            if gpu is not None and gpu.memory_bytes > 0:
                limits.append((ordinal, f"{gpu.memory_bytes // per_gpu[uuid] // _MIB}M"))
        plans.append(
            MpsDaemonPlan(
                resource=resource.name,
                root=root,
                gpu_uuids=uuids,
                replicas=replicas,
                active_thread_percentage=100 // replicas,
                pinned_memory_limits=tuple(limits),
            )
        )
    return tuple(plans)
