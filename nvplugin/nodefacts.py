"""Node facts the labels need beyond the inventory: DMI machine type, and through the Nvml
interface the GPUs' PCI classes, MIG capability, fabric registration and the vGPU scan.

Blocking reads: call `read_node_facts` in a worker thread from the loop. Every failure degrades
to what GFD writes when it cannot tell ("unknown", false, or no label) with a log line; nothing
here stops labelling. Only nvml/real.py talks to NVML itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from nvplugin.core.gpufacts import VIRTUALIZATION_VGPU, FabricInfo, Vgpu, vgpu_of
from nvplugin.core.inventory import Inventory
from nvplugin.core.labels import MACHINE_UNKNOWN, NodeFacts
from nvplugin.nvml.base import Nvml, NvmlError, NvmlNotSupported

log = logging.getLogger(__name__)

# GFD's --machine-type-file default.
DMI_PRODUCT_NAME = "/sys/class/dmi/id/product_name"


def read_machine_type(path: str = DMI_PRODUCT_NAME) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip() or MACHINE_UNKNOWN
    except OSError as exc:
        log.warning(
            "machine type: cannot read %s (%s); labelling gpu.machine=unknown", path, exc.strerror or exc
        )
        return MACHINE_UNKNOWN


def probe_mig_capable(nvml: Nvml, inventory: Inventory) -> bool:
    """GFD's rule: a GPU is MIG-capable when nvmlDeviceGetMigMode is supported on it."""
    for gpu in inventory.gpus:
        try:
            nvml.device_mig_enabled(gpu.index)
        except NvmlNotSupported:
            continue
        except NvmlError as exc:
            log.warning("MIG mode of GPU %d unreadable (%s); treated as not MIG-capable", gpu.index, exc)
            continue
        return True
    return False


def read_pci_classes(nvml: Nvml, inventory: Inventory) -> tuple[int | None, ...]:
    classes: list[int | None] = []
    for gpu in inventory.gpus:
        try:
            classes.append(nvml.device_pci_class(gpu.index))
        except NvmlError as exc:
            log.warning("PCI class of GPU %d unreadable (%s); labelling gpu.mode=unknown", gpu.index, exc)
            classes.append(None)
    return tuple(classes)


def read_fabrics(nvml: Nvml, inventory: Inventory) -> tuple[FabricInfo, ...] | None:
    """The fabric registration of every GPU that has a fabric; None when one could not be read
    (GFD fails its whole pass then; we leave the clique label out)."""
    fabrics: list[FabricInfo] = []
    for gpu in inventory.gpus:
        try:
            fabrics.append(nvml.device_fabric_info(gpu.index))
        except NvmlNotSupported:
            continue
        except NvmlError as exc:
            log.warning(
                "GPU fabric of GPU %d unreadable (%s); no nvidia.com/gpu.clique label", gpu.index, exc
            )
            return None
    return tuple(fabrics)


def read_vgpu(nvml: Nvml, inventory: Inventory) -> Vgpu | None:
    """GFD's vGPU scan of the PCI bus. Where it cannot run (config space needs CAP_SYS_ADMIN,
    which GFD's own default deployment lacks, so GFD writes no vgpu label there), NVML's
    virtualization mode still tells whether this is a vGPU guest, though not the host driver."""
    try:
        vgpu = vgpu_of(nvml.vgpu_devices())
    except NvmlError as exc:
        level = logging.INFO if isinstance(exc, NvmlNotSupported) else logging.WARNING
        log.log(level, "vGPU scan: %s; telling vGPU guests by NVML's virtualization mode", exc)
        return _vgpu_from_virtualization_mode(nvml, inventory)
    if vgpu.present and vgpu.host_driver is None:
        log.warning("vGPU: a vGPU capability has no host driver record; no vgpu.host-driver-* labels")
    return vgpu


def _vgpu_from_virtualization_mode(nvml: Nvml, inventory: Inventory) -> Vgpu | None:
    present = False
    for gpu in inventory.gpus:
        try:
            present |= nvml.device_virtualization_mode(gpu.index) == VIRTUALIZATION_VGPU
        except NvmlNotSupported:
            continue
        except NvmlError as exc:
            log.warning("virtualization mode of GPU %d unreadable (%s); no vgpu labels", gpu.index, exc)
            return None
    if present:
        log.warning(
            "vGPU guest: the host driver's version and branch (vgpu.host-driver-* labels) are read "
            "from PCI config space, which needs CAP_SYS_ADMIN"
        )
    return Vgpu(present=present)


def read_node_facts(
    nvml: Nvml,
    inventory: Inventory,
    *,
    machine_type_file: str = DMI_PRODUCT_NAME,
    timestamp: bool = True,
    clock: Callable[[], float] = time.time,
) -> NodeFacts:
    return NodeFacts(
        machine=read_machine_type(machine_type_file),
        timestamp=int(clock()) if timestamp else None,
        mig_capable=probe_mig_capable(nvml, inventory),
        pci_classes=read_pci_classes(nvml, inventory),
        fabrics=read_fabrics(nvml, inventory),
        vgpu=read_vgpu(nvml, inventory),
    )
