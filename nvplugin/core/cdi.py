"""The CDI spec that makes Allocate's CDI device names resolve, built as pure data.

With DEVICE_LIST_STRATEGY cdi-annotations or cdi-cri, Allocate names each device
`k8s.device-plugin.nvidia.com/gpu=<id>`; the container runtime looks that name up in the CDI
spec files of its spec directory. This module builds that spec the way NVIDIA's device plugin
v0.20.0 does through nvidia-container-toolkit v1.20.0 (pkg/nvcdi, mode nvml): one spec of kind
`k8s.device-plugin.nvidia.com/gpu` for every resource (full GPUs, MIG devices and time-sliced
replicas, which Allocate names by their GPU or MIG device), common edits with the control
device nodes, the driver's libraries, binaries, firmware and IPC sockets and the
nvidia-cdi-hook hooks, and per-device edits with the device's own nodes.

Differences from NVIDIA's kept on purpose (each says why where it is made):
- every device is named both by UUID and by index (as `nvidia-ctk cdi generate` does), so the
  spec does not depend on DEVICE_ID_STRATEGY;
- a device's own nodes (/dev/nvidiaN, MIG capability nodes) are written even when missing on
  the host (a warning says so), so a pod fails naming the missing node rather than the spec
  being refused as a whole;
- device nodes carry no major/minor/fileMode: the runtime reads them from the host node when
  the container is created, so a driver reload that renumbers a node cannot leave them stale;
- the MPS pipe directory (/tmp/nvidia-mps) is mounted when present, as libnvidia-container does
  (nvcdi's file locator skips directories, so NVIDIA's spec never has it);
- graphics files (EGL/Vulkan/X.org configs and modules) are not looked up.

The shell (nvplugin/cdi/) finds the host facts and writes the file.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from nvplugin.core.allocation import CDI_DEVICE_KIND, CONTROL_NODES, host_path
from nvplugin.core.inventory import Inventory
from nvplugin.core.resources import AdvertisedDevice, Resource

_T = TypeVar("_T")

CDI_VENDOR, _, CDI_CLASS = CDI_DEVICE_KIND.partition("/")
# CDI's GenerateNameForSpec: "<vendor>-<class>", saved as JSON by NVIDIA's plugin.
GPU_SPEC_FILE = f"{CDI_VENDOR}-{CDI_CLASS}.json"
# Every spec file NVIDIA's plugin may write (gpu, IMEX channels, GDRCopy/GDS/MOFED modes): files
# of our vendor, so ours to replace or remove.
OWNED_SPEC_FILES = tuple(f"{CDI_VENDOR}-{c}.json" for c in ("gpu", "imex-channel", "gdrcopy", "gds", "mofed"))

DEFAULT_CDI_SPEC_DIR = "/var/run/cdi"
DEFAULT_NVIDIA_CDI_HOOK_PATH = "/usr/bin/nvidia-ctk"

# nvcdi's feature flags (pkg/nvcdi/api.go), with the one alias it accepts.
FEATURE_EXPLICIT_DRIVER_LIBRARIES = "enable-explicit-driver-libraries"
FEATURE_NO_ADDITIONAL_GIDS = "no-additional-gids-for-device-nodes"
FEATURE_DISABLE_IPC = "disable-ipc-discoverer"
# Accepted for compatibility; nvplugin has nothing they would change (it never uses
# libnvidia-sandboxutils, has no Tegra CSV mode, and does not read coherence from NVML).
IGNORED_FEATURE_FLAGS = (
    "disable-nvsandboxutils",
    "disable-nvsandbox-utils",
    "disable-multiple-csv-devices",
    "enable-coherent-annotations",
)
FEATURE_FLAGS = (
    FEATURE_EXPLICIT_DRIVER_LIBRARIES,
    FEATURE_NO_ADDITIONAL_GIDS,
    FEATURE_DISABLE_IPC,
    *IGNORED_FEATURE_FLAGS,
)

# nvidia-cdi-hook's hooks (internal/discover/hooks.go). chmod is disabled by default there and
# NVIDIA's plugin has no way to enable it, so it never appears.
HOOK_CREATE_SYMLINKS = "create-symlinks"
HOOK_ENABLE_CUDA_COMPAT = "enable-cuda-compat"
HOOK_UPDATE_LDCACHE = "update-ldcache"
HOOK_DISABLE_DEVICE_NODE_MODIFICATION = "disable-device-node-modification"
HOOK_UPDATE_APPLICATION_PROFILE = "update-application-profile"
ALL_HOOKS = "all"
HOOKS = (
    HOOK_CREATE_SYMLINKS,
    HOOK_ENABLE_CUDA_COMPAT,
    HOOK_UPDATE_LDCACHE,
    HOOK_DISABLE_DEVICE_NODE_MODIFICATION,
    HOOK_UPDATE_APPLICATION_PROFILE,
    "chmod",
    ALL_HOOKS,
)

# The driver's binaries nvcdi mounts (pkg/nvcdi/driver-nvml.go), looked up in these dirs.
DRIVER_BINARIES = (
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
    "nvidia-imex",
    "nvidia-imex-ctl",
)
BINARY_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
# Libraries mounted only with enable-explicit-driver-libraries (their names carry no version).
EXPLICIT_DRIVER_LIBRARIES = (
    "libEGL.so",
    "libGL.so",
    "libGLESv1_CM.so",
    "libGLESv2.so",
    "libGLX.so",
    "libGLdispatch.so",
    "libOpenCL.so",
    "libOpenGL.so",
    "libnvidia-api.so",
    "libnvidia-egl-xcb.so",
    "libnvidia-egl-xlib.so",
)
LEGACY_NVVM_LIBRARY = "libnvidia-nvvm70.so.*"
# IPC: each socket is looked up under /run, then /var/run (the first found is mounted).
IPC_SOCKETS = ("/nvidia-persistenced/socket", "/nvidia-fabricmanager/socket")
IPC_SOCKET_DIRS = ("/run", "/var/run")
MPS_PIPE_DIR = "/tmp/nvidia-mps"

READ_ONLY_MOUNT = ("ro", "nosuid", "nodev", "rbind", "rprivate")
IPC_MOUNT = ("nosuid", "nodev", "rbind", "rprivate", "noexec")
DEVICE_PERMISSIONS = "rwm"
HOOK_STAGE = "createContainer"
HOOK_ENV = ("NVIDIA_CTK_DEBUG=false",)
# Hooks whose arguments are paths, each given after this flag.
_PATH_FLAGS = {HOOK_CREATE_SYMLINKS: "--link", HOOK_UPDATE_LDCACHE: "--folder"}


class CdiOptionsError(ValueError):
    """A CDI option has a value nvcdi does not know; the message names it."""


@dataclass(frozen=True, slots=True)
class CdiOptions:
    """How to build and where to write the CDI spec (mapped from the agent's Config).

    `driver_root` and `dev_root` are the host's paths, written into the spec (NVIDIA's
    --nvidia-driver-root and --dev-root); `container_driver_root` is where this process sees the
    host's driver root (NVIDIA's --container-driver-root, e.g. /driver-root), None when it runs
    on the host itself.
    """

    driver_root: str = "/"
    dev_root: str | None = None
    container_driver_root: str | None = None
    nvidia_cdi_hook_path: str = DEFAULT_NVIDIA_CDI_HOOK_PATH
    spec_dir: str = DEFAULT_CDI_SPEC_DIR
    feature_flags: tuple[str, ...] = ()
    disabled_hooks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_names("CDI feature flag", self.feature_flags, FEATURE_FLAGS)
        _check_names("CDI hook", self.disabled_hooks, HOOKS)

    @property
    def host_dev_root(self) -> str:
        return self.dev_root or self.driver_root

    @property
    def lookup_root(self) -> str:
        """Where this process finds the driver's files."""
        return self.container_driver_root or self.driver_root

    def feature(self, flag: str) -> bool:
        return flag in self.feature_flags


def _check_names(what: str, values: Iterable[str], known: Sequence[str]) -> None:
    unknown = [v for v in values if v not in known]
    if unknown:
        raise CdiOptionsError(
            f"unknown {what} {', '.join(map(repr, unknown))}; expected any of {', '.join(known)}"
        )


# --- host facts: what the shell found under the driver root and the dev root


@dataclass(frozen=True, slots=True)
class NodeFact:
    """A character device node present on the host, as its path in the container."""

    path: str
    mode: int
    gid: int


@dataclass(frozen=True, slots=True)
class LibraryFact:
    """A driver library: its real path under the driver root, its ELF SONAME (None when it
    could not be read) and which of `soname_link_names` exist as symlinks beside it."""

    path: str
    soname: str | None = None
    symlinks: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class DrmFact:
    """A GPU's DRM nodes (from sysfs) and its /dev/dri/by-path links (link path, target)."""

    gpu_uuid: str
    nodes: tuple[str, ...] = ()
    by_path: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class HostFacts:
    """Paths are as seen in the container: relative to the driver root (files) or the dev
    root (device nodes)."""

    driver_version: str
    libraries: tuple[LibraryFact, ...]
    # The directories holding lib*.so.<driver version> (NVIDIA_CTK_LIBCUDA_DIR).
    library_dirs: tuple[str, ...]
    binaries: tuple[str, ...] = ()
    firmware: tuple[str, ...] = ()
    ipc_sockets: tuple[str, ...] = ()
    ipc_dirs: tuple[str, ...] = ()
    # Every NVIDIA character device present: control nodes, GPU and MIG nodes, DRM nodes.
    device_nodes: tuple[NodeFact, ...] = ()
    drm: tuple[DrmFact, ...] = ()


def soname_link_names(file_name: str, soname: str | None) -> tuple[str, ...]:
    """The names beside a library that the create-symlinks hook recreates when the host has
    them as symlinks: its SONAME, and the SONAME's `.so` development name."""
    names = []
    if soname and soname != file_name:
        names.append(soname)
    target = soname or file_name
    dev = _dev_link_name(target)
    if dev and dev != target:
        names.append(dev)
    return tuple(names)


def _dev_link_name(name: str) -> str:
    """nvcdi's getSoLink: "libcuda.so.1" -> "libcuda.so"; "" when there is no ".so"."""
    while True:
        stem, dot, ext = name.rpartition(".")
        if not dot or "/" in ext:
            return ""
        if ext == "so":
            return name
        name = stem


# --- the spec document


@dataclass(frozen=True, slots=True)
class DeviceNode:
    path: str
    host_path: str
    gid: int | None = None

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "path": self.path,
            "hostPath": self.host_path,
            "permissions": DEVICE_PERMISSIONS,
        }
        if self.gid:
            doc["gid"] = self.gid
        return doc


@dataclass(frozen=True, slots=True)
class Mount:
    host_path: str
    container_path: str
    options: tuple[str, ...] = READ_ONLY_MOUNT

    def to_json(self) -> dict[str, object]:
        return {
            "hostPath": self.host_path,
            "containerPath": self.container_path,
            "options": list(self.options),
        }


@dataclass(frozen=True, slots=True)
class Hook:
    path: str
    args: tuple[str, ...]
    hook_name: str = HOOK_STAGE
    env: tuple[str, ...] = HOOK_ENV

    def to_json(self) -> dict[str, object]:
        return {"hookName": self.hook_name, "path": self.path, "args": list(self.args), "env": list(self.env)}


@dataclass(frozen=True, slots=True)
class ContainerEdits:
    env: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    hooks: tuple[Hook, ...] = ()
    mounts: tuple[Mount, ...] = ()
    additional_gids: tuple[int, ...] = ()

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {}
        if self.env:
            doc["env"] = list(self.env)
        if self.device_nodes:
            doc["deviceNodes"] = [n.to_json() for n in self.device_nodes]
        if self.hooks:
            doc["hooks"] = [h.to_json() for h in self.hooks]
        if self.mounts:
            doc["mounts"] = [m.to_json() for m in self.mounts]
        if self.additional_gids:
            doc["additionalGids"] = list(self.additional_gids)
        return doc


@dataclass(frozen=True, slots=True)
class CdiDevice:
    name: str
    edits: ContainerEdits

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "containerEdits": self.edits.to_json()}


@dataclass(frozen=True, slots=True)
class CdiSpec:
    version: str
    kind: str
    devices: tuple[CdiDevice, ...]
    edits: ContainerEdits
    file_name: str = GPU_SPEC_FILE
    _by_name: Mapping[str, CdiDevice] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {d.name: d for d in self.devices})

    def device(self, name: str) -> CdiDevice | None:
        return self._by_name.get(name)

    def resolve(self, qualified_name: str) -> CdiDevice | None:
        """The device a fully qualified CDI name ("<vendor>/<class>=<name>") stands for here."""
        kind, _, name = qualified_name.partition("=")
        return self.device(name) if kind == self.kind else None

    def to_json(self) -> dict[str, object]:
        return {
            "cdiVersion": self.version,
            "kind": self.kind,
            "devices": [d.to_json() for d in self.devices],
            "containerEdits": self.edits.to_json(),
        }


@dataclass(frozen=True, slots=True)
class SpecPlan:
    """The spec to write (None: no device to describe, so no spec file), and what the user
    should know about it."""

    spec: CdiSpec | None
    warnings: tuple[str, ...] = ()


# --- building


def build_spec(
    inventory: Inventory, resources: Sequence[Resource], options: CdiOptions, facts: HostFacts
) -> SpecPlan:
    """The CDI spec naming every advertised device by UUID and by index."""
    warnings = [
        f"CDI feature flag {flag!r} has no effect in nvplugin"
        for flag in options.feature_flags
        if flag in IGNORED_FEATURE_FLAGS
    ]
    devices = _unique_devices(resources)
    if not devices:
        return SpecPlan(None, tuple(warnings))
    builder = _Builder(inventory, options, facts)
    common = builder.common_edits()
    entries: list[CdiDevice] = []
    for device in devices:
        edits = builder.device_edits(device)
        entries.extend(CdiDevice(name, edits) for name in dict.fromkeys((device.uuid, device.index)))
    entries.sort(key=lambda d: d.name)
    if builder.missing:
        warnings.append(
            f"device nodes {', '.join(builder.missing)} are not present under the dev root "
            f"{options.host_dev_root}: the CDI spec names them anyway, and containers given "
            "their devices will fail to start"
        )
    spec = CdiSpec(
        version=_minimum_version(entries, common), kind=CDI_DEVICE_KIND, devices=tuple(entries), edits=common
    )
    return SpecPlan(spec, tuple(warnings))


def _unique_devices(resources: Sequence[Resource]) -> list[AdvertisedDevice]:
    """Each GPU or MIG device once: replicas share their device's CDI name."""
    seen: dict[str, AdvertisedDevice] = {}
    for resource in resources:
        for device in resource.devices:
            seen.setdefault(device.uuid, device)
    return list(seen.values())


class _Builder:
    def __init__(self, inventory: Inventory, options: CdiOptions, facts: HostFacts) -> None:
        self.options = options
        self.facts = facts
        # A device's own nodes that are not on the host, in the order met.
        self.missing: dict[str, None] = {}
        self.nodes = {n.path: n for n in facts.device_nodes}
        self.drm = {d.gpu_uuid: d for d in facts.drm}
        self.graphics_mig = {
            mig.uuid for gpu in inventory.gpus for mig in gpu.mig_devices if "+gfx" in mig.profile
        }
        disabled = set(options.disabled_hooks)
        self.hooks_enabled = ALL_HOOKS not in disabled
        self.disabled_hooks = disabled

    # --- pieces

    def hook(self, name: str, args: Sequence[str] = ()) -> tuple[Hook, ...]:
        """nvcdi's hook creator: nothing when disabled or when a hook that takes paths has
        none; each link of create-symlinks after --link, each folder of update-ldcache after
        --folder."""
        if not self.hooks_enabled or name in self.disabled_hooks:
            return ()
        flag = _PATH_FLAGS.get(name)
        if flag is not None:
            if not args:
                return ()
            args = [a for arg in args for a in (flag, arg)]
        path = self.options.nvidia_cdi_hook_path
        base = posixpath.basename(path)
        fixed = (base, "hook") if base == "nvidia-ctk" else (base,)
        return (Hook(path=path, args=(*fixed, name, *args)),)

    def node(self, path: str) -> DeviceNode:
        fact = self.nodes.get(path)
        return DeviceNode(
            path=path, host_path=self.host_dev_path(path), gid=fact.gid if fact and fact.gid else None
        )

    def host_dev_path(self, path: str) -> str:
        # nvcdi's dev-root transform maps <root>/dev to <target root>/dev whether or not the
        # roots were given with the trailing /dev.
        dev_root = self.options.host_dev_root.rstrip("/").removesuffix("/dev") or "/"
        return host_path(dev_root, path)

    def mount(self, path: str, options: tuple[str, ...] = READ_ONLY_MOUNT) -> Mount:
        return Mount(
            host_path=host_path(self.options.driver_root, path), container_path=path, options=options
        )

    def additional_gids(self, nodes: Iterable[DeviceNode]) -> tuple[int, ...]:
        """The nodes' group, for nodes only that group may use (nvcdi adds it to the
        container's groups so non-root users can open them)."""
        if self.options.feature(FEATURE_NO_ADDITIONAL_GIDS):
            return ()
        gids = set()
        for node in nodes:
            fact = self.nodes.get(node.path)
            if fact and fact.gid and fact.mode & 0o006 != 0o006:
                gids.add(fact.gid)
        return tuple(sorted(gids))

    # --- edits

    def common_edits(self) -> ContainerEdits:
        facts = self.facts
        control = tuple(self.node(p) for p in CONTROL_NODES if p in self.nodes)
        libraries = [lib.path for lib in facts.libraries]
        mounts = [self.mount(p) for p in (*libraries, *facts.firmware, *facts.binaries)]
        if not self.options.feature(FEATURE_DISABLE_IPC):
            mounts += [self.mount(p, IPC_MOUNT) for p in (*facts.ipc_sockets, *facts.ipc_dirs)]
        hooks = (
            *self.hook(HOOK_CREATE_SYMLINKS, _library_links(facts.libraries)),
            *self.hook(HOOK_ENABLE_CUDA_COMPAT, (f"--host-driver-version={facts.driver_version}",)),
            *self.hook(HOOK_UPDATE_LDCACHE, _library_folders(libraries)),
            *self.hook(HOOK_DISABLE_DEVICE_NODE_MODIFICATION),
            *self.hook(HOOK_UPDATE_APPLICATION_PROFILE),
        )
        return ContainerEdits(
            env=(f"NVIDIA_CTK_LIBCUDA_DIR={':'.join(facts.library_dirs)}", "NVIDIA_VISIBLE_DEVICES=void"),
            device_nodes=_sorted_nodes(control),
            hooks=_unique(hooks),
            mounts=_sorted_mounts(mounts),
            additional_gids=self.additional_gids(control),
        )

    def device_edits(self, device: AdvertisedDevice) -> ContainerEdits:
        """The device's own nodes (a MIG device: its parent's node and its GI and CI
        capability nodes), and for a full GPU (or a graphics MIG profile) its DRM nodes and
        their /dev/dri/by-path links."""
        self.missing.update((p, None) for p in device.device_nodes if p not in self.nodes)
        paths = list(device.device_nodes)
        hooks: tuple[Hook, ...] = ()
        is_mig = device.uuid != device.gpu_uuid
        drm = self.drm.get(device.gpu_uuid)
        if drm and (not is_mig or device.uuid in self.graphics_mig):
            present = [p for p in drm.nodes if p in self.nodes]
            paths += present
            links = [
                f"{target}::{link}"
                for link, target in drm.by_path
                if posixpath.normpath(posixpath.join(posixpath.dirname(link), target)) in present
            ]
            hooks = self.hook(HOOK_CREATE_SYMLINKS, links)
        nodes = _sorted_nodes(self.node(p) for p in dict.fromkeys(paths))
        return ContainerEdits(device_nodes=nodes, hooks=hooks, additional_gids=self.additional_gids(nodes))


def _library_links(libraries: Sequence[LibraryFact]) -> list[str]:
    """create-symlinks links for the driver libraries (nvcdi's WithDriverDotSoSymlinks): the
    libcuda.so, libGLX_indirect.so.0 and libnvidia-opticalflow.so links, then each versioned
    library's SONAME link and `.so` link where the host has them."""
    links: dict[str, None] = {}
    for lib in libraries:
        directory, name = posixpath.split(lib.path)
        for pattern, target, link in _SPECIAL_LINKS:
            if fnmatch.fnmatchcase(name, pattern):
                links[f"{target or name}::{posixpath.join(directory, link)}"] = None
        if not fnmatch.fnmatchcase(name, "*.*.*") or lib.soname is None:
            continue
        if lib.soname != name and lib.soname in lib.symlinks:
            links[f"{name}::{posixpath.join(directory, lib.soname)}"] = None
        target = lib.soname or name
        dev = _dev_link_name(target)
        if dev and dev != target and dev in lib.symlinks:
            links[f"{target}::{posixpath.join(directory, dev)}"] = None
    return list(links)


# (library name pattern, link target ("" for the library itself), link name beside it)
_SPECIAL_LINKS = (
    ("libcuda.so.*.*", "libcuda.so.1", "libcuda.so"),
    ("libGLX_nvidia.so.*.*", "", "libGLX_indirect.so.0"),
    ("libnvidia-opticalflow.so.*.*", "libnvidia-opticalflow.so.1", "libnvidia-opticalflow.so"),
)


def _library_folders(libraries: Sequence[str]) -> list[str]:
    """update-ldcache's folders: each directory holding a library, once."""
    return list(
        dict.fromkeys(posixpath.dirname(p) for p in libraries if _is_library_name(posixpath.basename(p)))
    )


def _is_library_name(name: str) -> bool:
    """nvcdi's isLibName: lib?*.so, or lib?*.so.<something>."""
    if not fnmatch.fnmatchcase(name, "lib?*.so*"):
        return False
    tail = name.split(".so")[-1]
    return tail == "" or tail.startswith(".")


def _depth(path: str) -> int:
    return posixpath.normpath(path).count("/")


def _sorted_nodes(nodes: Iterable[DeviceNode]) -> tuple[DeviceNode, ...]:
    # nvcdi's sorter: shallower paths first, then by path.
    return tuple(sorted(_unique(nodes), key=lambda n: (_depth(n.path), n.path)))


def _sorted_mounts(mounts: Iterable[Mount]) -> tuple[Mount, ...]:
    return tuple(sorted(_unique(mounts), key=lambda m: (_depth(m.container_path), m.container_path)))


def _unique(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(items))


def _minimum_version(devices: Sequence[CdiDevice], common: ContainerEdits) -> str:
    """The lowest CDI version that has every field used (CDI's MinimumRequiredVersion)."""
    all_edits = [common, *(d.edits for d in devices)]
    if any(e.additional_gids for e in all_edits):
        return "0.7.0"
    if any(d.name[:1].isdigit() for d in devices) or any(e.device_nodes for e in all_edits):
        # Names starting with a digit (indexes) and device nodes' hostPath came in 0.5.0.
        return "0.5.0"
    return "0.3.0"
