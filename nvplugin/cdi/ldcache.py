"""Reading /etc/ld.so.cache: the libraries the dynamic linker knows, by path.

glibc writes either the "new" format alone (glibc-ld.so.cache, version 1.1; the default since
glibc 2.32) or the "compat" format: an old ld.so-1.7.0 table followed by the new one. As
nvidia-container-toolkit's internal/ldcache, this reads the new table in both (the old-only
format, from before glibc 2.2, is refused) and keeps ELF libraries of known architectures.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

OLD_MAGIC = b"ld.so-1.7.0\0"
NEW_MAGIC = b"glibc-ld.so.cache"
NEW_VERSION = b"1.1"

_OLD_HEADER = struct.Struct("<12sI")  # magic (with its NUL), number of entries
_OLD_ENTRY_SIZE = 12  # flags, key, value
_NEW_HEADER = struct.Struct("<17s3sII20x")  # magic, version, entries, string table size, unused
_NEW_ENTRY = struct.Struct("<iIIIQ")  # flags, key, value, OS version, hwcap
_ALIGNMENT = 8  # the new header starts 8-byte aligned after an old table

_FLAG_ELF = 0x0001
_ARCH_MASK = 0xFF00
# Architecture flags -> word size (glibc's FLAG_X8664_LIB64, FLAG_AARCH64_LIB64, ...).
_ARCH_BITS = {0x0300: 64, 0x0A00: 64, 0x0500: 64, 0x0800: 32, 0x0900: 32, 0x0000: 32}


class LdCacheError(ValueError):
    """The file is not an ld.so.cache this reader understands."""


@dataclass(frozen=True, slots=True)
class LdCacheEntry:
    name: str  # the SONAME the linker looks up, e.g. "libcuda.so.1"
    path: str  # where it is, e.g. "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
    bits: int  # 32 or 64


def parse_ld_cache(data: bytes) -> tuple[LdCacheEntry, ...]:
    """Every ELF library entry of a cache file, in the file's order."""
    if len(data) <= _OLD_HEADER.size:
        raise LdCacheError(f"too short ({len(data)} bytes) for an ld.so.cache")
    start = 0
    if data.startswith(OLD_MAGIC):
        _, old_entries = _OLD_HEADER.unpack_from(data)
        start = _OLD_HEADER.size + old_entries * _OLD_ENTRY_SIZE
        start += -start % _ALIGNMENT
    if len(data) < start + _NEW_HEADER.size:
        raise LdCacheError("no glibc-ld.so.cache table (old-format-only caches are not supported)")
    magic, version, count, _ = _NEW_HEADER.unpack_from(data, start)
    if magic != NEW_MAGIC or version != NEW_VERSION:
        raise LdCacheError(
            f"expected a {NEW_MAGIC.decode()} {NEW_VERSION.decode()} table at byte {start}, "
            f"found {magic!r} {version!r}"
        )
    table = start + _NEW_HEADER.size
    if len(data) < table + count * _NEW_ENTRY.size:
        raise LdCacheError(f"truncated: {count} entries announced, the file ends before them")
    entries = []
    for flags, key, value, _, _ in _NEW_ENTRY.iter_unpack(data[table : table + count * _NEW_ENTRY.size]):
        bits = _ARCH_BITS.get(flags & _ARCH_MASK)
        if not flags & _FLAG_ELF or bits is None:
            continue
        # Keys and values are offsets from the start of the new table's header.
        name, path = _string_at(data, start + key), _string_at(data, start + value)
        if name and path:
            entries.append(LdCacheEntry(name=name, path=path, bits=bits))
    return tuple(entries)


def _string_at(data: bytes, offset: int) -> str:
    """The NUL-terminated string at `offset`; "" when out of range or unterminated."""
    end = data.find(b"\0", offset) if offset < len(data) else -1
    return os.fsdecode(data[offset:end]) if end >= 0 else ""
