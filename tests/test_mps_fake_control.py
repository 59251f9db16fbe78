"""The fake nvidia-cuda-mps-control (nvplugin/nvml/fakempscontrol.py): the behaviours of the real
one that nvplugin relies on, through real processes and its real control socket."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import nvplugin.nvml

FAKE = str(Path(nvplugin.nvml.__file__).parent / "fakempscontrol.py")


class Dirs:
    def __init__(self, root: Path) -> None:
        self.pipe = root / "pipe"
        self.log = root / "log"
        self.env = {
            **os.environ,
            "CUDA_MPS_PIPE_DIRECTORY": str(self.pipe),
            "CUDA_MPS_LOG_DIRECTORY": str(self.log),
        }

    def run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, FAKE, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=20,
        )

    def pid(self) -> int:
        return int((self.pipe / "nvidia-cuda-mps-control.pid").read_text())

    def log_text(self) -> str:
        return (self.log / "control.log").read_text()


@pytest.fixture
def dirs() -> Iterator[Dirs]:
    root = Path(tempfile.mkdtemp(prefix="nvp-fmps-", dir="/tmp"))  # short: a socket path lives there
    found = Dirs(root)
    yield found
    for pid_file in root.glob("pipe/*.pid"):  # a test that failed half-way
        pid = int(pid_file.read_text())
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for init (which may take its time) to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_the_client_without_a_daemon_says_so(dirs: Dirs) -> None:
    result = dirs.run(stdin="get_server_list\n")
    assert result.returncode == 1
    assert result.stderr.strip() == "Cannot find MPS control daemon process"


def test_daemon_serves_commands_and_refuses_a_second_instance(dirs: Dirs) -> None:
    started = dirs.run("-d")
    assert started.returncode == 0, started.stderr
    # -d returns once it serves: the socket and the PID file are there already.
    assert (dirs.pipe / "control").is_socket() and alive(dirs.pid())
    second = dirs.run("-d")
    assert (second.returncode, second.stderr.strip()) == (1, "An instance of this daemon is already running")
    # What nvplugin sends, as NVIDIA sends it: one command per client run, no newline at the end.
    assert dirs.run(stdin="set_default_active_thread_percentage 25").stdout == "25.0\n"
    assert dirs.run(stdin="set_default_device_pinned_mem_limit 0 35942M").stdout == ""
    replies = dirs.run(
        stdin="get_default_active_thread_percentage\nget_default_device_pinned_mem_limit 0\n"
        "get_default_device_pinned_mem_limit 1\nget_server_list\nnonsense\n"
    )
    assert replies.stdout.splitlines() == ["25.0", "35942M", "N/A", "Unrecognized command: nonsense"]
    log = dirs.log_text()
    assert f"Control {dirs.pid()}] Starting control daemon using socket {dirs.pipe}/control" in log
    assert "Cmd:set_default_active_thread_percentage 25" in log


def test_quit_stops_its_servers_and_removes_its_files(dirs: Dirs) -> None:
    assert dirs.run("-d").returncode == 0
    daemon = dirs.pid()
    assert dirs.run(stdin=f"start_server -uid {os.getuid()}\n").returncode == 0
    (server,) = map(int, dirs.run(stdin="get_server_list\n").stdout.split())
    assert alive(server)
    assert dirs.run(stdin="quit\n").returncode == 0
    _wait_gone(daemon)
    _wait_gone(server)
    assert list(dirs.pipe.iterdir()) == []
    assert dirs.log_text().rstrip().endswith("Exit")


def test_a_killed_daemon_leaves_stale_files_that_the_next_start_takes_over(dirs: Dirs) -> None:
    assert dirs.run("-d").returncode == 0
    killed = dirs.pid()
    os.kill(killed, signal.SIGKILL)
    _wait_gone(killed)
    assert {p.name for p in dirs.pipe.iterdir()} == {"control", "nvidia-cuda-mps-control.pid"}
    assert dirs.run(stdin="get_server_list\n").returncode == 1, "nobody answers on the stale socket"
    assert dirs.run("-d").returncode == 0
    assert dirs.pid() != killed
    assert dirs.run(stdin="get_default_active_thread_percentage\n").stdout == "100.0\n"


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} is still running"
        time.sleep(0.01)
