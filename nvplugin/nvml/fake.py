"""The fake NVML backend: described GPUs with injectable faults.

A product feature, not only a test helper: `nvplugin run --fake-gpus 8` and `nvplugin
simulate` run the real agent on it, and users can drive it in their own tests. The rest of the
agent cannot tell it from the real backend: same interface, same exception types.

A layout is a dict (from YAML or JSON):

    driverVersion: "580.159.04"
    cudaDriverVersion: 13000          # 1000 * major + 10 * minor
    seed: node-a                      # makes UUIDs differ between simulated nodes
    gpu:                              # template applied to every GPU
      name: NVIDIA H100 80GB HBM3
      memoryMiB: 81559
      computeCapability: "9.0"
    count: 8                          # or a list under `gpus`, each entry overriding the template
    gpus:
      - {numaNode: 0}
      - {numaNode: 1, name: NVIDIA A100-SXM4-40GB, memoryMiB: 40960, computeCapability: "8.0"}
      - {migDevices: [3g.40gb, 2g.20gb, 1g.10gb, 1g.10gb]}   # MIG enabled, these instances
      - {migEnabled: true, migDevices: []}                   # MIG enabled, nothing configured
      - {migCapable: false}           # nvmlDeviceGetMigMode is NotSupported (no MIG at all)
      - {pciClass: "0x030000"}        # VGA controller (graphics mode); default 0x030200
    faults:
      library: missing                # or init-error
      devices:
        "1": {device_uuid: gpu-lost}  # NVML call name -> error kind
      node:
        vgpu_devices: not-supported   # the PCI scan for vGPUs fails (as without CAP_SYS_ADMIN)

Error kinds: not-supported, gpu-lost, timeout, unknown.

Facts for the node labels (docs/labels.md), per GPU or in the `gpu` template:

    migCapable: true                  # default: compute capability 8.0, 9.x or 10.x
    pciClass: "0x030200"              # sysfs class code: 0x030200 compute, 0x030000 graphics
    fabric:                           # nvmlDeviceGetGpuFabricInfo; absent: NotSupported
      clusterUuid: 0b1f0a54-7a2c-4d8e-9c7e-3f2a1b0c9d8e
      cliqueId: 32766
      state: completed                # not-supported, not-started, in-progress, completed
      status: 0                       # NVML return code of the registration (0: success)
    virtualizationMode: none          # passthrough, vgpu, host-vgpu, host-vsga
    vgpuHostDriver:                   # a vGPU guest (implies virtualizationMode: vgpu): the
      version: 550.90.05              # host driver its vGPU capability names (10 characters
      branch: r550_00                 # at most each)

A GPU with `virtualizationMode: vgpu` is a vGPU in the PCI scan (`vgpu_devices`); without
`vgpuHostDriver` its capability has no host driver record.

An optional `topology` section describes how the GPUs are wired (see docs/topology.md;
nvplugin/nvml/layouts/ has complete examples):

    topology:
      nvlink:                         # direct NVLinks, "i-j": count
        "0-1": 2
      nvswitch: true                  # every GPU on one NVSwitch fabric, 18 links each; or
      # nvswitch: {gpus: [0, 1], links: 18, switches: 4}
      pcie:                           # groups of GPUs per PCIe level; the closest group wins
        single: [[0, 1], [2, 3]]      # one PCIe switch (nvidia-smi PIX)
        multiple: [[0, 1, 2, 3]]      # several switches (PXB); also internal, hostbridge, node
      # pairs in no group: NODE when on the same NUMA node (numaNode), else SYSTEM

MIG profiles (H100 80GB facts): 1g.10gb, 1g.10gb+me, 1g.20gb, 2g.20gb, 3g.40gb, 4g.40gb,
7g.80gb. MIG UUIDs are "MIG-<uuid>"; capability nodes are numbered as the driver does.
"""

from __future__ import annotations

import hashlib
import json
import string
import threading
import uuid as uuidlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nvplugin.core.gpufacts import (
    FABRIC_STATE_COMPLETED,
    FABRIC_STATE_IN_PROGRESS,
    FABRIC_STATE_NOT_STARTED,
    FABRIC_STATE_NOT_SUPPORTED,
    VIRTUALIZATION_MODES,
    VIRTUALIZATION_NONE,
    VIRTUALIZATION_VGPU,
    FabricInfo,
    VgpuDevice,
    VgpuHostDriver,
)
from nvplugin.core.inventory import MigDevice
from nvplugin.core.mig import (
    H100_COMPUTE_SLICES,
    H100_PROFILES,
    cap_node,
    ci_cap_minor,
    gi_cap_minor,
)
from nvplugin.core.topology import PcieLevel
from nvplugin.nvml.base import (
    EVENT_XID_CRITICAL,
    LIBRARY_HINT,
    NVLINK_REMOTE_GPU,
    NVLINK_REMOTE_SWITCH,
    DeviceProbe,
    NvLinkRemote,
    NvmlError,
    NvmlEvent,
    NvmlGpuLost,
    NvmlLibraryNotFound,
    NvmlNotSupported,
    NvmlTimeout,
    normalize_bus_id,
)

H100_NAME = "NVIDIA H100 80GB HBM3"
H100_MEMORY_MIB = 81559
DEFAULT_DRIVER = "580.159.04"
DEFAULT_CUDA = 13000

ERROR_KINDS: Mapping[str, type[NvmlError]] = {
    "not-supported": NvmlNotSupported,
    "gpu-lost": NvmlGpuLost,
    "timeout": NvmlTimeout,
    "unknown": NvmlError,
}
DEVICE_CALLS = (
    "device_uuid",
    "device_name",
    "device_minor_number",
    "device_memory_total",
    "device_compute_capability",
    "device_pci_bus_id",
    "device_numa_node",
    "device_mig_enabled",
    "device_mig_devices",
    "device_nvlink_remotes",
    "device_topology_common_ancestor",
    "device_pci_class",
    "device_fabric_info",
    "device_virtualization_mode",
)
# Calls about the node rather than one GPU (faults: node:).
NODE_CALLS = ("vgpu_devices",)
LIBRARY_FAULTS = ("missing", "init-error")
PCI_CLASS_3D_CONTROLLER = 0x030200
FABRIC_STATES = {
    "not-supported": FABRIC_STATE_NOT_SUPPORTED,
    "not-started": FABRIC_STATE_NOT_STARTED,
    "in-progress": FABRIC_STATE_IN_PROGRESS,
    "completed": FABRIC_STATE_COMPLETED,
}
# What the vGPU capability's host driver fields hold (NUL-padded).
VGPU_DRIVER_FIELD_MAX = 10


class LayoutError(ValueError):
    """A fake layout is malformed; the message names the file, the field and what was expected."""


@dataclass(frozen=True, slots=True)
class FakeGpu:
    name: str = H100_NAME
    memory_mib: int = H100_MEMORY_MIB
    compute_capability: tuple[int, int] = (9, 0)
    numa_node: int | None = None
    uuid: str = ""
    pci_bus_id: str = ""
    minor: int = -1
    mig_enabled: bool = False
    # Profile names of the configured MIG devices; the devices themselves are derived.
    mig_profiles: tuple[str, ...] = ()
    mig_devices: tuple[MigDevice, ...] = ()
    # None: from the compute capability (see default_mig_capable).
    mig_capable: bool | None = None
    pci_class: int = PCI_CLASS_3D_CONTROLLER
    # None: the GPU has no fabric (nvmlDeviceGetGpuFabricInfo is not supported).
    fabric: FabricInfo | None = None
    virtualization_mode: int = VIRTUALIZATION_NONE
    # Set on a vGPU guest whose vGPU capability names the host driver.
    vgpu_host_driver: VgpuHostDriver | None = None


def default_mig_capable(compute_capability: tuple[int, int]) -> bool:
    """Data-centre GPUs from the A100 on support MIG: compute capability 8.0, 9.x, 10.x.
    (8.6 and 8.9 parts such as the A10 and L40S do not; layouts say so for exceptions.)"""
    return compute_capability == (8, 0) or compute_capability[0] in (9, 10)


@dataclass(frozen=True, slots=True)
class FakeLayout:
    gpus: tuple[FakeGpu, ...]
    driver_version: str = DEFAULT_DRIVER
    cuda_driver_version: int = DEFAULT_CUDA
    library_fault: str | None = None
    # device index -> NVML call name -> error kind
    device_faults: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    # How the GPUs are wired; None: no NVLink, PCIe from NUMA nodes alone.
    topology: FakeTopology | None = None
    # node-wide call name (NODE_CALLS) -> error kind
    node_faults: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, count: int, seed: str = "nvplugin", **template: Any) -> FakeLayout:
        """`count` identical GPUs (an H100 80GB by default)."""
        return _complete(cls(gpus=tuple(FakeGpu(**template) for _ in range(count))), seed)


def _uuid(seed: str, index: int) -> str:
    digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    return f"GPU-{uuidlib.UUID(bytes=digest[:16], version=4)}"


def _mig_uuid(seed: str, gpu_index: int, mig_index: int) -> str:
    digest = hashlib.sha256(f"{seed}/{gpu_index}/mig/{mig_index}".encode()).digest()
    return f"MIG-{uuidlib.UUID(bytes=digest[:16], version=4)}"


def _mig_devices(seed: str, index: int, gpu: FakeGpu) -> tuple[MigDevice, ...]:
    """The MIG devices of a completed GPU: one GPU instance per profile, each holding one
    compute instance over all its slices (what `nvidia-smi mig -cgi P -C` creates)."""
    devices = []
    for j, name in enumerate(gpu.mig_profiles):
        profile = H100_PROFILES[name]
        # A full-GPU instance is GI 0 on real hardware; smaller ones are numbered after it.
        gi_id = 0 if profile.gi_slices == H100_COMPUTE_SLICES else j + 1
        devices.append(
            MigDevice(
                uuid=_mig_uuid(seed, index, j),
                gpu_index=index,
                index=j,
                gi_id=gi_id,
                ci_id=0,
                profile=name,
                memory_mib=profile.memory_mib,
                multiprocessors=profile.multiprocessors,
                gi_slices=profile.gi_slices,
                ci_slices=profile.ci_slices,
                copy_engines=profile.copy_engines,
                decoders=profile.decoders,
                encoders=profile.encoders,
                jpeg_decoders=profile.jpeg_decoders,
                ofa_engines=profile.ofa_engines,
                device_nodes=(
                    f"/dev/nvidia{gpu.minor}",
                    cap_node(gi_cap_minor(gpu.minor, gi_id)),
                    cap_node(ci_cap_minor(gpu.minor, gi_id, 0)),
                ),
            )
        )
    return tuple(devices)


def _complete(layout: FakeLayout, seed: str) -> FakeLayout:
    """Fill in the per-GPU facts a real node derives from hardware: UUID, bus id, minor."""
    gpus = []
    for i, gpu in enumerate(layout.gpus):
        done = replace(
            gpu,
            uuid=gpu.uuid or _uuid(seed, i),
            pci_bus_id=gpu.pci_bus_id or f"00000000:{0x18 + 0x10 * i:02X}:00.0",
            minor=gpu.minor if gpu.minor >= 0 else i,
            mig_capable=gpu.mig_enabled
            or (
                gpu.mig_capable
                if gpu.mig_capable is not None
                else default_mig_capable(gpu.compute_capability)
            ),
        )
        gpus.append(replace(done, mig_devices=_mig_devices(seed, i, done) if done.mig_enabled else ()))
    return replace(layout, gpus=tuple(gpus))


# --- parsing a described layout


def _expect(cond: bool, where: str, what: str, got: object) -> None:
    if not cond:
        raise LayoutError(f"{where}: expected {what}, got {got!r}")


def _check_keys(where: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise LayoutError(
            f"{where}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(allowed)}"
        )


_GPU_KEYS = (
    "name",
    "memoryMiB",
    "computeCapability",
    "numaNode",
    "uuid",
    "pciBusId",
    "minor",
    "migEnabled",
    "migDevices",
    "migCapable",
    "pciClass",
    "fabric",
    "virtualizationMode",
    "vgpuHostDriver",
)


def _parse_gpu(where: str, data: object, base: FakeGpu) -> FakeGpu:
    _expect(isinstance(data, dict), where, "a mapping of GPU facts", data)
    assert isinstance(data, dict)
    _check_keys(where, data, _GPU_KEYS)
    gpu = base
    if "name" in data:
        _expect(
            isinstance(data["name"], str) and bool(data["name"]),
            f"{where}.name",
            "a product name",
            data["name"],
        )
        gpu = replace(gpu, name=data["name"])
    if "memoryMiB" in data:
        v = data["memoryMiB"]
        _expect(
            isinstance(v, int) and not isinstance(v, bool) and v > 0,
            f"{where}.memoryMiB",
            "a positive integer",
            v,
        )
        gpu = replace(gpu, memory_mib=v)
    if "computeCapability" in data:
        v = str(data["computeCapability"])
        major, dot, minor = v.partition(".")
        _expect(
            dot == "." and major.isdigit() and minor.isdigit(),
            f"{where}.computeCapability",
            'a version such as "9.0"',
            data["computeCapability"],
        )
        gpu = replace(gpu, compute_capability=(int(major), int(minor)))
    if "numaNode" in data:
        v = data["numaNode"]
        _expect(
            v is None or (isinstance(v, int) and not isinstance(v, bool)),
            f"{where}.numaNode",
            "an integer (negative or null: unknown)",
            v,
        )
        gpu = replace(gpu, numa_node=v if v is not None and v >= 0 else None)
    if "uuid" in data:
        v = data["uuid"]
        _expect(
            isinstance(v, str) and v.startswith("GPU-") and len(v) <= 63,
            f"{where}.uuid",
            "a UUID starting with GPU- of at most 63 characters",
            v,
        )
        gpu = replace(gpu, uuid=v)
    if "pciBusId" in data:
        _expect(
            isinstance(data["pciBusId"], str), f"{where}.pciBusId", "a PCI bus id string", data["pciBusId"]
        )
        gpu = replace(gpu, pci_bus_id=data["pciBusId"])
    if "minor" in data:
        v = data["minor"]
        _expect(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0, f"{where}.minor", "an integer >= 0", v
        )
        gpu = replace(gpu, minor=v)
    if "migEnabled" in data:
        v = data["migEnabled"]
        _expect(isinstance(v, bool), f"{where}.migEnabled", "true or false", v)
        gpu = replace(gpu, mig_enabled=v)
    if "migDevices" in data:
        profiles = _parse_mig_profiles(f"{where}.migDevices", data["migDevices"])
        _expect(
            data.get("migEnabled", True) is True or not profiles,
            f"{where}.migEnabled",
            "true (or no migEnabled) when migDevices lists MIG devices",
            data.get("migEnabled"),
        )
        gpu = replace(gpu, mig_enabled=data.get("migEnabled", True), mig_profiles=profiles)
    if "migCapable" in data:
        v = data["migCapable"]
        _expect(isinstance(v, bool), f"{where}.migCapable", "true or false", v)
        _expect(
            v or not gpu.mig_enabled,
            f"{where}.migCapable",
            "true (or no migCapable) for a MIG-enabled GPU",
            v,
        )
        gpu = replace(gpu, mig_capable=v)
    if "pciClass" in data:
        gpu = replace(gpu, pci_class=_parse_pci_class(f"{where}.pciClass", data["pciClass"]))
    if "fabric" in data:
        gpu = replace(gpu, fabric=_parse_fabric(f"{where}.fabric", data["fabric"]))
    if "virtualizationMode" in data:
        v = data["virtualizationMode"]
        _expect(
            v in VIRTUALIZATION_MODES,
            f"{where}.virtualizationMode",
            f"one of {', '.join(VIRTUALIZATION_MODES)}",
            v,
        )
        gpu = replace(gpu, virtualization_mode=VIRTUALIZATION_MODES[v])
    if "vgpuHostDriver" in data:
        driver = _parse_vgpu_host_driver(f"{where}.vgpuHostDriver", data["vgpuHostDriver"])
        _expect(
            data.get("virtualizationMode", "vgpu") == "vgpu",
            f"{where}.virtualizationMode",
            "vgpu (or no virtualizationMode) beside vgpuHostDriver",
            data.get("virtualizationMode"),
        )
        gpu = replace(gpu, vgpu_host_driver=driver, virtualization_mode=VIRTUALIZATION_VGPU)
    return gpu


def _parse_pci_class(where: str, data: object) -> int:
    """An integer (YAML reads 0x030200 as one) or a hex string such as "0x030200"."""
    if isinstance(data, str):
        text = data.strip().lower().removeprefix("0x")
        _expect(
            bool(text) and all(c in string.hexdigits for c in text),
            where,
            'a class code such as "0x030200"',
            data,
        )
        return int(text, 16)
    _expect(
        isinstance(data, int) and not isinstance(data, bool) and 0 <= data <= 0xFFFFFF,
        where,
        'a class code such as "0x030200"',
        data,
    )
    assert isinstance(data, int)
    return data


def _parse_fabric(where: str, data: object) -> FabricInfo:
    _expect(isinstance(data, dict), where, "a mapping with clusterUuid, cliqueId, state and status", data)
    assert isinstance(data, dict)
    _check_keys(where, data, ("clusterUuid", "cliqueId", "state", "status"))
    raw_uuid = data.get("clusterUuid")
    try:
        cluster = str(uuidlib.UUID(str(raw_uuid)))
    except ValueError:
        raise LayoutError(f"{where}.clusterUuid: expected a UUID, got {raw_uuid!r}") from None
    clique = data.get("cliqueId", 0)
    _expect(
        isinstance(clique, int) and not isinstance(clique, bool) and 0 <= clique < 2**32,
        f"{where}.cliqueId",
        "an integer from 0 to 4294967295",
        clique,
    )
    state = data.get("state", "completed")
    _expect(state in FABRIC_STATES, f"{where}.state", f"one of {', '.join(FABRIC_STATES)}", state)
    status = data.get("status", 0)
    _expect(
        isinstance(status, int) and not isinstance(status, bool) and status >= 0,
        f"{where}.status",
        "an NVML return code (0: success)",
        status,
    )
    return FabricInfo(cluster_uuid=cluster, clique_id=clique, state=FABRIC_STATES[state], status=status)


def _parse_vgpu_host_driver(where: str, data: object) -> VgpuHostDriver:
    _expect(isinstance(data, dict), where, "a mapping with version and branch", data)
    assert isinstance(data, dict)
    _check_keys(where, data, ("version", "branch"))
    fields_ = {}
    for key in ("version", "branch"):
        v = data.get(key)
        _expect(
            isinstance(v, str) and 0 < len(v) <= VGPU_DRIVER_FIELD_MAX and v.isascii(),
            f"{where}.{key}",
            f"ASCII text of 1 to {VGPU_DRIVER_FIELD_MAX} characters (e.g. 550.90.05, r550_00)",
            v,
        )
        fields_[key] = str(v)
    return VgpuHostDriver(version=fields_["version"], branch=fields_["branch"])


def _parse_mig_profiles(where: str, data: object) -> tuple[str, ...]:
    _expect(isinstance(data, list), where, "a list of MIG profile names such as 1g.10gb", data)
    assert isinstance(data, list)
    known = ", ".join(H100_PROFILES)
    for i, name in enumerate(data):
        _expect(name in H100_PROFILES, f"{where}[{i}]", f"a MIG profile among {known}", name)
    profiles = tuple(str(n) for n in data)
    slices = sum(H100_PROFILES[p].gi_slices for p in profiles)
    _expect(
        slices <= H100_COMPUTE_SLICES,
        where,
        f"MIG devices using at most {H100_COMPUTE_SLICES} compute slices in all",
        f"{slices} slices ({', '.join(profiles)})",
    )
    for name in dict.fromkeys(profiles):
        limit = H100_PROFILES[name].max_per_gpu
        _expect(
            profiles.count(name) <= limit,
            where,
            f"at most {limit} MIG device(s) of profile {name} on one GPU",
            f"{profiles.count(name)}",
        )
    return profiles


_LAYOUT_KEYS = ("driverVersion", "cudaDriverVersion", "seed", "gpu", "count", "gpus", "faults", "topology")


def parse_layout(data: object, source: str = "layout") -> FakeLayout:
    """A FakeLayout from a decoded YAML/JSON document; LayoutError names what is wrong."""
    _expect(isinstance(data, dict), source, "a mapping at the top level", type(data).__name__)
    assert isinstance(data, dict)
    _check_keys(source, data, _LAYOUT_KEYS)
    template = _parse_gpu(f"{source}: gpu", data.get("gpu", {}), FakeGpu())
    if "gpus" in data:
        items = data["gpus"]
        _expect(isinstance(items, list), f"{source}: gpus", "a list of GPUs", items)
        _expect(
            "count" not in data or data["count"] == len(items),
            f"{source}: count",
            f"{len(items)} (the length of gpus) or no count",
            data.get("count"),
        )
        gpus = tuple(_parse_gpu(f"{source}: gpus[{i}]", g, template) for i, g in enumerate(items))
    else:
        count = data.get("count", 1)
        _expect(
            isinstance(count, int) and not isinstance(count, bool) and 0 <= count <= 64,
            f"{source}: count",
            "a GPU count from 0 to 64",
            count,
        )
        gpus = (template,) * count
    driver = data.get("driverVersion", DEFAULT_DRIVER)
    _expect(
        isinstance(driver, str | int | float),
        f"{source}: driverVersion",
        'a version string such as "580.159.04"',
        driver,
    )
    cuda = data.get("cudaDriverVersion", DEFAULT_CUDA)
    _expect(
        isinstance(cuda, int) and not isinstance(cuda, bool) and cuda >= 0,
        f"{source}: cudaDriverVersion",
        "an integer such as 13000 (CUDA 13.0)",
        cuda,
    )
    seed = str(data.get("seed", "nvplugin"))
    library_fault, device_faults, node_faults = _parse_faults(
        f"{source}: faults", data.get("faults", {}), len(gpus)
    )
    topology = (
        _parse_topology(f"{source}: topology", data["topology"], len(gpus)) if "topology" in data else None
    )
    layout = FakeLayout(
        gpus=gpus,
        driver_version=str(driver),
        cuda_driver_version=cuda,
        library_fault=library_fault,
        device_faults=device_faults,
        topology=topology,
        node_faults=node_faults,
    )
    return _complete(layout, seed)


def _parse_faults(
    where: str, data: object, count: int
) -> tuple[str | None, dict[int, dict[str, str]], dict[str, str]]:
    _expect(isinstance(data, dict), where, "a mapping", data)
    assert isinstance(data, dict)
    _check_keys(where, data, ("library", "devices", "node"))
    library = data.get("library")
    _expect(
        library is None or library in LIBRARY_FAULTS, f"{where}.library", " or ".join(LIBRARY_FAULTS), library
    )
    devices: dict[int, dict[str, str]] = {}
    raw_devices = data.get("devices", {})
    _expect(
        isinstance(raw_devices, dict), f"{where}.devices", "a mapping of GPU index to faults", raw_devices
    )
    for key, calls in raw_devices.items():
        _expect(
            str(key).isdigit() and int(key) < count, f"{where}.devices", f"GPU indexes below {count}", key
        )
        _expect(
            isinstance(calls, dict), f"{where}.devices.{key}", "a mapping of NVML call to error kind", calls
        )
        for call, kind in calls.items():
            _expect(
                call in DEVICE_CALLS,
                f"{where}.devices.{key}",
                f"NVML calls among {', '.join(DEVICE_CALLS)}",
                call,
            )
            _expect(
                kind in ERROR_KINDS, f"{where}.devices.{key}.{call}", f"one of {', '.join(ERROR_KINDS)}", kind
            )
        devices[int(key)] = dict(calls)
    node = data.get("node", {})
    _expect(isinstance(node, dict), f"{where}.node", "a mapping of node-wide call to error kind", node)
    for call, kind in node.items():
        _expect(call in NODE_CALLS, f"{where}.node", f"calls among {', '.join(NODE_CALLS)}", call)
        _expect(kind in ERROR_KINDS, f"{where}.node.{call}", f"one of {', '.join(ERROR_KINDS)}", kind)
    return library, devices, dict(node)


def load_layout(spec: str) -> FakeLayout:
    """`spec` is a GPU count ("8"), the path of a YAML/JSON layout file, or the name of a layout
    shipped in nvplugin/nvml/layouts (e.g. "hgx-h100-nvswitch")."""
    if spec.isdigit():
        return FakeLayout.of(int(spec))
    path = Path(spec)
    if not path.exists() and "/" not in spec:
        from nvplugin.nvml.layouts import LAYOUTS

        shipped = LAYOUTS.get(spec.removesuffix(".yaml"))
        if shipped is None:
            raise LayoutError(
                f"{spec}: no such layout file, and no shipped layout of that name; "
                f"expected a GPU count, a file, or one of {', '.join(LAYOUTS)}"
            )
        path = shipped
    try:
        text = path.read_text()
    except OSError as exc:
        raise LayoutError(f"{spec}: cannot read the fake GPU layout: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml  # only layouts and config files need it

            data = yaml.safe_load(text)
    except (ValueError, ImportError) as exc:
        raise LayoutError(f"{spec}: not valid YAML/JSON: {exc}") from None
    except Exception as exc:  # yaml.YAMLError has no common base with ValueError
        raise LayoutError(f"{spec}: not valid YAML/JSON: {exc}") from None
    return parse_layout(data, spec)


class FakeNvml:
    """Implements the Nvml protocol over a FakeLayout. Thread-safe: faults can be injected
    from the loop while worker threads query it."""

    def __init__(self, layout: FakeLayout) -> None:
        self._layout = layout
        self._lock = threading.Lock()
        self._faults: dict[int, dict[str, str]] = {i: dict(f) for i, f in layout.device_faults.items()}
        self._initialised = False
        self.calls = 0  # every NVML call made, for benchmarks that count them

    @property
    def layout(self) -> FakeLayout:
        return self._layout

    # --- fault injection

    def inject_device_fault(self, index: int, call: str, kind: str) -> None:
        if call not in DEVICE_CALLS or kind not in ERROR_KINDS:
            raise ValueError(f"unknown call {call!r} or error kind {kind!r}")
        with self._lock:
            self._faults.setdefault(index, {})[call] = kind

    def clear_device_faults(self, index: int | None = None) -> None:
        with self._lock:
            if index is None:
                self._faults.clear()
            else:
                self._faults.pop(index, None)

    # --- plumbing

    def _device(self, call: str, index: int) -> FakeGpu:
        with self._lock:
            self.calls += 1
            if not self._initialised:
                raise NvmlError(call, "Uninitialized", 1)
            if not 0 <= index < len(self._layout.gpus):
                raise NvmlError(call, "Invalid Argument", 2)
            kind = self._faults.get(index, {}).get(call)
        if kind is not None:
            raise ERROR_KINDS[kind](call, f"injected fault ({kind}) on GPU {index}")
        return self._layout.gpus[index]

    # --- the Nvml protocol

    def init(self) -> None:
        with self._lock:
            self.calls += 1
        if self._layout.library_fault == "missing":
            raise NvmlLibraryNotFound("nvmlInit", f"libnvidia-ml.so.1 was not found: {LIBRARY_HINT}", 12)
        if self._layout.library_fault == "init-error":
            raise NvmlError("nvmlInit", "Unknown Error (injected)", 999)
        self._initialised = True

    def shutdown(self) -> None:
        self._initialised = False

    def driver_version(self) -> str:
        return self._layout.driver_version

    def cuda_driver_version(self) -> int:
        return self._layout.cuda_driver_version

    def device_count(self) -> int:
        return len(self._layout.gpus)

    def device_uuid(self, index: int) -> str:
        return self._device("device_uuid", index).uuid

    def device_name(self, index: int) -> str:
        return self._device("device_name", index).name

    def device_minor_number(self, index: int) -> int:
        return self._device("device_minor_number", index).minor

    def device_memory_total(self, index: int) -> int:
        return self._device("device_memory_total", index).memory_mib * 1024 * 1024

    def device_compute_capability(self, index: int) -> tuple[int, int]:
        return self._device("device_compute_capability", index).compute_capability

    def device_pci_bus_id(self, index: int) -> str:
        return self._device("device_pci_bus_id", index).pci_bus_id

    def device_numa_node(self, index: int) -> int | None:
        return self._device("device_numa_node", index).numa_node

    def device_mig_enabled(self, index: int) -> bool:
        gpu = self._device("device_mig_enabled", index)
        if not gpu.mig_capable:
            raise NvmlNotSupported(
                "nvmlDeviceGetMigMode", f"GPU {index} ({gpu.name}) does not support MIG", 3
            )
        return gpu.mig_enabled

    def device_mig_devices(self, index: int) -> tuple[MigDevice, ...]:
        return self._device("device_mig_devices", index).mig_devices

    # --- facts for the node labels

    def device_pci_class(self, index: int) -> int:
        return self._device("device_pci_class", index).pci_class

    def device_fabric_info(self, index: int) -> FabricInfo:
        gpu = self._device("device_fabric_info", index)
        if gpu.fabric is None:
            raise NvmlNotSupported("nvmlDeviceGetGpuFabricInfo", f"GPU {index} has no GPU fabric", 3)
        return gpu.fabric

    def device_virtualization_mode(self, index: int) -> int:
        return self._device("device_virtualization_mode", index).virtualization_mode

    def vgpu_devices(self) -> tuple[VgpuDevice, ...]:
        # A sysfs scan on a real node: it needs no nvmlInit.
        with self._lock:
            self.calls += 1
            kind = self._layout.node_faults.get("vgpu_devices")
        if kind is not None:
            raise ERROR_KINDS[kind]("scan PCI devices for vGPUs", f"injected fault ({kind})")
        return tuple(
            VgpuDevice(address=normalize_bus_id(gpu.pci_bus_id), host_driver=gpu.vgpu_host_driver)
            for gpu in self._layout.gpus
            if gpu.virtualization_mode == VIRTUALIZATION_VGPU
        )

    # --- topology

    def device_nvlink_remotes(self, index: int) -> list[NvLinkRemote]:
        self._device("device_nvlink_remotes", index)
        topology = self._layout.topology
        if topology is None:
            return []
        gpus = self._layout.gpus
        remotes: list[NvLinkRemote] = []
        for (a, b), count in sorted(topology.nvlinks.items()):
            if index in (a, b):
                peer = gpus[b if a == index else a]
                remotes += [NvLinkRemote(peer.pci_bus_id, NVLINK_REMOTE_GPU)] * count
        if index in topology.nvswitch_gpus:
            remotes += [
                NvLinkRemote(_switch_bus_id(link % topology.nvswitch_count), NVLINK_REMOTE_SWITCH)
                for link in range(topology.nvswitch_links)
            ]
        return remotes

    def device_topology_common_ancestor(self, index_a: int, index_b: int) -> int:
        call = "device_topology_common_ancestor"
        self._device(call, index_a)
        with self._lock:
            # One NVML call, already counted; a fault on either GPU fails it.
            kind = self._faults.get(index_b, {}).get(call)
        if not 0 <= index_b < len(self._layout.gpus):
            raise NvmlError(call, "Invalid Argument", 2)
        if kind is not None:
            raise ERROR_KINDS[kind](call, f"injected fault ({kind}) on GPU {index_b}")
        if index_a == index_b:
            return int(PcieLevel.INTERNAL)
        topology = self._layout.topology
        groups = topology.pcie_groups if topology is not None else ()
        levels = [level for level, members in groups if index_a in members and index_b in members]
        if levels:
            return min(levels)
        numa_a, numa_b = self._layout.gpus[index_a].numa_node, self._layout.gpus[index_b].numa_node
        same_node = numa_a is not None and numa_a == numa_b
        return int(PcieLevel.NODE if same_node else PcieLevel.SYSTEM)

    # --- health events (appended for the XID watcher). Injection methods are thread-safe and
    # wake a blocked event_set_wait at once.

    def _events(self) -> _FakeEvents:
        # Created on first use so __init__ stays as it was (other helpers extend it too).
        hub: _FakeEvents | None = self.__dict__.get("_event_hub")
        if hub is None:
            with self._lock:
                hub = self.__dict__.setdefault("_event_hub", _FakeEvents())
        assert hub is not None
        return hub

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self._layout.gpus):
            raise ValueError(
                f"no fake GPU {index}: this agent has {len(self._layout.gpus)} GPU(s), "
                f"indexes 0 to {len(self._layout.gpus) - 1}"
            )

    def inject_event(
        self, gpu_index: int, event_type: int, data: int, gi: int | None = None, ci: int | None = None
    ) -> int:
        """Deliver one NVML event to every event set registered for it; returns how many."""
        self._check_index(gpu_index)
        event = NvmlEvent(gpu_index, self._layout.gpus[gpu_index].uuid, event_type, data, gi, ci)
        hub = self._events()
        with hub.cond:
            hub.injected += 1
            reached = 0
            for event_set in hub.sets:
                if event_set.registered.get(gpu_index, 0) & event_type:
                    event_set.queue.append(event)
                    reached += 1
            hub.cond.notify_all()
        return reached

    def inject_xid(self, gpu_index: int, xid: int, gi: int | None = None, ci: int | None = None) -> int:
        """An XidCriticalError, as the driver reports it. Like the driver, an XID that needs a
        reset or a reboot also sets the GPU's recovery action (cleared by reset_gpu)."""
        from nvplugin.core.xid import RECOVERY_GPU_RESET, RECOVERY_NODE_REBOOT, Action, action_for

        self._check_index(gpu_index)
        action = action_for(xid)
        hub = self._events()
        with hub.cond:
            if action is Action.RESET_GPU:
                hub.recovery[gpu_index] = max(hub.recovery.get(gpu_index, 0), RECOVERY_GPU_RESET)
            elif action is Action.REBOOT:
                hub.recovery[gpu_index] = RECOVERY_NODE_REBOOT
        return self.inject_event(gpu_index, EVENT_XID_CRITICAL, xid, gi, ci)

    def inject_wait_error(self, kind: str = "unknown") -> int:
        """The next wait on every event set raises this error kind (see ERROR_KINDS)."""
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}; expected one of {', '.join(ERROR_KINDS)}")
        hub = self._events()
        with hub.cond:
            for event_set in hub.sets:
                event_set.queue.append(ERROR_KINDS[kind]("nvmlEventSetWait", f"injected fault ({kind})"))
            hub.cond.notify_all()
            return len(hub.sets)

    def lose_gpu(self, gpu_index: int) -> None:
        """The GPU falls off the bus: every call about it fails with GPU-lost, and event waits
        fail once (as NVML's do), so the watcher must find out which GPU it was."""
        self._check_index(gpu_index)
        for call in DEVICE_CALLS:
            self.inject_device_fault(gpu_index, call, "gpu-lost")
        hub = self._events()
        with hub.cond:
            hub.lost.add(gpu_index)
        self.inject_wait_error("gpu-lost")

    def reset_gpu(self, gpu_index: int) -> None:
        """An operator's GPU reset: the driver no longer asks for a recovery action."""
        self._check_index(gpu_index)
        hub = self._events()
        with hub.cond:
            hub.recovery[gpu_index] = 0
            hub.resets += 1

    def set_supported_events(self, gpu_index: int, mask: int) -> None:
        self._check_index(gpu_index)
        hub = self._events()
        with hub.cond:
            hub.supported[gpu_index] = mask

    def clear_health_faults(self) -> None:
        """Undo lost GPUs, recovery actions and queued events (device call faults too)."""
        hub = self._events()
        with hub.cond:
            for event_set in hub.sets:
                event_set.queue.clear()
            hub.lost.clear()
            hub.recovery.clear()
        self.clear_device_faults()

    def event_stats(self) -> dict[str, int]:
        hub = self._events()
        with hub.cond:
            return {
                "event_sets": sum(1 for s in hub.sets if not s.freed),
                "injected": hub.injected,
                "waits": hub.waits,
                "timeouts": hub.timeouts,
                "lost": len(hub.lost),
                "resets": hub.resets,
            }

    def event_set_create(self) -> object:
        if not self._initialised:
            raise NvmlError("nvmlEventSetCreate", "Uninitialized", 1)
        hub = self._events()
        with hub.cond:
            event_set = _FakeEventSet()
            hub.sets.append(event_set)
            return event_set

    def device_supported_events(self, index: int) -> int:
        self._device("device_uuid", index)
        hub = self._events()
        with hub.cond:
            return hub.supported.get(index, FAKE_SUPPORTED_EVENTS)

    def device_register_events(self, index: int, mask: int, event_set: object) -> None:
        self._device("device_uuid", index)
        hub = self._events()
        es = _as_event_set(event_set, "nvmlDeviceRegisterEvents")
        with hub.cond:
            supported = hub.supported.get(index, FAKE_SUPPORTED_EVENTS)
            if mask == 0 or mask & ~supported:
                raise NvmlNotSupported("nvmlDeviceRegisterEvents", f"GPU {index} cannot report {mask:#x}", 3)
            es.registered[index] = es.registered.get(index, 0) | mask

    def event_set_wait(self, event_set: object, timeout_ms: int) -> NvmlEvent:
        hub = self._events()
        es = _as_event_set(event_set, "nvmlEventSetWait")
        with hub.cond:
            hub.waits += 1
            hub.cond.wait_for(lambda: bool(es.queue) or es.freed, timeout_ms / 1000)
            if es.freed:
                raise NvmlError("nvmlEventSetWait", "event set was freed", 2)
            if not es.queue:
                hub.timeouts += 1
                raise NvmlTimeout("nvmlEventSetWait", "Timeout", 10)
            item = es.queue.popleft()
        if isinstance(item, NvmlError):
            raise item
        return item

    def event_set_free(self, event_set: object) -> None:
        hub = self._events()
        es = _as_event_set(event_set, "nvmlEventSetFree")
        with hub.cond:
            es.freed = True
            if es in hub.sets:
                hub.sets.remove(es)
            hub.cond.notify_all()

    def device_probe(self, index: int) -> DeviceProbe:
        uuid = self._device("device_uuid", index).uuid
        hub = self._events()
        with hub.cond:
            if index in hub.lost:
                raise NvmlGpuLost("nvmlDeviceGetTemperature", f"GPU {index} has fallen off the bus")
            recovery = hub.recovery.get(index, 0)
        return DeviceProbe(uuid=uuid, temperature_c=40, recovery_action=recovery)


# --- described topology


@dataclass(frozen=True, slots=True)
class FakeTopology:
    # Direct NVLinks: (i, j) with i < j -> link count.
    nvlinks: Mapping[tuple[int, int], int] = field(default_factory=dict)
    # GPUs on the one NVSwitch fabric, each with `nvswitch_links` links spread over the switches.
    nvswitch_gpus: tuple[int, ...] = ()
    nvswitch_links: int = 18
    nvswitch_count: int = 4
    # (nvmlGpuTopologyLevel_t value, GPU indexes): the closest group holding both GPUs wins.
    pcie_groups: tuple[tuple[int, tuple[int, ...]], ...] = ()


def _switch_bus_id(switch: int) -> str:
    # PCI domain 1 so that a switch never shares a bus id with a described GPU.
    return f"00000001:{0x10 + switch:02X}:00.0"


PCIE_LEVEL_NAMES: Mapping[str, PcieLevel] = {
    "internal": PcieLevel.INTERNAL,
    "single": PcieLevel.SINGLE,
    "multiple": PcieLevel.MULTIPLE,
    "hostbridge": PcieLevel.HOSTBRIDGE,
    "node": PcieLevel.NODE,
    "system": PcieLevel.SYSTEM,
}


def _gpu_index(where: str, value: object, count: int) -> int:
    _expect(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value < count,
        where,
        f"a GPU index from 0 to {count - 1}",
        value,
    )
    assert isinstance(value, int)
    return value


def _parse_topology(where: str, data: object, count: int) -> FakeTopology:
    _expect(isinstance(data, dict), where, "a mapping with nvlink, nvswitch and pcie", data)
    assert isinstance(data, dict)
    _check_keys(where, data, ("nvlink", "nvswitch", "pcie"))
    nvlinks: dict[tuple[int, int], int] = {}
    raw_links = data.get("nvlink", {})
    _expect(isinstance(raw_links, dict), f"{where}.nvlink", 'a mapping of "i-j" to a link count', raw_links)
    for key, links in raw_links.items():
        a, dash, b = str(key).partition("-")
        _expect(
            dash == "-" and a.strip().isdigit() and b.strip().isdigit(),
            f"{where}.nvlink",
            'GPU pairs written "i-j"',
            key,
        )
        i = _gpu_index(f"{where}.nvlink.{key}", int(a), count)
        j = _gpu_index(f"{where}.nvlink.{key}", int(b), count)
        _expect(i != j, f"{where}.nvlink.{key}", "two different GPUs", key)
        _expect(
            isinstance(links, int) and not isinstance(links, bool) and links >= 0,
            f"{where}.nvlink.{key}",
            "a link count >= 0",
            links,
        )
        pair = (min(i, j), max(i, j))
        _expect(pair not in nvlinks, f"{where}.nvlink.{key}", "each pair once", key)
        nvlinks[pair] = links
    switch_gpus: tuple[int, ...] = ()
    switch_links, switch_count = 18, 4
    raw_switch = data.get("nvswitch", False)
    if raw_switch is True:
        switch_gpus = tuple(range(count))
    elif isinstance(raw_switch, dict):
        _check_keys(f"{where}.nvswitch", raw_switch, ("gpus", "links", "switches"))
        members = raw_switch.get("gpus", "all")
        if members == "all":
            switch_gpus = tuple(range(count))
        else:
            _expect(
                isinstance(members, list), f"{where}.nvswitch.gpus", "all or a list of GPU indexes", members
            )
            switch_gpus = tuple(_gpu_index(f"{where}.nvswitch.gpus", m, count) for m in members)
        for key in ("links", "switches"):
            value = raw_switch.get(key, 18 if key == "links" else 4)
            _expect(
                isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64,
                f"{where}.nvswitch.{key}",
                "an integer from 1 to 64",
                value,
            )
        switch_links, switch_count = raw_switch.get("links", 18), raw_switch.get("switches", 4)
    else:
        _expect(raw_switch is False, f"{where}.nvswitch", "true, false or a mapping", raw_switch)
    groups: list[tuple[int, tuple[int, ...]]] = []
    raw_pcie = data.get("pcie", {})
    _expect(isinstance(raw_pcie, dict), f"{where}.pcie", "a mapping of PCIe level to GPU groups", raw_pcie)
    _check_keys(f"{where}.pcie", raw_pcie, tuple(PCIE_LEVEL_NAMES))
    for name, raw_groups in raw_pcie.items():
        _expect(
            isinstance(raw_groups, list) and all(isinstance(g, list) for g in raw_groups),
            f"{where}.pcie.{name}",
            "a list of GPU index lists",
            raw_groups,
        )
        for group in raw_groups:
            members = tuple(_gpu_index(f"{where}.pcie.{name}", m, count) for m in group)
            groups.append((int(PCIE_LEVEL_NAMES[name]), members))
    return FakeTopology(
        nvlinks=nvlinks,
        nvswitch_gpus=switch_gpus,
        nvswitch_links=switch_links,
        nvswitch_count=switch_count,
        pcie_groups=tuple(groups),
    )


# What the real H100 on the GPU test machine reports (nvmlDeviceGetSupportedEventTypes).
FAKE_SUPPORTED_EVENTS = 65439


class _FakeEventSet:
    def __init__(self) -> None:
        self.registered: dict[int, int] = {}
        self.queue: deque[NvmlEvent | NvmlError] = deque()
        self.freed = False


class _FakeEvents:
    """Event sets and health state of one FakeNvml, guarded by one Condition."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.sets: list[_FakeEventSet] = []
        self.supported: dict[int, int] = {}
        self.lost: set[int] = set()
        self.recovery: dict[int, int] = {}
        self.injected = 0
        self.waits = 0
        self.timeouts = 0
        self.resets = 0


def _as_event_set(event_set: object, call: str) -> _FakeEventSet:
    if not isinstance(event_set, _FakeEventSet):
        raise NvmlError(call, "Invalid Argument: not an event set of this backend", 2)
    return event_set
