"""Reading the node's files through a host root (`--host-root`), as a chroot would see them.

In a pod that mounts the host's / at /host, `/etc/containerd/config.toml` is
/host/etc/containerd/config.toml, and a symlink such as /var/run -> /run must be followed inside
/host, not in the pod's own filesystem. Tests point the root at a fake host tree.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path, PurePosixPath

# Linux gives up after 40 symlinks in one lookup (ELOOP); so do we.
_MAX_SYMLINKS = 40


class HostFs:
    def __init__(self, root: str = "/") -> None:
        self.root = Path(root)
        self._chrooted = os.path.realpath(root) != "/"

    def path(self, host_path: str) -> Path:
        """Where the host's `host_path` is, with symlinks resolved inside the root."""
        if not self._chrooted:
            return Path(host_path)
        pending = list(PurePosixPath("/", host_path).parts[1:])
        resolved: list[str] = []
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if resolved:  # `..` at the root stays at the root
                    resolved.pop()
                continue
            candidate = self.root.joinpath(*resolved, part)
            if hops < _MAX_SYMLINKS and candidate.is_symlink():
                hops += 1
                target = PurePosixPath(os.readlink(candidate))
                if target.is_absolute():
                    resolved = []
                    pending[:0] = target.parts[1:]
                else:
                    pending[:0] = target.parts
                continue
            resolved.append(part)
        return self.root.joinpath(*resolved)

    def proc_path(self, name: str) -> Path:
        """A /proc file: the host root's when it has a /proc, else this process's own /proc
        (modules and the driver version are the kernel's, the same in every container)."""
        hosted = self.path(f"/proc/{name}")
        return hosted if hosted.exists() or not self._chrooted else Path("/proc", name)

    def read_text(self, host_path: str | Path) -> str:
        """The file's text (OSError when unreadable). A Path is taken as already resolved."""
        where = host_path if isinstance(host_path, Path) else self.path(host_path)
        return where.read_text(encoding="utf-8", errors="replace")

    def file_kind(self, host_path: str) -> str:
        """'missing', 'directory', 'socket', 'char-device', 'file' or 'other'."""
        try:
            mode = self.path(host_path).stat().st_mode
        except FileNotFoundError:
            return "missing"
        except OSError:
            return "other"
        if stat.S_ISDIR(mode):
            return "directory"
        if stat.S_ISSOCK(mode):
            return "socket"
        if stat.S_ISCHR(mode):
            return "char-device"
        if stat.S_ISREG(mode):
            return "file"
        return "other"

    def listdir(self, host_path: str) -> list[str]:
        """Sorted entry names; [] when the directory is missing or unreadable."""
        try:
            return sorted(os.listdir(self.path(host_path)))
        except OSError:
            return []

    def can_write(self, host_path: str) -> bool:
        """Whether this process may create files in the directory (write and search)."""
        return os.access(self.path(host_path), os.W_OK | os.X_OK)

    def socket_answers(self, host_path: str, timeout: float) -> str | None:
        """None when a unix socket accepts a connection there, else why not."""
        where = str(self.path(host_path))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(where)
            except OSError as exc:
                return exc.strerror or str(exc)
        return None
