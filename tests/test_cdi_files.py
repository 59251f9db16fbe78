"""The CDI shell (nvplugin/cdi): reading the driver root, and writing the spec files."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from nvplugin.cdi import CdiSpecError, save_spec_files, write_specs
from nvplugin.cdi.elf import ElfError, read_soname
from nvplugin.cdi.hostfacts import DriverNotFoundError, find_host_facts
from nvplugin.cdi.ldcache import LdCacheEntry, LdCacheError, parse_ld_cache
from nvplugin.core.allocation import container_allocation
from nvplugin.core.cdi import GPU_SPEC_FILE, CdiOptions, build_spec
from nvplugin.core.config import Config
from nvplugin.core.inventory import Inventory
from nvplugin.core.resources import Resource, build_resources
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.fake import FakeNvml, load_layout
from nvplugin.testing.driverroot import (
    CONTROL_NODES,
    FakeDriverRoot,
    add_device_node,
    elf_library,
    ld_cache,
    make_driver_root,
)
from tests.cdi_helpers import validate_spec

ROOT_DIR = Path(__file__).resolve().parents[1]


def inventory_of(layout: str) -> Inventory:
    nvml = FakeNvml(load_layout(layout))
    nvml.init()
    return discover(nvml)


def driver_root(tmp_path: Path, inventory: Inventory, **kwargs: object) -> FakeDriverRoot:
    caps = [n for g in inventory.gpus for m in g.mig_devices for n in m.device_nodes[1:]]
    return make_driver_root(
        tmp_path / "root",
        inventory.driver_version,
        gpu_minors=[g.minor for g in inventory.gpus],
        cap_nodes=caps,
        **kwargs,  # type: ignore[arg-type]
    )


def options(fake: FakeDriverRoot, spec_dir: Path, **changes: object) -> CdiOptions:
    return CdiOptions(container_driver_root=str(fake.root), spec_dir=str(spec_dir), **changes)  # type: ignore[arg-type]


# --- ld.so.cache


@pytest.mark.parametrize("compat", [False, True])
def test_ld_cache_lists_the_entries_in_both_formats(compat: bool) -> None:
    libs = [
        ("libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        ("libm.so.6", "/lib/x86_64-linux-gnu/libm.so.6"),
    ]
    data = ld_cache(libs, compat=compat, bits32=[("libcuda.so.1", "/usr/lib32/libcuda.so.1")])
    assert data.startswith(b"ld.so-1.7.0\0" if compat else b"glibc-ld.so.cache1.1")
    assert parse_ld_cache(data) == (
        LdCacheEntry("libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1", 64),
        LdCacheEntry("libm.so.6", "/lib/x86_64-linux-gnu/libm.so.6", 64),
        LdCacheEntry("libcuda.so.1", "/usr/lib32/libcuda.so.1", 32),
    )


def test_ld_cache_refuses_what_it_cannot_read() -> None:
    good = ld_cache([("libcuda.so.1", "/usr/lib/libcuda.so.1")])
    with pytest.raises(LdCacheError, match="too short"):
        parse_ld_cache(b"glibc")
    with pytest.raises(LdCacheError, match=r"expected a glibc-ld\.so\.cache 1\.1 table at byte 0"):
        parse_ld_cache(b"glibc-ld.so.cache1.0" + good[20:])
    with pytest.raises(LdCacheError, match="truncated"):
        parse_ld_cache(good[:60])
    # An old-format-only cache (glibc < 2.2) has no new table after the old one.
    with pytest.raises(LdCacheError, match="old-format-only"):
        parse_ld_cache(b"ld.so-1.7.0\0" + (1).to_bytes(4, "little") + bytes(12))
    # An entry pointing outside the file is skipped, the others kept.
    broken = bytearray(ld_cache([("liba.so.1", "/lib/liba.so.1"), ("libb.so.1", "/lib/libb.so.1")]))
    broken[48 + 4 : 48 + 8] = (10**6).to_bytes(4, "little")
    assert [e.name for e in parse_ld_cache(bytes(broken))] == ["libb.so.1"]


def _ldconfig_print(cache: Path) -> list[tuple[str, str]]:
    """`ldconfig -p` of a cache file: (name, path) of each 64-bit x86 entry."""
    out = subprocess.run(
        ["ldconfig", "-p", "-C", str(cache)], capture_output=True, text=True, check=True
    ).stdout
    return [(m[1], m[2]) for m in re.finditer(r"^\s+(\S+) \(libc6,x86-64[^)]*\) => (\S+)$", out, re.M)]


@pytest.mark.skipif(
    shutil.which("ldconfig") is None or os.uname().machine != "x86_64",
    reason="needs glibc's ldconfig on x86-64",
)
@pytest.mark.parametrize("fmt", ["new", "compat"])
def test_ld_cache_reads_what_glibcs_ldconfig_writes(tmp_path: Path, fmt: str) -> None:
    """glibc's own ldconfig builds the cache of a root holding real shared objects."""
    libc = next(path for name, path in _ldconfig_print(Path("/etc/ld.so.cache")) if name == "libc.so.6")
    libdir = tmp_path / "usr/lib/nvidia"
    libdir.mkdir(parents=True)
    shutil.copy(os.path.realpath(libc), libdir / "libc.so.6")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/ld.so.conf").write_text("/usr/lib/nvidia\n")
    subprocess.run(["ldconfig", "-r", str(tmp_path), "-c", fmt], check=True, capture_output=True)
    cache = tmp_path / "etc/ld.so.cache"
    assert cache.read_bytes().startswith(b"ld.so-1.7.0\0" if fmt == "compat" else b"glibc-ld.so.cache")
    entries = parse_ld_cache(cache.read_bytes())
    assert [(e.name, e.path) for e in entries if e.bits == 64] == _ldconfig_print(cache)
    assert ("libc.so.6", "/usr/lib/nvidia/libc.so.6") in [(e.name, e.path) for e in entries]


@pytest.mark.skipif(
    shutil.which("ldconfig") is None or os.uname().machine != "x86_64",
    reason="needs glibc's ldconfig on x86-64",
)
def test_the_fake_caches_are_ones_ldconfig_reads(tmp_path: Path) -> None:
    libs = [
        ("libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        ("libm.so.6", "/lib/x86_64-linux-gnu/libm.so.6"),
    ]
    for compat in (False, True):
        (tmp_path / "cache").write_bytes(ld_cache(libs, compat=compat))
        assert sorted(_ldconfig_print(tmp_path / "cache")) == sorted(libs)


# --- ELF


def test_soname_is_read_from_the_dynamic_section(tmp_path: Path) -> None:
    lib = tmp_path / "libcuda.so.580.1"
    lib.write_bytes(elf_library("libcuda.so.1"))
    assert read_soname(str(lib)) == "libcuda.so.1"
    lib.write_bytes(elf_library("libbig.so.2", big_endian=True))
    assert read_soname(str(lib)) == "libbig.so.2"
    lib.write_bytes(elf_library(None))
    assert read_soname(str(lib)) == "libcuda.so.580.1"
    lib.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(ElfError, match="not an ELF file"):
        read_soname(str(lib))
    lib.write_bytes(elf_library("libcuda.so.1")[:100])
    with pytest.raises(ElfError, match="truncated"):
        read_soname(str(lib))


def test_soname_of_a_real_library() -> None:
    libm = Path(os.path.realpath("/lib/x86_64-linux-gnu/libm.so.6"))
    if not libm.exists():
        pytest.skip("no x86-64 libm here")
    assert read_soname(str(libm)) == "libm.so.6"


# --- host facts


def test_host_facts_of_a_driver_root(tmp_path: Path) -> None:
    inventory = inventory_of("2")
    fake = driver_root(tmp_path, inventory)
    # Not executable: not a binary to mount. A regular file is no device node.
    nondebug = fake.path("/usr/bin/nvidia-debugdump")
    nondebug.write_text("")
    fake.path("/dev/nvidia-modeset").write_text("")
    facts = find_host_facts(inventory, options(fake, tmp_path / "cdi"))
    version, lib = inventory.driver_version, fake.lib_dir
    assert facts.driver_version == version and facts.library_dirs == (lib,)
    by_path = {f.path: f for f in facts.libraries}
    assert list(by_path) == [
        f"{lib}/libGLX_nvidia.so.{version}",
        f"{lib}/libcuda.so.{version}",
        f"{lib}/libnvidia-ml.so.{version}",
        f"{lib}/libnvidia-nvvm.so.{version}",
        f"{lib}/libnvidia-opticalflow.so.{version}",
        f"{lib}/libnvidia-ptxjitcompiler.so.{version}",
        f"{lib}/vdpau/libvdpau_nvidia.so.{version}",
        f"{lib}/libnvidia-nvvm70.so.4",
    ]
    cuda = by_path[f"{lib}/libcuda.so.{version}"]
    assert cuda.soname == "libcuda.so.1" and cuda.symlinks == {"libcuda.so.1", "libcuda.so"}
    assert facts.binaries == (
        "/usr/bin/nvidia-smi",
        "/usr/bin/nvidia-persistenced",
        "/usr/bin/nvidia-cuda-mps-control",
    )
    assert facts.firmware == (
        f"/lib/firmware/nvidia/{version}/gsp_ga10x.bin",
        f"/lib/firmware/nvidia/{version}/gsp_tu10x.bin",
    )
    assert facts.ipc_sockets == ("/run/nvidia-persistenced/socket", "/var/run/nvidia-fabricmanager/socket")
    assert facts.ipc_dirs == ("/tmp/nvidia-mps",)
    assert [n.path for n in facts.device_nodes] == [*CONTROL_NODES, "/dev/nvidia0", "/dev/nvidia1"]
    assert all(stat.S_ISCHR(n.mode) for n in facts.device_nodes)


@pytest.mark.parametrize("cache", ["new", "compat"])
def test_libraries_outside_the_standard_dirs_are_found_through_the_ld_cache(
    tmp_path: Path, cache: str
) -> None:
    inventory = inventory_of("1")
    fake = driver_root(tmp_path, inventory, lib_dir="/usr/lib/nvidia-580", cache=cache)
    facts = find_host_facts(inventory, options(fake, tmp_path / "cdi"))
    # As nvcdi: every directory holding a lib*.so.<version> the cache names (vdpau too).
    assert facts.library_dirs == ("/usr/lib/nvidia-580", "/usr/lib/nvidia-580/vdpau")
    assert f"/usr/lib/nvidia-580/libcuda.so.{fake.version}" in [f.path for f in facts.libraries]


def test_without_the_driver_the_error_says_where_it_looked(tmp_path: Path) -> None:
    inventory = inventory_of("1")
    fake = driver_root(tmp_path, inventory, lib_dir="/opt/nvidia/lib", cache=None)
    with pytest.raises(DriverNotFoundError) as err:
        find_host_facts(inventory, options(fake, tmp_path / "cdi"))
    message = str(err.value)
    assert f"(lib*.so.{fake.version}) under {fake.root}:" in message
    assert f"the ld cache {fake.root}/etc/ld.so.cache" in message
    assert "container driver root" in message
    # A cache that cannot be read is the same as none, and the error says why.
    fake.path("/etc").mkdir()
    fake.path("/etc/ld.so.cache").write_bytes(b"garbage" * 10)
    with pytest.raises(
        DriverNotFoundError, match=r"ld.so.cache \(it cannot be read: expected a glibc-ld.so.cache"
    ):
        find_host_facts(inventory, options(fake, tmp_path / "cdi"))


def test_absolute_symlinks_resolve_inside_the_driver_root(tmp_path: Path) -> None:
    """A driver root mounted elsewhere (e.g. /driver-root): /usr/lib/... in a link means the
    root's /usr/lib, never this container's."""
    inventory = inventory_of("1")
    fake = driver_root(tmp_path, inventory, lib_dir="/opt/nvidia/lib", cache="new")
    real = fake.path(f"/opt/nvidia/lib/libcuda.so.{fake.version}")
    moved = fake.path(f"/opt/nvidia/real/libcuda.so.{fake.version}")
    moved.parent.mkdir()
    real.rename(moved)
    real.symlink_to(f"/opt/nvidia/real/libcuda.so.{fake.version}")
    facts = find_host_facts(inventory, options(fake, tmp_path / "cdi"))
    assert f"/opt/nvidia/real/libcuda.so.{fake.version}" in [f.path for f in facts.libraries]
    assert set(facts.library_dirs) == {"/opt/nvidia/lib", "/opt/nvidia/lib/vdpau", "/opt/nvidia/real"}


def test_the_driver_version_comes_from_the_libraries_when_nvml_gives_none(tmp_path: Path) -> None:
    inventory = inventory_of("1")
    fake = driver_root(tmp_path, inventory)
    unversioned = Inventory(gpus=inventory.gpus, driver_version="", cuda_driver_version=0)
    assert find_host_facts(unversioned, options(fake, tmp_path / "cdi")).driver_version == fake.version


def test_drm_nodes_come_from_sysfs(tmp_path: Path) -> None:
    inventory = inventory_of("2")
    fake = driver_root(tmp_path, inventory)
    gpu = inventory.gpus[1]
    bus = gpu.pci_bus_id[4:].lower()
    sysfs = tmp_path / "sys"
    for name in ("card1", "renderD129"):
        (sysfs / "bus/pci/devices" / bus / "drm" / name).mkdir(parents=True)
    add_device_node(fake.root, "/dev/dri/card1")
    fake.path("/dev/dri/by-path").mkdir()
    fake.path(f"/dev/dri/by-path/pci-{bus}-card").symlink_to("../card1")
    facts = find_host_facts(inventory, options(fake, tmp_path / "cdi"), sysfs_root=str(sysfs))
    (drm,) = facts.drm
    assert drm.gpu_uuid == gpu.uuid and drm.nodes == ("/dev/dri/card1", "/dev/dri/renderD129")
    assert drm.by_path == ((f"/dev/dri/by-path/pci-{bus}-card", "../card1"),)
    assert "/dev/dri/card1" in [n.path for n in facts.device_nodes]
    spec = build_spec(inventory, build_resources(inventory, Config()), options(fake, tmp_path), facts).spec
    assert spec is not None
    edits = spec.device(gpu.uuid).edits  # type: ignore[union-attr]
    assert [n.path for n in edits.device_nodes] == ["/dev/nvidia1", "/dev/dri/card1"]
    assert edits.hooks[0].args[-1] == f"../card1::/dev/dri/by-path/pci-{bus}-card"


# --- writing


def cdi_names(resources: tuple[Resource, ...], config: Config) -> list[str]:
    return [n for r in resources for d in r.devices for n in container_allocation([d], config).cdi_devices]


def test_write_specs_writes_a_valid_spec_every_allocated_name_resolves_in(tmp_path: Path) -> None:
    inventory = inventory_of("mig-mixed-2gpu")
    fake = driver_root(tmp_path, inventory)
    config = Config(mig_strategy="mixed", device_list_strategy=("cdi-cri",), device_id_strategy="index")
    resources = build_resources(inventory, config)
    spec_dir = tmp_path / "run/cdi"
    result = write_specs(inventory, resources, options(fake, spec_dir))
    path = spec_dir / GPU_SPEC_FILE
    assert result.path == str(path) and result.changed and result.removed == () and result.warnings == ()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    doc = json.loads(path.read_text())
    validate_spec(doc)
    names = {d["name"] for d in doc["devices"]}
    assert result.device_names == len(names) == 16
    for name in cdi_names(resources, config):
        assert name.removeprefix(doc["kind"] + "=") in names
    # Paths in the spec are the host's: the driver root (here /) replaces the container's.
    mounts = doc["containerEdits"]["mounts"]
    assert all(not m["hostPath"].startswith(str(tmp_path)) for m in mounts)


def test_rewriting_drops_stale_devices_and_skips_unchanged_specs(tmp_path: Path) -> None:
    inventory = inventory_of("4")
    fake = driver_root(tmp_path, inventory)
    opts = options(fake, tmp_path / "cdi")
    path = tmp_path / "cdi" / GPU_SPEC_FILE
    write_specs(inventory, build_resources(inventory, Config()), opts)
    fewer = Inventory(
        gpus=inventory.gpus[:2], driver_version=inventory.driver_version, cuda_driver_version=13000
    )
    result = write_specs(fewer, build_resources(fewer, Config()), opts)
    assert result.changed
    names = [d["name"] for d in json.loads(path.read_text())["devices"]]
    assert names == ["0", "1", *sorted(g.uuid for g in fewer.gpus)]
    inode = path.stat().st_ino
    again = write_specs(fewer, build_resources(fewer, Config()), opts)
    assert not again.changed and path.stat().st_ino == inode


def test_specs_of_resources_no_longer_advertised_are_removed_and_only_ours(tmp_path: Path) -> None:
    inventory = inventory_of("2")
    fake = driver_root(tmp_path, inventory)
    spec_dir = tmp_path / "cdi"
    opts = options(fake, spec_dir)
    write_specs(inventory, build_resources(inventory, Config()), opts)
    theirs = [spec_dir / "nvidia.com-gpu.yaml", spec_dir / "k8s.device-plugin.nvidia.com-gpu.json.bak"]
    for path in theirs:
        path.write_text("{}")
    stale = [
        spec_dir / "k8s.device-plugin.nvidia.com-imex-channel.json",
        spec_dir / f".{GPU_SPEC_FILE}.x1y2.tmp",
    ]
    for path in stale:
        path.write_text("{}")
    result = write_specs(inventory, build_resources(inventory, Config()), opts)
    assert sorted(result.removed) == sorted(map(str, stale)) and result.changed
    empty = Inventory(gpus=(), driver_version="", cuda_driver_version=0)
    result = write_specs(empty, build_resources(empty, Config()), opts)
    assert result.path is None and result.removed == (str(spec_dir / GPU_SPEC_FILE),)
    assert sorted(spec_dir.iterdir()) == sorted(theirs)


def test_readers_never_see_a_partial_spec(tmp_path: Path) -> None:
    """Every read, while the spec is rewritten again and again, is a whole spec."""
    eight, two = inventory_of("8"), inventory_of("2")
    fake = driver_root(tmp_path, eight)
    opts = options(fake, tmp_path / "cdi")
    path = tmp_path / "cdi" / GPU_SPEC_FILE
    write_specs(eight, build_resources(eight, Config()), opts)
    stop = threading.Event()
    seen: list[int] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(len(json.loads(path.read_text())["devices"]))

    reader = threading.Thread(target=read)
    reader.start()
    inodes = set()
    try:
        for i in range(40):
            inventory = eight if i % 2 else two
            write_specs(inventory, build_resources(inventory, Config()), opts)
            inodes.add(path.stat().st_ino)
    finally:
        stop.set()
        reader.join()
    assert seen and set(seen) <= {4, 16}
    assert len(inodes) > 1  # replaced by rename, not rewritten in place
    assert [p.name for p in (tmp_path / "cdi").iterdir()] == [GPU_SPEC_FILE]


def _in_child(fn: Callable[[], str]) -> tuple[int, str]:
    """Run `fn` in a forked child (to change its limits or user there); its exit status and
    what it returned."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        code = 0
        try:
            text = fn()
        except BaseException as exc:
            text, code = f"{type(exc).__name__}: {exc}", 3
        os.write(write_end, text.encode())
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        text = f.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), text


def test_a_failed_write_leaves_the_old_spec_whole(tmp_path: Path) -> None:
    """The file system refuses the write half-way (a file size limit): the old spec stays as
    it was, no temporary file is left, and the error names the file."""
    two, eight = inventory_of("2"), inventory_of("8")
    fake = driver_root(tmp_path, eight)
    opts = options(fake, tmp_path / "cdi")
    path = tmp_path / "cdi" / GPU_SPEC_FILE
    write_specs(two, build_resources(two, Config()), opts)
    old = path.read_bytes()
    resources = build_resources(eight, Config())

    def write_with_a_size_limit() -> str:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(old) + 100, len(old) + 100))
        write_specs(eight, resources, opts)
        return "written"

    code, text = _in_child(write_with_a_size_limit)
    assert code == 3 and text.startswith(f"CdiSpecError: cannot write the CDI spec {path}: File too large")
    assert path.read_bytes() == old
    assert [p.name for p in (tmp_path / "cdi").iterdir()] == [GPU_SPEC_FILE]


def test_a_spec_dir_nvplugin_cannot_write_is_a_clear_error() -> None:
    """Run as a user who may not write the spec dir (nobody, when the tests run as root)."""
    base = Path(tempfile.mkdtemp(prefix="nvp-cdi-", dir="/tmp"))
    try:
        base.chmod(0o755)
        inventory = inventory_of("2")
        fake = driver_root(base, inventory)
        spec_dir = base / "cdi"
        opts = options(fake, spec_dir)
        write_specs(inventory, build_resources(inventory, Config()), opts)
        spec_dir.chmod(0o555)
        fewer = Inventory(
            gpus=inventory.gpus[:1], driver_version=inventory.driver_version, cuda_driver_version=0
        )

        def write_unprivileged() -> str:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            write_specs(fewer, build_resources(fewer, Config()), opts)
            return "written"

        code, text = _in_child(write_unprivileged)
        path = spec_dir / GPU_SPEC_FILE
        assert code == 3, text
        assert text.startswith(f"CdiSpecError: cannot write the CDI spec {path}: Permission denied; ")
        assert f"the CDI spec directory {spec_dir} must be writable by nvplugin" in text
        assert "mount the host's CDI spec directory read-write" in text
        assert len(json.loads(path.read_text())["devices"]) == 4
    finally:
        if (base / "cdi").exists():
            (base / "cdi").chmod(0o755)
        shutil.rmtree(base)


def test_a_spec_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "cdi").write_text("")
    with pytest.raises(CdiSpecError, match=f"cannot create the CDI spec directory {tmp_path / 'cdi'}: "):
        save_spec_files(str(tmp_path / "cdi"), {GPU_SPEC_FILE: {}})


def test_a_missing_driver_is_a_spec_error(tmp_path: Path) -> None:
    inventory = inventory_of("1")
    opts = CdiOptions(container_driver_root=str(tmp_path / "empty"), spec_dir=str(tmp_path / "cdi"))
    with pytest.raises(
        CdiSpecError, match=r"cannot build the CDI spec: no NVIDIA driver libraries \(lib\*\.so\."
    ):
        write_specs(inventory, build_resources(inventory, Config()), opts)


def test_the_compare_script_prints_our_spec_and_diffs_nvidias(tmp_path: Path) -> None:
    inventory = inventory_of("2")
    fake = driver_root(tmp_path, inventory)
    script = [
        sys.executable,
        str(ROOT_DIR / "scripts/cdi_compare.py"),
        "--fake-gpus",
        "2",
        "--container-driver-root",
        str(fake.root),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT_DIR)}
    ours = json.loads(subprocess.run(script, capture_output=True, text=True, check=True, env=env).stdout)
    validate_spec(ours)
    theirs = json.loads(json.dumps(ours))
    theirs["devices"] = [d for d in theirs["devices"] if d["name"] != "1"]
    theirs["containerEdits"]["env"].append("EXTRA=1")
    for node in theirs["containerEdits"]["deviceNodes"]:
        del node["hostPath"]  # a missing hostPath is the path
    (tmp_path / "nvidia.json").write_text(json.dumps(theirs))
    out = subprocess.run(
        [*script, "--nvidia-spec", str(tmp_path / "nvidia.json")],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    assert "names: 3 same, 1 only ours, 0 only NVIDIA's\n    + ours:     1\n" in out
    assert "    - NVIDIA's: EXTRA=1\n" in out
    assert "deviceNodes: 3 same, 0 only ours, 0 only NVIDIA's" in out
    assert out.endswith("differences: 2\n")
