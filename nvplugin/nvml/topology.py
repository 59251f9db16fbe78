"""Read how the inventory's GPUs are wired, once, at discovery. Blocking: run in a worker thread.

NVLink: every active link of every GPU is followed to its remote. A remote that is another
GPU of the inventory is a direct link. A remote that is an NVSwitch (or, when the driver
cannot say, any remote that is not one of our GPUs) puts the GPU on the node's NVSwitch
fabric, where every GPU reaches every other one: a pair on the fabric gets the smaller of the
two GPUs' switch-link counts (H100 HGX: 18, which `nvidia-smi topo -m` shows as NV18).
PCIe: nvmlDeviceGetTopologyCommonAncestor for every pair. NUMA: the inventory's.

Nothing here fails discovery: a GPU whose links cannot be read gets none, a pair whose PCIe
level cannot be read is SYSTEM apart, and each such gap is named in `Topology.problems`.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from nvplugin.core.inventory import Inventory
from nvplugin.core.topology import PcieLevel, Topology
from nvplugin.nvml.base import (
    NVLINK_REMOTE_GPU,
    NVLINK_REMOTE_SWITCH,
    Nvml,
    normalize_bus_id,
)

log = logging.getLogger(__name__)


def read_topology(nvml: Nvml, inventory: Inventory) -> Topology:
    gpus = inventory.gpus
    n = len(gpus)
    by_bus_id = {normalize_bus_id(gpu.pci_bus_id): position for position, gpu in enumerate(gpus)}
    problems: list[str] = []
    direct = [[0] * n for _ in range(n)]
    switch_links = [0] * n
    for i, gpu in enumerate(gpus):
        try:
            remotes = nvml.device_nvlink_remotes(gpu.index)
        except Exception as exc:  # NvmlError, or an old nvidia-ml-py: never fail discovery
            problems.append(f"GPU {gpu.index} ({gpu.uuid}): NVLinks unknown, treated as none: {exc}")
            continue
        for remote in remotes:
            peer = by_bus_id.get(normalize_bus_id(remote.bus_id)) if remote.bus_id else None
            if remote.kind == NVLINK_REMOTE_SWITCH:
                switch_links[i] += 1
            elif peer is not None and peer != i:
                direct[i][peer] += 1
            elif remote.kind != NVLINK_REMOTE_GPU:
                # None of our GPUs, and the driver cannot say what it is: on every system
                # seen so far that is an NVSwitch (older drivers lack the remote type query).
                switch_links[i] += 1
            # else: a GPU this node cannot see (another VM's): no use to us.
    links = [[0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            # One side's view suffices: a GPU whose links could not be read still gets them.
            count = max(direct[i][j], direct[j][i])
            if switch_links[i] and switch_links[j]:
                count += min(switch_links[i], switch_links[j])
            links[i][j] = links[j][i] = count
    levels = [[PcieLevel.SYSTEM] * n for _ in range(n)]
    for i in range(n):
        levels[i][i] = PcieLevel.INTERNAL
        for j in range(i + 1, n):
            try:
                raw = nvml.device_topology_common_ancestor(gpus[i].index, gpus[j].index)
                level = PcieLevel.from_nvml(raw)
            except Exception as exc:  # NvmlError, or an old nvidia-ml-py: never fail discovery
                level = PcieLevel.SYSTEM
                problems.append(
                    f"GPUs {gpus[i].index} and {gpus[j].index}: PCIe relationship unknown, "
                    f"treated as across sockets (SYS): {exc}"
                )
            levels[i][j] = levels[j][i] = level
    for problem in problems:
        log.warning("topology: %s", problem)
    return Topology(
        gpus=tuple(gpu.uuid for gpu in gpus),
        nvlinks=tuple(tuple(row) for row in links),
        pcie=tuple(tuple(row) for row in levels),
        numa_nodes=tuple(gpu.numa_node for gpu in gpus),
        nvswitch=frozenset(gpu.uuid for gpu, count in zip(gpus, switch_links, strict=True) if count),
        problems=tuple(problems),
    )


def with_topology(nvml: Nvml, inventory: Inventory) -> Inventory:
    """The inventory with its topology read (discovery's last step)."""
    return replace(inventory, topology=read_topology(nvml, inventory))
