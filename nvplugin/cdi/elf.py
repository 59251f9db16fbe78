"""A shared library's SONAME, read from its ELF dynamic section (as Go's debug/elf DynString)."""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

DT_NULL = 0
DT_SONAME = 14
SHT_DYNAMIC = 6
SHT_STRTAB = 3


class ElfError(ValueError):
    """Not an ELF file, or one whose dynamic section cannot be read."""


def read_soname(path: str) -> str:
    """The library's DT_SONAME; its file name when it has none (Go's getSoname)."""
    with open(path, "rb") as f:
        sonames = _dynamic_strings(f, DT_SONAME)
    if len(sonames) > 1:
        raise ElfError(f"{path}: several SONAMEs {sonames}")
    return sonames[0] if sonames else os.path.basename(path)


def _dynamic_strings(f: BinaryIO, tag: int) -> list[str]:
    ident = f.read(16)
    if len(ident) < 16 or ident[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    wide = {1: False, 2: True}.get(ident[4])
    order = {1: "<", 2: ">"}.get(ident[5])
    if wide is None or order is None:
        raise ElfError(f"unknown ELF class {ident[4]} or byte order {ident[5]}")
    word = "Q" if wide else "I"
    # e_type .. e_shstrndx, after e_ident.
    header = struct.Struct(f"{order}HHI{word}{word}{word}IHHHHHH")
    fields = header.unpack(_read(f, 16, header.size))
    shoff, shentsize, shnum = fields[5], fields[10], fields[11]
    # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, ...
    section = struct.Struct(f"{order}II{word}{word}{word}{word}II")
    sections = [section.unpack(_read(f, shoff + i * shentsize, section.size)) for i in range(shnum)]
    dynamic = next((s for s in sections if s[1] == SHT_DYNAMIC), None)
    if dynamic is None:
        return []
    link = dynamic[6]
    if link >= len(sections) or sections[link][1] != SHT_STRTAB:
        raise ElfError("the dynamic section's string table is missing")
    strtab = _read(f, sections[link][4], sections[link][5])
    entry = struct.Struct(f"{order}{word.lower()}{word}")
    found = []
    for d_tag, d_val in entry.iter_unpack(_read(f, dynamic[4], dynamic[5] - dynamic[5] % entry.size)):
        if d_tag == DT_NULL:
            break
        if d_tag == tag:
            end = strtab.find(b"\0", d_val)
            found.append(os.fsdecode(strtab[d_val : end if end >= 0 else len(strtab)]))
    return found


def _read(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise ElfError(f"truncated at byte {offset}")
    return data
