#!/usr/bin/env python3
"""A stand-in for nvidia-cuda-mps-control, for fake GPUs (`--fake-gpus`) and tests.

    fakempscontrol.py -d    start the control daemon in the background; returns once it serves
    fakempscontrol.py -f    run the control daemon in the foreground
    fakempscontrol.py       the client: send each line of stdin to the daemon, print each reply

It behaves like the real one where nvplugin depends on it. Both sides find each other through
CUDA_MPS_PIPE_DIRECTORY (default /tmp/nvidia-mps): the daemon listens on the socket `control`
there and writes its PID to nvidia-cuda-mps-control.pid beside it; it logs to control.log in
CUDA_MPS_LOG_DIRECTORY (default /var/log/nvidia-mps), one "[time Control pid] text" line per
event and per command. A second `-d` on the same pipe directory is refused; a daemon that was
killed leaves its socket and PID file behind, and the next `-d` starts over them. The client
with no daemon to talk to says "Cannot find MPS control daemon process" and exits 1.

Commands: get_server_list, start_server -uid <uid> (a fake server: a process that waits to be
stopped), get_client_list <pid>, get_server_status <pid>,
set_default_active_thread_percentage <p>, get_default_active_thread_percentage,
set_default_device_pinned_mem_limit <dev> <value>, get_default_device_pinned_mem_limit <dev>,
quit (stops the servers, removes the socket and the PID file, exits).

Standard library only, so it runs as a plain executable: nvplugin never imports it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from typing import TextIO

DEFAULT_PIPE_DIR = "/tmp/nvidia-mps"
DEFAULT_LOG_DIR = "/var/log/nvidia-mps"
CONTROL_SOCKET = "control"
PID_FILE = "nvidia-cuda-mps-control.pid"
# Ends each reply on the control socket (replies may be empty or span lines).
END = b"\0"
_MEMORY_LIMIT = re.compile(r"^[0-9]+(\.[0-9]+)?[KMG]?$")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    pipe_dir = os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or DEFAULT_PIPE_DIR
    log_dir = os.environ.get("CUDA_MPS_LOG_DIRECTORY") or DEFAULT_LOG_DIR
    if args == ["-d"]:
        return start_daemon(pipe_dir, log_dir)
    if args == ["-f"]:
        return Daemon(pipe_dir, log_dir).serve(ready=None)
    if not args:
        return client(pipe_dir)
    print(f"Usage: {os.path.basename(sys.argv[0])} [-d | -f]", file=sys.stderr)
    return 1


# --- the client


def client(pipe_dir: str) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.path.join(pipe_dir, CONTROL_SOCKET))
    except OSError:
        print("Cannot find MPS control daemon process", file=sys.stderr)
        return 1
    with sock:
        for line in sys.stdin:
            command = line.strip()
            if not command:
                continue
            sock.sendall(command.encode() + b"\n")
            reply = _read_reply(sock)
            if reply is None:
                return 1
            if reply:
                print(reply, flush=True)
    return 0


def _read_reply(sock: socket.socket) -> str | None:
    data = b""
    while not data.endswith(END):
        chunk = sock.recv(4096)
        if not chunk:
            return None
        data += chunk
    return data[:-1].decode()


# --- the daemon


def running_daemon(pipe_dir: str) -> int | None:
    """The PID of a daemon serving `pipe_dir`, or None (none, or one that was killed)."""
    try:
        with open(os.path.join(pipe_dir, PID_FILE)) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(os.path.join(pipe_dir, CONTROL_SOCKET))
    except (OSError, ValueError):
        return None
    return pid


def start_daemon(pipe_dir: str, log_dir: str) -> int:
    """-d: fork the daemon into its own session, return once it serves (or say why not)."""
    if running_daemon(pipe_dir) is not None:
        print("An instance of this daemon is already running", file=sys.stderr)
        return 1
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        code = 1
        try:
            code = Daemon(pipe_dir, log_dir).serve(ready=write_end)
        finally:
            os._exit(code)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end, "rb") as ready:
        status = ready.read().decode()
    if status != "ok":
        print(status or "the daemon ended before it was ready", file=sys.stderr)
        return 1
    return 0


class Daemon:
    def __init__(self, pipe_dir: str, log_dir: str) -> None:
        self.pipe_dir = pipe_dir
        self.log_dir = log_dir
        self.socket_path = os.path.join(pipe_dir, CONTROL_SOCKET)
        self.pid_path = os.path.join(pipe_dir, PID_FILE)
        self.thread_percentage = 100.0
        self.pinned_limits: dict[int, str] = {}
        self.servers: dict[int, int] = {}  # pid -> uid
        self.log_file: TextIO | None = None
        self.listener: socket.socket | None = None
        self.quitting = False

    def serve(self, ready: int | None) -> int:
        try:
            os.makedirs(self.pipe_dir, exist_ok=True)
            os.makedirs(self.log_dir, exist_ok=True)
            self.log_file = open(os.path.join(self.log_dir, "control.log"), "a", buffering=1)  # noqa: SIM115
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            self.listener = listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(self.socket_path)
            listener.listen(16)
            with open(self.pid_path, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as exc:
            if ready is not None:
                os.write(ready, f"cannot start the MPS control daemon: {exc}".encode())
            return 1
        self.log(f"Starting control daemon using socket {self.socket_path}")
        self.log(
            f"To connect CUDA applications to this daemon, set env CUDA_MPS_PIPE_DIRECTORY={self.pipe_dir}"
        )
        signal.signal(signal.SIGTERM, lambda *_: self._stop_on_signal())
        if ready is not None:
            _detach_stdio()
            os.write(ready, b"ok")
            os.close(ready)
        with listener:
            while not self.quitting:
                try:
                    connection, _ = listener.accept()
                except InterruptedError:
                    continue
                with connection:
                    self.talk(connection)
        self.shutdown()
        return 0

    def _stop_on_signal(self) -> None:
        self.shutdown()
        os._exit(0)

    def talk(self, connection: socket.socket) -> None:
        self.log("Accepting connection...")
        self.log("NEW UI")
        buffer = b""
        while not self.quitting:
            chunk = connection.recv(4096)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer and not self.quitting:
                line, _, buffer = buffer.partition(b"\n")
                command = line.decode(errors="replace").strip()
                if command:
                    self.log(f"Cmd:{command}")
                    reply = self.run(command)
                    if reply:
                        self.log(reply)
                    connection.sendall(reply.encode() + END)
        self.log("UI closed")

    def run(self, command: str) -> str:
        name, *args = command.split()
        handler: Callable[[list[str]], str] | None = getattr(self, f"do_{name}", None)
        if handler is None:
            return f"Unrecognized command: {name}"
        return handler(args)

    # --- commands

    def do_get_server_list(self, args: list[str]) -> str:
        return "\n".join(str(pid) for pid in self.servers)

    def do_start_server(self, args: list[str]) -> str:
        if len(args) != 2 or args[0] != "-uid" or not args[1].isdigit():
            return "Usage: start_server -uid <user id>"
        pid = os.fork()
        if pid == 0:
            self._be_server()
        self.servers[pid] = int(args[1])
        self.log(f"Server {pid} has started")
        return ""

    def _be_server(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        if self.listener is not None:  # only the daemon answers on the control socket
            self.listener.close()
        with open(os.path.join(self.log_dir, "server.log"), "a") as log:
            log.write(f"{_stamp()} Server {os.getpid()}] Server starting\n")
        while True:
            signal.pause()

    def do_get_server_status(self, args: list[str]) -> str:
        return "ACTIVE" if args and args[0].isdigit() and int(args[0]) in self.servers else "Server not found"

    def do_get_client_list(self, args: list[str]) -> str:
        return ""

    def do_set_default_active_thread_percentage(self, args: list[str]) -> str:
        try:
            value = float(args[0])
        except (IndexError, ValueError):
            return "Usage: set_default_active_thread_percentage <percentage>"
        if not 0 < value <= 100:
            return f"Invalid active thread percentage {args[0]}"
        self.thread_percentage = value
        return f"{value:.1f}"

    def do_get_default_active_thread_percentage(self, args: list[str]) -> str:
        return f"{self.thread_percentage:.1f}"

    def do_set_default_device_pinned_mem_limit(self, args: list[str]) -> str:
        if len(args) != 2 or not args[0].isdigit() or not _MEMORY_LIMIT.match(args[1]):
            return "Usage: set_default_device_pinned_mem_limit <dev> <value>"
        self.pinned_limits[int(args[0])] = args[1]
        return ""

    def do_get_default_device_pinned_mem_limit(self, args: list[str]) -> str:
        if len(args) != 1 or not args[0].isdigit():
            return "Usage: get_default_device_pinned_mem_limit <dev>"
        return self.pinned_limits.get(int(args[0]), "N/A")

    def do_quit(self, args: list[str]) -> str:
        self.quitting = True
        return ""

    # --- ending

    def shutdown(self) -> None:
        for pid in self.servers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
        self.servers.clear()
        for path in (self.socket_path, self.pid_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.log("Exit")

    def log(self, text: str) -> None:
        if self.log_file is not None:
            self.log_file.write(f"{_stamp()} Control {os.getpid()}] {text}\n")


def _stamp() -> str:
    return "[" + datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _detach_stdio() -> None:
    """A daemon keeps nothing of its starter's terminal or pipes (so `-d`'s caller sees EOF)."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


if __name__ == "__main__":
    sys.exit(main())
