"""The real NVML backend, over nvidia-ml-py (`import pynvml`).

pynvml is imported on first use, not at module import, so the fake backend and the CLI's
error paths never pay for it. Device handles are looked up once per index and cached.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from nvplugin.nvml.base import (
    LIBRARY_HINT,
    NVLINK_REMOTE_GPU,
    NVLINK_REMOTE_SWITCH,
    NVLINK_REMOTE_UNKNOWN,
    NvLinkRemote,
    NvmlError,
    NvmlGpuLost,
    NvmlLibraryNotFound,
    NvmlNotSupported,
    NvmlTimeout,
)

T = TypeVar("T")

# Where a driver installed under a non-/ root (NVIDIA_DRIVER_ROOT) keeps libnvidia-ml.
_LIBRARY_DIRS = (
    "usr/lib64",
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib64",
    "lib/x86_64-linux-gnu",
    "usr/lib",
    "lib",
)
_LIBRARY = "libnvidia-ml.so.1"


def _sysfs_bus_id(pci_bus_id: str) -> str:
    """NVML's '00000000:00:06.0' -> sysfs's '0000:00:06.0'."""
    domain, _, rest = pci_bus_id.partition(":")
    return f"{domain[-4:]}:{rest}".lower()


class RealNvml:
    def __init__(self, driver_root: str = "/", sysfs_root: str = "/sys") -> None:
        self._driver_root = driver_root
        self._sysfs_root = sysfs_root
        self._pynvml: Any = None
        self._handles: dict[int, Any] = {}
        self._lock = threading.Lock()

    # --- plumbing

    def _call(self, name: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except self._pynvml.NVMLError as exc:
            raise _translate(name, exc, self._pynvml) from None

    def _handle(self, index: int) -> Any:
        handle = self._handles.get(index)
        if handle is None:
            handle = self._call(
                "nvmlDeviceGetHandleByIndex",
                lambda: self._pynvml.nvmlDeviceGetHandleByIndex(index),
            )
            self._handles[index] = handle
        return handle

    def _preload_from_driver_root(self) -> None:
        # pynvml dlopens the library by soname; loading it first by full path from the
        # driver root makes that dlopen find it.
        if self._driver_root in ("", "/"):
            return
        for directory in _LIBRARY_DIRS:
            candidate = Path(self._driver_root, directory, _LIBRARY)
            if candidate.exists():
                ctypes.CDLL(str(candidate), mode=ctypes.RTLD_GLOBAL)
                return

    # --- the Nvml protocol

    def init(self) -> None:
        with self._lock:
            try:
                import pynvml
            except ImportError as exc:  # the package itself is missing: an install problem
                raise NvmlLibraryNotFound("import pynvml", f"nvidia-ml-py is not installed ({exc})") from None
            self._pynvml = pynvml
            try:
                self._preload_from_driver_root()
            except OSError as exc:
                raise NvmlLibraryNotFound(
                    "dlopen", f"{_LIBRARY} under {self._driver_root} could not be loaded: {exc}"
                ) from None
            self._call("nvmlInit", pynvml.nvmlInit)
            self._handles.clear()

    def shutdown(self) -> None:
        with self._lock:
            if self._pynvml is not None:
                self._call("nvmlShutdown", self._pynvml.nvmlShutdown)
                self._handles.clear()

    def driver_version(self) -> str:
        return _text(self._call("nvmlSystemGetDriverVersion", self._pynvml.nvmlSystemGetDriverVersion))

    def cuda_driver_version(self) -> int:
        return int(self._call("nvmlSystemGetCudaDriverVersion", self._pynvml.nvmlSystemGetCudaDriverVersion))

    def device_count(self) -> int:
        return int(self._call("nvmlDeviceGetCount", self._pynvml.nvmlDeviceGetCount))

    def device_uuid(self, index: int) -> str:
        h = self._handle(index)
        return _text(self._call("nvmlDeviceGetUUID", lambda: self._pynvml.nvmlDeviceGetUUID(h)))

    def device_name(self, index: int) -> str:
        h = self._handle(index)
        return _text(self._call("nvmlDeviceGetName", lambda: self._pynvml.nvmlDeviceGetName(h)))

    def device_minor_number(self, index: int) -> int:
        h = self._handle(index)
        return int(self._call("nvmlDeviceGetMinorNumber", lambda: self._pynvml.nvmlDeviceGetMinorNumber(h)))

    def device_memory_total(self, index: int) -> int:
        h = self._handle(index)
        info = self._call("nvmlDeviceGetMemoryInfo", lambda: self._pynvml.nvmlDeviceGetMemoryInfo(h))
        return int(info.total)

    def device_compute_capability(self, index: int) -> tuple[int, int]:
        h = self._handle(index)
        major, minor = self._call(
            "nvmlDeviceGetCudaComputeCapability",
            lambda: self._pynvml.nvmlDeviceGetCudaComputeCapability(h),
        )
        return int(major), int(minor)

    def device_pci_bus_id(self, index: int) -> str:
        h = self._handle(index)
        info = self._call("nvmlDeviceGetPciInfo", lambda: self._pynvml.nvmlDeviceGetPciInfo(h))
        return _text(info.busId)

    def device_numa_node(self, index: int) -> int | None:
        # sysfs is the kernel's word and works where nvmlDeviceGetNumaNodeId is NotSupported.
        bus_id = _sysfs_bus_id(self.device_pci_bus_id(index))
        path = os.path.join(self._sysfs_root, "bus/pci/devices", bus_id, "numa_node")
        try:
            with open(path) as f:
                node = int(f.read().strip())
        except (OSError, ValueError):
            return None
        return node if node >= 0 else None

    # --- topology (read once at discovery)

    def device_nvlink_remotes(self, index: int) -> list[NvLinkRemote]:
        """One entry per active NVLink. A GPU or driver without NVLink gives []; a link whose
        remote cannot be described is still counted (kind unknown, bus id empty)."""
        pynvml = self._pynvml
        h = self._handle(index)
        kinds = {
            pynvml.NVML_NVLINK_DEVICE_TYPE_GPU: NVLINK_REMOTE_GPU,
            pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH: NVLINK_REMOTE_SWITCH,
        }
        remotes: list[NvLinkRemote] = []
        for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
            try:
                active = self._call(
                    "nvmlDeviceGetNvLinkState", partial(pynvml.nvmlDeviceGetNvLinkState, h, link)
                )
            except NvmlGpuLost:
                raise
            except NvmlNotSupported:
                if link == 0:
                    return []  # no NVLink on this GPU
                continue
            except NvmlError as exc:
                if exc.code == pynvml.NVML_ERROR_INVALID_ARGUMENT:
                    break  # past the GPU's last link
                continue
            if active != pynvml.NVML_FEATURE_ENABLED:
                continue
            try:
                raw_kind = self._call(
                    "nvmlDeviceGetNvLinkRemoteDeviceType",
                    partial(pynvml.nvmlDeviceGetNvLinkRemoteDeviceType, h, link),
                )
            except NvmlError:
                raw_kind = None  # older drivers: classify by bus id instead
            if raw_kind == pynvml.NVML_NVLINK_DEVICE_TYPE_IBMNPU:
                continue  # a link to the CPU, not to another GPU
            try:
                info = self._call(
                    "nvmlDeviceGetNvLinkRemotePciInfo_v2",
                    partial(pynvml.nvmlDeviceGetNvLinkRemotePciInfo, h, link),
                )
                bus_id = _text(info.busId)
            except NvmlError:
                bus_id = ""
            remotes.append(NvLinkRemote(bus_id, kinds.get(raw_kind, NVLINK_REMOTE_UNKNOWN)))
        return remotes

    def device_topology_common_ancestor(self, index_a: int, index_b: int) -> int:
        a, b = self._handle(index_a), self._handle(index_b)
        return int(
            self._call(
                "nvmlDeviceGetTopologyCommonAncestor",
                lambda: self._pynvml.nvmlDeviceGetTopologyCommonAncestor(a, b),
            )
        )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _translate(call: str, exc: Any, pynvml: Any) -> NvmlError:
    code = getattr(exc, "value", None)
    try:
        message = str(exc)
    except Exception:  # pynvml's __str__ itself calls into the library
        message = f"NVML error {code}"
    if code == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
        return NvmlLibraryNotFound(call, f"{_LIBRARY} was not found: {LIBRARY_HINT}", code)
    if code == pynvml.NVML_ERROR_DRIVER_NOT_LOADED:
        return NvmlLibraryNotFound(call, f"the NVIDIA kernel driver is not loaded: {LIBRARY_HINT}", code)
    if code == pynvml.NVML_ERROR_NOT_SUPPORTED:
        return NvmlNotSupported(call, message, code)
    if code == pynvml.NVML_ERROR_TIMEOUT:
        return NvmlTimeout(call, message, code)
    if code == pynvml.NVML_ERROR_GPU_IS_LOST:
        return NvmlGpuLost(call, message, code)
    return NvmlError(call, message, code)
