"""Discovery: read the inventory through an Nvml backend. Blocking: run it in a worker thread."""

from __future__ import annotations

import logging

from nvplugin.core.inventory import Gpu, Inventory
from nvplugin.nvml.base import Nvml, NvmlError, NvmlNotSupported
from nvplugin.nvml.topology import with_topology

log = logging.getLogger(__name__)


def read_gpu(nvml: Nvml, index: int) -> Gpu:
    mig_enabled = read_mig_enabled(nvml, index)
    return Gpu(
        index=index,
        uuid=nvml.device_uuid(index),
        minor=nvml.device_minor_number(index),
        name=nvml.device_name(index),
        memory_bytes=nvml.device_memory_total(index),
        compute_capability=nvml.device_compute_capability(index),
        pci_bus_id=nvml.device_pci_bus_id(index),
        numa_node=nvml.device_numa_node(index),
        mig_enabled=mig_enabled,
        mig_devices=nvml.device_mig_devices(index) if mig_enabled else (),
    )


def read_mig_enabled(nvml: Nvml, index: int) -> bool:
    """A GPU without MIG support (NotSupported) is simply not MIG-enabled."""
    try:
        return nvml.device_mig_enabled(index)
    except NvmlNotSupported:
        return False


def discover(nvml: Nvml, *, topology: bool = True) -> Inventory:
    """Every GPU NVML can describe. A GPU that fails a query is left out and named in
    `problems`: the others are still advertised. Errors before any device (driver version,
    count) propagate: nothing can be served without them. `topology`: also read how the GPUs
    are wired (GetPreferredAllocation needs it; labels do not)."""
    driver = nvml.driver_version()
    cuda = nvml.cuda_driver_version()
    gpus: list[Gpu] = []
    problems: list[str] = []
    for index in range(nvml.device_count()):
        try:
            gpus.append(read_gpu(nvml, index))
        except NvmlError as exc:
            problems.append(f"GPU {index} left out: {exc}")
    inventory = Inventory(
        gpus=tuple(gpus), driver_version=driver, cuda_driver_version=cuda, problems=tuple(problems)
    )
    # Read once here, so GetPreferredAllocation never calls NVML (nvml/topology.py).
    return with_topology(nvml, inventory) if topology else inventory
