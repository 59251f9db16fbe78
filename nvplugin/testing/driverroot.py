"""A fake NVIDIA driver root on disk, for tests and benchmarks of CDI spec generation.

It holds what nvplugin.cdi looks for, in the real formats: an /etc/ld.so.cache in glibc's binary
format (new, or compat: old table then new), ELF shared objects with a SONAME and the symlinks
ldconfig makes, executables, GSP firmware, IPC sockets (plain files: lookups only ask that they exist and are not directories) and the MPS
pipe directory, and device nodes (symlinks to /dev/null: real character devices, without
needing mknod).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

LIB_DIR = "/usr/lib/x86_64-linux-gnu"
CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
# Libraries by their versioned name's stem: (stem, SONAME suffix) -> lib<stem>.so.<version>
# with SONAME lib<stem>.so.<suffix>.
VERSIONED_LIBRARIES = (
    ("cuda", "1"),
    ("nvidia-ml", "1"),
    ("nvidia-ptxjitcompiler", "1"),
    ("nvidia-opticalflow", "1"),
    ("nvidia-nvvm", "4"),
    ("GLX_nvidia", "0"),
)
BINARIES = ("nvidia-smi", "nvidia-persistenced", "nvidia-cuda-mps-control")

_FLAG_ELF_LIBC6 = 0x0003
_FLAG_X8664_LIB64 = 0x0300


def elf_library(soname: str | None, *, big_endian: bool = False) -> bytes:
    """A minimal 64-bit ELF shared object whose dynamic section names `soname` (none: no
    DT_SONAME at all)."""
    o = ">" if big_endian else "<"
    dynstr = b"\0" + (soname.encode() + b"\0" if soname else b"")
    dynamic = (struct.pack(f"{o}qQ", 14, 1) if soname else b"") + struct.pack(f"{o}qQ", 0, 0)
    shstrtab = b"\0.dynstr\0.dynamic\0.shstrtab\0"
    header_size, section_size = 64, 64
    offsets = [header_size]
    for blob in (dynstr, dynamic):
        offsets.append(offsets[-1] + len(blob))
    shoff = offsets[-1] + len(shstrtab)
    shoff += -shoff % 8
    ident = b"\x7fELF" + bytes([2, 2 if big_endian else 1, 1, 0]) + bytes(8)
    header = ident + struct.pack(f"{o}HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0, 64, 0, 0, section_size, 4, 3)

    def section(name: int, kind: int, offset: int, size: int, link: int = 0, entsize: int = 0) -> bytes:
        return struct.pack(f"{o}IIQQQQIIQQ", name, kind, 0, 0, offset, size, link, 0, 1, entsize)

    sections = (
        bytes(section_size)
        + section(1, 3, offsets[0], len(dynstr))  # .dynstr
        + section(9, 6, offsets[1], len(dynamic), link=1, entsize=16)  # .dynamic
        + section(18, 3, offsets[2], len(shstrtab))  # .shstrtab
    )
    body = header + dynstr + dynamic + shstrtab
    return body + bytes(shoff - len(body)) + sections


def ld_cache(
    libraries: Iterable[tuple[str, str]], *, compat: bool = False, bits32: Iterable[tuple[str, str]] = ()
) -> bytes:
    """An /etc/ld.so.cache listing (name, path) pairs as 64-bit x86 libraries (`bits32` as
    32-bit ones): the new format, or with `compat` the old table first."""
    entries = [(n, p, _FLAG_ELF_LIBC6 | _FLAG_X8664_LIB64) for n, p in libraries]
    entries += [(n, p, _FLAG_ELF_LIBC6) for n, p in bits32]
    header_size, entry_size = 48, 24
    strings = bytearray()
    table_offsets = []
    base = header_size + entry_size * len(entries)
    for name, path, _ in entries:
        key = base + len(strings)
        strings += name.encode() + b"\0"
        value = base + len(strings)
        strings += path.encode() + b"\0"
        table_offsets.append((key, value))
    new = struct.pack("<17s3sIIB3xI12x", b"glibc-ld.so.cache", b"1.1", len(entries), len(strings), 0, 0)
    for (_, _, flags), (key, value) in zip(entries, table_offsets, strict=True):
        new += struct.pack("<iIIIQ", flags, key, value, 0, 0)
    new += bytes(strings)
    if not compat:
        return new
    old = struct.pack("<12sI", b"ld.so-1.7.0\0", len(entries))
    old += b"".join(struct.pack("<iII", flags, 0, 0) for _, _, flags in entries)
    return old + bytes(-len(old) % 8) + new


@dataclass(frozen=True, slots=True)
class FakeDriverRoot:
    root: Path
    version: str
    lib_dir: str

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def library(self, stem: str) -> str:
        return f"{self.lib_dir}/lib{stem}.so.{self.version}"


def make_driver_root(
    root: Path,
    version: str,
    *,
    lib_dir: str = LIB_DIR,
    cache: str | None = "new",
    gpu_minors: Sequence[int] = (),
    cap_nodes: Sequence[str] = (),
    control_nodes: Sequence[str] = CONTROL_NODES,
    extra_libraries: Iterable[str] = (),
) -> FakeDriverRoot:
    """A driver root for driver `version` at `root`: the libraries in `lib_dir` (listed in the
    ld cache, in format `cache` ("new", "compat", or None for no cache), binaries, firmware,
    IPC sockets, control nodes, /dev/nvidia<minor> for `gpu_minors` and the MIG capability
    nodes `cap_nodes`."""
    fake = FakeDriverRoot(root=root, version=version, lib_dir=lib_dir)
    cached: list[tuple[str, str]] = []

    def library(directory: str, file_name: str, soname: str | None, links: Sequence[str]) -> None:
        target = fake.path(f"{directory}/{file_name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(elf_library(soname))
        for link in links:
            (target.parent / link).symlink_to(file_name)
        cached.append((soname or file_name, f"{directory}/{links[0] if links else file_name}"))

    for stem, suffix in VERSIONED_LIBRARIES:
        soname = f"lib{stem}.so.{suffix}"
        library(lib_dir, f"lib{stem}.so.{version}", soname, (soname, f"lib{stem}.so"))
    library(lib_dir, "libnvidia-nvvm70.so.4", "libnvidia-nvvm70.so.4", ())
    library(
        f"{lib_dir}/vdpau", f"libvdpau_nvidia.so.{version}", "libvdpau_nvidia.so.1", ("libvdpau_nvidia.so.1",)
    )
    for name in extra_libraries:
        library(lib_dir, name, None, ())
    if cache:
        fake.path("/etc").mkdir(parents=True, exist_ok=True)
        fake.path("/etc/ld.so.cache").write_bytes(
            ld_cache(cached, compat=cache == "compat", bits32=[("libcuda.so.1", "/usr/lib32/libcuda.so.1")])
        )
    for name in BINARIES:
        binary = fake.path(f"/usr/bin/{name}")
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    firmware = fake.path(f"/lib/firmware/nvidia/{version}")
    firmware.mkdir(parents=True, exist_ok=True)
    for name in ("gsp_ga10x.bin", "gsp_tu10x.bin"):
        (firmware / name).write_bytes(b"\0")
    for path in ("/run/nvidia-persistenced/socket", "/var/run/nvidia-fabricmanager/socket"):
        fake.path(path).parent.mkdir(parents=True, exist_ok=True)
        fake.path(path).write_bytes(b"")
    fake.path("/tmp/nvidia-mps").mkdir(parents=True, exist_ok=True)
    nodes = [*control_nodes, *(f"/dev/nvidia{m}" for m in gpu_minors), *cap_nodes]
    for node in nodes:
        add_device_node(fake.root, node)
    return fake


def add_device_node(root: Path, path: str) -> None:
    """A character device at `path` under `root`: a symlink to /dev/null."""
    node = root / path.lstrip("/")
    node.parent.mkdir(parents=True, exist_ok=True)
    node.symlink_to("/dev/null")
