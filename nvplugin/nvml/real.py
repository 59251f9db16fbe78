"""The real NVML backend, over nvidia-ml-py (`import pynvml`).

pynvml is imported on first use, not at module import, so the fake backend and the CLI's
error paths never pay for it. Device handles are looked up once per index and cached.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from nvplugin.core.gpufacts import FabricInfo, VgpuDevice
from nvplugin.core.inventory import MigDevice
from nvplugin.core.mig import cap_node, memory_size_gb, parse_mig_minors, profile_name
from nvplugin.nvml.base import (
    LIBRARY_HINT,
    NO_INSTANCE,
    NVLINK_REMOTE_GPU,
    NVLINK_REMOTE_SWITCH,
    NVLINK_REMOTE_UNKNOWN,
    DeviceProbe,
    NvLinkRemote,
    NvmlError,
    NvmlEvent,
    NvmlGpuLost,
    NvmlLibraryNotFound,
    NvmlNotSupported,
    NvmlTimeout,
)
from nvplugin.nvml.pci import device_dir, read_pci_class, scan_vgpus

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
# NVML_ERROR_FUNCTION_NOT_FOUND: the loaded driver lacks the symbol.
_FUNCTION_NOT_FOUND = 13


class RealNvml:
    def __init__(self, driver_root: str = "/", sysfs_root: str = "/sys", proc_root: str = "/proc") -> None:
        self._driver_root = driver_root
        self._sysfs_root = sysfs_root
        self._proc_root = proc_root
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
        path = os.path.join(device_dir(self._sysfs_root, self.device_pci_bus_id(index)), "numa_node")
        try:
            with open(path) as f:
                node = int(f.read().strip())
        except (OSError, ValueError):
            return None
        return node if node >= 0 else None

    # --- facts for the node labels

    def device_pci_class(self, index: int) -> int:
        return read_pci_class(self._sysfs_root, self.device_pci_bus_id(index))

    def device_fabric_info(self, index: int) -> FabricInfo:
        """GFD's order: the v1 call where the driver has it, else the versioned one."""
        p = self._pynvml
        h = self._handle(index)
        for call, struct_name in (
            ("nvmlDeviceGetGpuFabricInfo", "c_nvmlGpuFabricInfo_t"),
            ("nvmlDeviceGetGpuFabricInfoV", "c_nvmlGpuFabricInfoV_t"),
        ):
            query, struct = getattr(p, call, None), getattr(p, struct_name, None)
            if query is None or struct is None:
                continue  # an nvidia-ml-py release without it
            info = struct()
            try:
                self._call(call, partial(query, h, ctypes.byref(info)))
            except NvmlNotSupported as exc:
                if exc.code == _FUNCTION_NOT_FOUND:
                    continue  # a driver without this version of the call
                raise
            return FabricInfo(
                cluster_uuid=str(uuid.UUID(bytes=_raw_field(info, "clusterUuid", 16))),
                clique_id=int(info.cliqueId),
                state=int(info.state),
                status=int(info.status),
            )
        raise NvmlNotSupported(
            "nvmlDeviceGetGpuFabricInfo", "neither the driver nor nvidia-ml-py has a GPU fabric query"
        )

    def device_virtualization_mode(self, index: int) -> int:
        h = self._handle(index)
        return int(
            self._call(
                "nvmlDeviceGetVirtualizationMode", lambda: self._pynvml.nvmlDeviceGetVirtualizationMode(h)
            )
        )

    def vgpu_devices(self) -> tuple[VgpuDevice, ...]:
        return scan_vgpus(self._sysfs_root)

    # --- topology (read once at discovery)

    def device_nvlink_remotes(self, index: int) -> list[NvLinkRemote]:
        """One entry per active NVLink. A GPU or driver without NVLink gives []; a link whose
        remote cannot be described is still counted (kind unknown, bus id empty)."""
        pynvml = self._pynvml
        h = self._handle(index)
        # Older nvidia-ml-py releases lack the remote-type query: classify by bus id then.
        remote_type = getattr(pynvml, "nvmlDeviceGetNvLinkRemoteDeviceType", None)
        npu = getattr(pynvml, "NVML_NVLINK_DEVICE_TYPE_IBMNPU", 1)
        kinds = {
            getattr(pynvml, "NVML_NVLINK_DEVICE_TYPE_GPU", 0): NVLINK_REMOTE_GPU,
            getattr(pynvml, "NVML_NVLINK_DEVICE_TYPE_SWITCH", 2): NVLINK_REMOTE_SWITCH,
        }
        remotes: list[NvLinkRemote] = []
        for link in range(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18)):
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
            raw_kind = None
            if remote_type is not None:
                # Older drivers: NotSupported, and the bus id decides instead.
                with contextlib.suppress(NvmlError):
                    raw_kind = self._call(
                        "nvmlDeviceGetNvLinkRemoteDeviceType", partial(remote_type, h, link)
                    )
            if raw_kind == npu:
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

    # --- health events (appended for the XID watcher)

    def event_set_create(self) -> object:
        return self._call("nvmlEventSetCreate", self._pynvml.nvmlEventSetCreate)

    def device_supported_events(self, index: int) -> int:
        h = self._handle(index)
        return int(
            self._call(
                "nvmlDeviceGetSupportedEventTypes", lambda: self._pynvml.nvmlDeviceGetSupportedEventTypes(h)
            )
        )

    def device_register_events(self, index: int, mask: int, event_set: object) -> None:
        h = self._handle(index)
        self._call(
            "nvmlDeviceRegisterEvents", lambda: self._pynvml.nvmlDeviceRegisterEvents(h, mask, event_set)
        )

    def event_set_wait(self, event_set: object, timeout_ms: int) -> NvmlEvent:
        data = self._call("nvmlEventSetWait", lambda: self._pynvml.nvmlEventSetWait_v2(event_set, timeout_ms))
        address = _handle_address(data.device)
        index = next((i for i, h in list(self._handles.items()) if _handle_address(h) == address), None)
        uuid = None
        if index is None:
            try:
                uuid = _text(self._pynvml.nvmlDeviceGetUUID(data.device))
            except self._pynvml.NVMLError:
                uuid = None  # the watcher probes every GPU when it cannot tell which one it was
        return NvmlEvent(
            gpu_index=index,
            uuid=uuid,
            event_type=int(data.eventType),
            data=int(data.eventData),
            gpu_instance=_instance(data.gpuInstanceId),
            compute_instance=_instance(data.computeInstanceId),
        )

    def event_set_free(self, event_set: object) -> None:
        self._call("nvmlEventSetFree", lambda: self._pynvml.nvmlEventSetFree(event_set))

    def device_probe(self, index: int) -> DeviceProbe:
        pynvml = self._pynvml
        uuid = self.device_uuid(index)
        h = self._handle(index)
        temperature: int | None
        try:
            temperature = int(
                self._call(
                    "nvmlDeviceGetTemperature",
                    lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
                )
            )
        except NvmlNotSupported:
            temperature = None
        return DeviceProbe(uuid=uuid, temperature_c=temperature, recovery_action=self._recovery_action(h))

    def _recovery_action(self, h: Any) -> int | None:
        """NVML's GPU recovery action field; None where the driver lacks it (before R550)."""
        pynvml = self._pynvml
        field_id = getattr(pynvml, "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION", None)
        if field_id is None:
            return None
        try:
            values = self._call(
                "nvmlDeviceGetFieldValues", lambda: pynvml.nvmlDeviceGetFieldValues(h, [field_id])
            )
        except NvmlGpuLost:
            raise
        except NvmlError:
            return None
        if not values or values[0].nvmlReturn != pynvml.NVML_SUCCESS:
            return None
        return int(values[0].value.uiVal)

    def device_mig_enabled(self, index: int) -> bool:
        h = self._handle(index)
        current, _pending = self._call("nvmlDeviceGetMigMode", lambda: self._pynvml.nvmlDeviceGetMigMode(h))
        return int(current) == int(getattr(self._pynvml, "NVML_DEVICE_MIG_ENABLE", 1))

    def device_mig_devices(self, index: int) -> tuple[MigDevice, ...]:
        return _RealMig(self, self._proc_root).devices(index)


# GPU instance profile index (NVML_GPU_INSTANCE_PROFILE_*) -> (attributes, negative), as
# go-nvlib names them: REV1 profiles carry the media extensions ("+me"), and so on.
_GI_PROFILE_ATTRIBUTES: dict[int, tuple[tuple[str, ...], bool]] = {
    7: (("me",), False),  # 1_SLICE_REV1
    8: (("me",), False),  # 2_SLICE_REV1
    10: (("gfx",), False),  # 1_SLICE_GFX
    11: (("gfx",), False),  # 2_SLICE_GFX
    12: (("gfx",), False),  # 4_SLICE_GFX
    13: (("me",), True),  # 1_SLICE_NO_ME
    14: (("me",), True),  # 2_SLICE_NO_ME
    15: (("me.all",), False),  # 1_SLICE_ALL_ME
    16: (("me.all",), False),  # 2_SLICE_ALL_ME
}
_GI_PROFILE_COUNT = 17


def _read_mig_minors(proc_root: str) -> dict[tuple[int, int, int | None], int]:
    path = os.path.join(proc_root, "driver/nvidia-caps/mig-minors")
    try:
        with open(path) as f:
            return parse_mig_minors(f.read())
    except OSError as exc:
        raise NvmlError(
            "read mig-minors", f"cannot read {path} to find MIG capability nodes: {exc.strerror or exc}"
        ) from None


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
    if code in (pynvml.NVML_ERROR_NOT_SUPPORTED, _FUNCTION_NOT_FOUND):
        # A driver too old for a query does not support it either.
        return NvmlNotSupported(call, message, code)
    if code == pynvml.NVML_ERROR_TIMEOUT:
        return NvmlTimeout(call, message, code)
    if code == pynvml.NVML_ERROR_GPU_IS_LOST:
        return NvmlGpuLost(call, message, code)
    return NvmlError(call, message, code)


def _handle_address(handle: Any) -> int | None:
    return ctypes.cast(handle, ctypes.c_void_p).value


def _instance(value: int) -> int | None:
    return None if value == NO_INSTANCE else int(value)


class _RealMig:
    """MIG enumeration over pynvml. Only Get* calls: MIG mode and instances are never changed."""

    def __init__(self, nvml: RealNvml, proc_root: str) -> None:
        self._nvml = nvml
        self._proc_root = proc_root

    def devices(self, index: int) -> tuple[MigDevice, ...]:
        nvml = self._nvml
        p = nvml._pynvml
        h = nvml._handle(index)
        minor = nvml.device_minor_number(index)
        total_bytes = nvml.device_memory_total(index)
        count = int(nvml._call("nvmlDeviceGetMaxMigDeviceCount", lambda: p.nvmlDeviceGetMaxMigDeviceCount(h)))
        profile_attributes = self._profile_attributes(h)
        cap_minors = _read_mig_minors(self._proc_root)
        devices = []
        for j in range(count):
            try:
                mh = p.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
            except p.NVMLError as exc:
                if getattr(exc, "value", None) == p.NVML_ERROR_NOT_FOUND:
                    continue  # an empty slot: MIG indexes may have gaps
                raise _translate("nvmlDeviceGetMigDeviceHandleByIndex", exc, p) from None
            uuid = _text(nvml._call("nvmlDeviceGetUUID", partial(p.nvmlDeviceGetUUID, mh)))
            gi = int(nvml._call("nvmlDeviceGetGpuInstanceId", partial(p.nvmlDeviceGetGpuInstanceId, mh)))
            ci = int(
                nvml._call("nvmlDeviceGetComputeInstanceId", partial(p.nvmlDeviceGetComputeInstanceId, mh))
            )
            attrs = nvml._call("nvmlDeviceGetAttributes", partial(p.nvmlDeviceGetAttributes, mh))
            gi_handle = nvml._call(
                "nvmlDeviceGetGpuInstanceById", partial(p.nvmlDeviceGetGpuInstanceById, h, gi)
            )
            gi_info = nvml._call("nvmlGpuInstanceGetInfo", partial(p.nvmlGpuInstanceGetInfo, gi_handle))
            extra, negative = profile_attributes.get(int(gi_info.profileId), ((), False))
            name = profile_name(
                int(attrs.gpuInstanceSliceCount),
                int(attrs.computeInstanceSliceCount),
                memory_size_gb(total_bytes, int(attrs.memorySizeMB)),
                extra,
                negative,
            )
            gi_minor = cap_minors.get((minor, gi, None))
            ci_minor = cap_minors.get((minor, gi, ci))
            if gi_minor is None or ci_minor is None:
                raise NvmlError(
                    "read mig-minors",
                    f"no capability node for MIG device {uuid} (gpu{minor}/gi{gi}/ci{ci}) in "
                    f"{self._proc_root}/driver/nvidia-caps/mig-minors",
                )
            devices.append(
                MigDevice(
                    uuid=uuid,
                    gpu_index=index,
                    index=j,
                    gi_id=gi,
                    ci_id=ci,
                    profile=name,
                    memory_mib=int(attrs.memorySizeMB),
                    multiprocessors=int(attrs.multiprocessorCount),
                    gi_slices=int(attrs.gpuInstanceSliceCount),
                    ci_slices=int(attrs.computeInstanceSliceCount),
                    copy_engines=int(attrs.sharedCopyEngineCount),
                    decoders=int(attrs.sharedDecoderCount),
                    encoders=int(attrs.sharedEncoderCount),
                    jpeg_decoders=int(attrs.sharedJpegCount),
                    ofa_engines=int(attrs.sharedOfaCount),
                    device_nodes=(f"/dev/nvidia{minor}", cap_node(gi_minor), cap_node(ci_minor)),
                )
            )
        return tuple(devices)

    def _profile_attributes(self, h: Any) -> dict[int, tuple[tuple[str, ...], bool]]:
        """GI profile id (what nvmlGpuInstanceGetInfo reports) -> profile-name attributes."""
        p = self._nvml._pynvml
        by_id: dict[int, tuple[tuple[str, ...], bool]] = {}
        for profile_index in range(_GI_PROFILE_COUNT):
            try:
                info = p.nvmlDeviceGetGpuInstanceProfileInfo(h, profile_index)
            except p.NVMLError:
                continue  # a profile this GPU or driver does not know
            by_id[int(info.id)] = _GI_PROFILE_ATTRIBUTES.get(profile_index, ((), False))
        return by_id


def _raw_field(struct: ctypes.Structure, name: str, size: int) -> bytes:
    """A char-array field's bytes as stored: ctypes reads such a field as a string ending at the
    first NUL, so a UUID with a zero byte (or the all-zero UUID of a GPU with no fabric) would
    come back short."""
    offset = getattr(type(struct), name).offset
    return ctypes.string_at(ctypes.addressof(struct) + offset, size)
