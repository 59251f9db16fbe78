"""Finding the host facts a CDI spec needs, under the driver root: blocking file-system reads.

Follows nvidia-container-toolkit v1.20.0's lookups (pkg/lookup, internal/lookup/root,
pkg/nvcdi/driver-nvml.go), with these differences:
- symlinks are resolved inside the driver root (an absolute link target means <root>/target),
  so a driver root mounted at /driver-root never sends a lookup to this container's /usr/lib;
- binaries are looked up in the standard bin directories under the driver root only (nvcdi
  also searches this process's PATH, outside the root);
- a device node may be a symlink to a character device (nvcdi's lstat wants the node itself).
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import stat
from collections.abc import Iterable, Sequence

from nvplugin.cdi.elf import ElfError, read_soname
from nvplugin.cdi.ldcache import LdCacheError, parse_ld_cache
from nvplugin.core.allocation import CONTROL_NODES
from nvplugin.core.cdi import (
    BINARY_DIRS,
    DRIVER_BINARIES,
    EXPLICIT_DRIVER_LIBRARIES,
    FEATURE_DISABLE_IPC,
    FEATURE_EXPLICIT_DRIVER_LIBRARIES,
    IPC_SOCKET_DIRS,
    IPC_SOCKETS,
    LEGACY_NVVM_LIBRARY,
    MPS_PIPE_DIR,
    CdiOptions,
    DrmFact,
    HostFacts,
    LibraryFact,
    NodeFact,
    soname_link_names,
)
from nvplugin.core.inventory import Inventory
from nvplugin.nvml.base import normalize_bus_id

LD_CACHE = "/etc/ld.so.cache"
# Where nvcdi's library locator looks before it asks the ld cache (pkg/lookup/library.go).
LIBRARY_DIRS = (
    "/",
    "/usr/lib64",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu/nvidia/current",
    "/usr/lib/aarch64-linux-gnu/nvidia/current",
    "/lib64",
    "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/lib/x86_64-linux-gnu/nvidia/current",
    "/lib/aarch64-linux-gnu/nvidia/current",
)
_MAX_LINKS = 40  # as the kernel's limit on symlinks followed in one lookup


class DriverNotFoundError(Exception):
    """The driver's libraries are not where the options say the driver root is."""


class DriverRoot:
    """A directory holding a root file system (the host's driver root), read as if chrooted."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._ld_cache: list[list[str]] | None = None
        # Why the ld cache could not be used, when it was needed.
        self.problems: list[str] = []

    def host(self, path: str) -> str:
        """Where `path` (absolute, inside the root) is for this process."""
        return os.path.join(self.root, path.lstrip("/"))

    def real_path(self, path: str) -> str | None:
        """`path` with every symlink resolved inside the root; None when it does not exist."""
        pending = [p for p in reversed(path.split("/")) if p]
        resolved: list[str] = []
        links = 0
        while pending:
            part = pending.pop()
            if part == ".":
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            try:
                mode = os.lstat(self.host("/".join([*resolved, part]))).st_mode
            except OSError:
                return None
            if not stat.S_ISLNK(mode):
                resolved.append(part)
                continue
            links += 1
            if links > _MAX_LINKS:
                return None
            target = os.readlink(self.host("/".join([*resolved, part])))
            if target.startswith("/"):
                resolved = []
            pending.extend(p for p in reversed(target.split("/")) if p)
        return "/" + "/".join(resolved)

    def glob(self, directory: str, pattern: str) -> list[str]:
        """Files (not directories) in `directory` matching `pattern` (whose directory part has
        no wildcard), sorted by name, as paths inside the root."""
        sub, _, name_pattern = pattern.rpartition("/")
        directory = posixpath.join(directory, sub) if sub else directory
        try:
            names = sorted(os.listdir(self.host(directory)))
        except OSError:
            return []
        found = []
        for name in names:
            if fnmatch.fnmatchcase(name, name_pattern):
                path = posixpath.join(directory, name)
                if os.path.isfile(self.host(path)):
                    found.append(path)
        return found

    def locate_in(self, directories: Iterable[str], pattern: str) -> list[str]:
        """nvcdi's symlink locator: matching files in the directories, as real paths, once each."""
        found: dict[str, None] = {}
        for directory in directories:
            for path in self.glob(directory, pattern):
                real = self.real_path(path)
                if real is not None:
                    found[real] = None
        return list(found)

    def locate_library(self, pattern: str) -> list[str]:
        """nvcdi's library locator: the standard library directories first, else the ld cache
        (any name along each cached library's symlink chain may match)."""
        return self.locate_in(LIBRARY_DIRS, pattern) or self._locate_cached(pattern)

    def _locate_cached(self, pattern: str) -> list[str]:
        found: dict[str, None] = {}
        for chain in self._cached_libraries():
            for path in chain:
                if fnmatch.fnmatchcase(posixpath.basename(path), pattern):
                    real = self.real_path(path)
                    if real is not None:
                        found[real] = None
        return list(found)

    def _cached_libraries(self) -> list[list[str]]:
        """The 64-bit libraries of the root's ld cache, each with its symlink chain."""
        if self._ld_cache is None:
            self._ld_cache = []
            try:
                with open(self.host(LD_CACHE), "rb") as f:
                    entries = parse_ld_cache(f.read())
            except (OSError, LdCacheError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                self.problems.append(f"it cannot be read: {reason}")
                return self._ld_cache
            paths = dict.fromkeys(e.path for e in entries if e.bits == 64)
            self._ld_cache = [self._link_chain(p) for p in paths]
        return self._ld_cache

    def _link_chain(self, path: str) -> list[str]:
        """The path, then each symlink target it leads to (nvcdi's ResolveChain)."""
        chain = [path]
        while len(chain) <= _MAX_LINKS:
            try:
                target = os.readlink(self.host(chain[-1]))
            except OSError:
                break
            following = posixpath.normpath(posixpath.join(posixpath.dirname(chain[-1]), target))
            if following in chain:
                break
            chain.append(following)
        return chain

    def first_file(self, paths: Iterable[str], executable: bool = False) -> str | None:
        for path in paths:
            try:
                st = os.stat(self.host(path))
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode) and (not executable or st.st_mode & 0o111):
                return path
        return None


def find_host_facts(inventory: Inventory, options: CdiOptions, *, sysfs_root: str = "/sys") -> HostFacts:
    """What a spec for `inventory` needs from the host: the driver's files under
    `options.lookup_root`, device nodes under its /dev (else this process's /dev, NVIDIA's
    rule) and DRM facts from `sysfs_root`. DriverNotFoundError when the driver's libraries are
    not there."""
    root = DriverRoot(options.lookup_root)
    version = inventory.driver_version or _infer_version(root)
    versioned = root.locate_library(f"lib*.so.{version}") if version else []
    if not versioned:
        raise DriverNotFoundError(
            f"no NVIDIA driver libraries (lib*.so.{version or '<version>'}) under {root.root}: "
            f"looked in {', '.join(LIBRARY_DIRS)} and the ld cache {root.host(LD_CACHE)}"
            + "".join(f" ({p})" for p in root.problems)
            + "; the driver root must be visible to nvplugin (set the container driver root to "
            "where the host's driver root is mounted)"
        )
    library_dirs = list(dict.fromkeys(posixpath.dirname(p) for p in versioned))
    libraries = root.locate_in(
        [*library_dirs, *(posixpath.join(d, "vdpau") for d in library_dirs)], f"*.so.{version}"
    )
    libraries += root.locate_in(library_dirs, LEGACY_NVVM_LIBRARY)
    if options.feature(FEATURE_EXPLICIT_DRIVER_LIBRARIES):
        for name in EXPLICIT_DRIVER_LIBRARIES:
            libraries += root.locate_in(library_dirs, name)
    dev = DriverRoot(options.lookup_root if os.path.isdir(root.host("/dev")) else "/")
    ipc_sockets: list[str] = []
    ipc_dirs: list[str] = []
    if not options.feature(FEATURE_DISABLE_IPC):
        for socket in IPC_SOCKETS:
            found = root.first_file(d + socket for d in IPC_SOCKET_DIRS)
            ipc_sockets += [found] if found else []
        if os.path.isdir(root.host(MPS_PIPE_DIR)):
            ipc_dirs.append(MPS_PIPE_DIR)
    drm = [_drm_facts(dev, sysfs_root, gpu.uuid, gpu.pci_bus_id) for gpu in inventory.gpus]
    nodes = [
        *CONTROL_NODES,
        *(gpu.device_node for gpu in inventory.gpus),
        *(node for gpu in inventory.gpus for mig in gpu.mig_devices for node in mig.device_nodes),
        *(node for fact in drm for node in fact.nodes),
    ]
    return HostFacts(
        driver_version=version,
        libraries=tuple(_library_fact(root, p) for p in dict.fromkeys(libraries)),
        library_dirs=tuple(library_dirs),
        binaries=tuple(
            found
            for name in DRIVER_BINARIES
            if (found := root.first_file((posixpath.join(d, name) for d in BINARY_DIRS), executable=True))
        ),
        firmware=tuple(
            dict.fromkeys(
                path
                for directory in _firmware_dirs(sysfs_root)
                for path in root.glob(directory, f"nvidia/{version}/gsp*.bin")
            )
        ),
        ipc_sockets=tuple(ipc_sockets),
        ipc_dirs=tuple(ipc_dirs),
        device_nodes=tuple(_present_nodes(dev, list(dict.fromkeys(nodes)))),
        drm=tuple(d for d in drm if d.nodes),
    )


def _infer_version(root: DriverRoot) -> str:
    """The driver version in libcuda's or libnvidia-ml's file name (nvcdi's fallback when
    NVML gives none)."""
    for prefix in ("libcuda.so.", "libnvidia-ml.so."):
        found = root.locate_library(prefix + "*.*")
        if found:
            return posixpath.basename(found[0]).removeprefix(prefix)
    return ""


def _library_fact(root: DriverRoot, path: str) -> LibraryFact:
    try:
        soname: str | None = read_soname(root.host(path))
    except (OSError, ElfError):
        soname = None
    directory, name = posixpath.split(path)
    links = frozenset(
        link
        for link in soname_link_names(name, soname)
        if os.path.islink(root.host(posixpath.join(directory, link)))
    )
    return LibraryFact(path=path, soname=soname, symlinks=links)


def _firmware_dirs(sysfs_root: str) -> list[str]:
    """The kernel's firmware search path (with the custom one first, when set)."""
    release = os.uname().release
    dirs = []
    try:
        with open(os.path.join(sysfs_root, "module/firmware_class/parameters/path")) as f:
            custom = f.read().strip()
    except OSError:
        custom = ""
    if custom:
        dirs.append(custom)
    dirs += [
        f"/lib/firmware/updates/{release}",
        "/lib/firmware/updates",
        f"/lib/firmware/{release}",
        "/lib/firmware",
    ]
    return list(dict.fromkeys(dirs))


def _present_nodes(dev: DriverRoot, paths: Sequence[str]) -> list[NodeFact]:
    nodes = []
    for path in paths:
        try:
            st = os.stat(dev.host(path))
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode):
            nodes.append(NodeFact(path=path, mode=st.st_mode, gid=st.st_gid))
    return nodes


def _drm_facts(dev: DriverRoot, sysfs_root: str, gpu_uuid: str, pci_bus_id: str) -> DrmFact:
    """The GPU's /dev/dri nodes as sysfs lists them, and its /dev/dri/by-path links."""
    bus_id = normalize_bus_id(pci_bus_id)
    try:
        names = sorted(os.listdir(os.path.join(sysfs_root, "bus/pci/devices", bus_id, "drm")))
    except OSError:
        return DrmFact(gpu_uuid=gpu_uuid)
    links = []
    for kind in ("card", "render"):
        link = f"/dev/dri/by-path/pci-{bus_id}-{kind}"
        try:
            links.append((link, os.readlink(dev.host(link))))
        except OSError:
            continue
    return DrmFact(gpu_uuid=gpu_uuid, nodes=tuple(f"/dev/dri/{n}" for n in names), by_path=tuple(links))
