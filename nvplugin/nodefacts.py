"""Node facts the labels need beyond the inventory: DMI machine type, PCI class, MIG capability.

Blocking reads of sysfs and NVML: call `read_node_facts` in a worker thread from the loop.
Every failure degrades to GFD's "unknown"/false with a log line; nothing here stops labelling.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

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


def _sysfs_bus_id(pci_bus_id: str) -> str:
    """NVML's '00000000:00:06.0' -> sysfs's '0000:00:06.0'."""
    domain, _, rest = pci_bus_id.partition(":")
    return f"{domain[-4:]}:{rest}".lower()


def read_pci_class(pci_bus_id: str, sysfs_root: str = "/sys") -> str | None:
    path = os.path.join(sysfs_root, "bus/pci/devices", _sysfs_bus_id(pci_bus_id), "class")
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def probe_mig(nvml: Nvml, inventory: Inventory) -> tuple[bool, frozenset[str]]:
    """(any GPU MIG-capable, UUIDs of GPUs with MIG mode on). GFD's rule: a GPU is MIG-capable
    when nvmlDeviceGetMigMode is supported. Backends that cannot tell say (False, {})."""
    query = _mig_mode_query(nvml)
    if query is None:
        return False, frozenset()
    capable = False
    enabled: set[str] = set()
    for gpu in inventory.gpus:
        try:
            current = query(gpu.index)
        except NvmlNotSupported:
            continue
        except NvmlError as exc:
            log.warning("MIG mode of GPU %d unreadable (%s); treated as not MIG-capable", gpu.index, exc)
            continue
        capable = True
        if current:
            enabled.add(gpu.uuid)
    return capable, frozenset(enabled)


def _mig_mode_query(nvml: Nvml) -> Callable[[int], bool] | None:
    """A function index -> MIG mode on, raising NvmlNotSupported where MIG is not supported."""
    from nvplugin.nvml.real import RealNvml

    if isinstance(nvml, RealNvml):

        def from_pynvml(index: int) -> bool:
            import pynvml  # initialised by the backend already: NVML state is per process

            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
            except pynvml.NVMLError as exc:
                code = getattr(exc, "value", None)
                if code in (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND):
                    raise NvmlNotSupported("nvmlDeviceGetMigMode", str(exc), code) from None
                raise NvmlError("nvmlDeviceGetMigMode", str(exc), code) from None
            return bool(current)

        return from_pynvml
    # Other backends (the fake) say only whether MIG is on (device_mig_enabled, with the MIG
    # work): a GPU with MIG on is MIG-capable; one with MIG off cannot be told apart.
    enabled = getattr(nvml, "device_mig_enabled", None)
    if callable(enabled):

        def from_backend(index: int) -> bool:
            if not enabled(index):
                raise NvmlNotSupported("device_mig_enabled", "MIG off (capability unknown)")
            return True

        return from_backend
    return None


def read_node_facts(
    nvml: Nvml,
    inventory: Inventory,
    *,
    machine_type_file: str = DMI_PRODUCT_NAME,
    sysfs_root: str = "/sys",
    timestamp: bool = True,
    clock: Callable[[], float] = time.time,
) -> NodeFacts:
    capable, enabled = probe_mig(nvml, inventory)
    classes = tuple(c for c in (read_pci_class(g.pci_bus_id, sysfs_root) for g in inventory.gpus) if c)
    return NodeFacts(
        machine=read_machine_type(machine_type_file),
        timestamp=int(clock()) if timestamp else None,
        mig_capable=capable,
        pci_classes=classes,
        mig_enabled=enabled,
    )
