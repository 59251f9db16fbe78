"""Start-up and signals as an operator meets them, in a real process: unusable kubelet
directories are usage errors, sockets left by a killed agent are cleaned, a second agent is
refused, SIGTERM at any moment is a clean exit, and a burst of SIGHUPs is one reload."""

from __future__ import annotations

import math
import os
import signal
import socket
import time
from pathlib import Path

import anyio
import pytest

from nvplugin.agent import RELOAD_SETTLE
from nvplugin.core.resources import GPU_RESOURCE
from nvplugin.simulate.kubelet import KubeletSimulator
from tests.conftest import nvplugin_process, stop_process

pytestmark = pytest.mark.anyio


def run_to_exit(*args: str) -> tuple[int, str]:
    proc = nvplugin_process("run", "--fake-gpus", "2", *args)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_a_kubelet_socket_inside_a_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    code, err = run_to_exit("--kubelet-socket", str(tmp_path / "file" / "kubelet.sock"))
    assert code == 2, err
    assert f"{tmp_path / 'file'} is not a directory" in err and "Traceback" not in err


def test_a_kubelet_socket_that_is_a_directory_is_a_usage_error(plugin_dir: Path) -> None:
    (plugin_dir / "kubelet.sock").mkdir()
    code, err = run_to_exit("--kubelet-socket", str(plugin_dir / "kubelet.sock"))
    assert code == 2, err
    assert "is a directory: --kubelet-socket must name the kubelet's socket file" in err


def test_a_socket_path_too_long_is_a_usage_error(plugin_dir: Path) -> None:
    deep = plugin_dir / ("d" * 90)
    deep.mkdir()
    code, err = run_to_exit("--kubelet-socket", str(deep / "kubelet.sock"))
    assert code == 2, err
    assert "longer than a unix socket allows (107)" in err and "use a shorter --kubelet-socket" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_kubelet_directory_is_a_usage_error(plugin_dir: Path) -> None:
    plugin_dir.chmod(0o500)
    try:
        code, err = run_to_exit("--kubelet-socket", str(plugin_dir / "kubelet.sock"))
    finally:
        plugin_dir.chmod(0o700)
    assert code == 2, err
    assert f"cannot create sockets in the kubelet's directory {plugin_dir}: permission denied" in err


def dead_socket(path: Path) -> None:
    """A socket file nobody listens on, as a SIGKILLed process leaves it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


async def test_sockets_left_by_a_killed_agent_are_removed_and_others_kept(plugin_dir: Path) -> None:
    ours = plugin_dir / "nvplugin-gpu-4242-0-abcdef.sock"
    theirs = plugin_dir / "other-vendor.sock"
    async with KubeletSimulator(plugin_dir) as kubelet:
        dead_socket(ours)
        dead_socket(theirs)
        proc = nvplugin_process(
            "run", "--fake-gpus", "1", "--kubelet-socket", str(plugin_dir / "kubelet.sock")
        )
        try:
            await kubelet.wait_registered(GPU_RESOURCE, timeout=15)
            assert not ours.exists()
            assert theirs.exists()
        finally:
            code, _, err = await stop_process(proc)
    assert code == 0, err


async def test_a_second_agent_on_the_same_kubelet_is_refused(plugin_dir: Path) -> None:
    socket_flag = ("--kubelet-socket", str(plugin_dir / "kubelet.sock"))
    async with KubeletSimulator(plugin_dir) as kubelet:
        first = nvplugin_process("run", "--fake-gpus", "1", *socket_flag)
        try:
            await kubelet.wait_registered(GPU_RESOURCE, timeout=15)
            second = nvplugin_process("run", "--fake-gpus", "1", *socket_flag)
            _, err = await anyio.to_thread.run_sync(second.communicate)
            assert second.returncode == 1, err
            assert "another nvplugin agent serves the kubelet from" in err
            assert len(kubelet.registrations) == 1  # the first one still serves, undisturbed
        finally:
            code, _, err = await stop_process(first)
    assert code == 0, err


@pytest.mark.parametrize("after", [0.25, 0.5, 1.0])
async def test_sigterm_at_any_moment_of_start_up_is_a_clean_exit(plugin_dir: Path, after: float) -> None:
    async with KubeletSimulator(plugin_dir):
        proc = nvplugin_process(
            "run", "--fake-gpus", "2", "--kubelet-socket", str(plugin_dir / "kubelet.sock")
        )
        await anyio.sleep(after)  # the moment the signal lands, not a timing assertion
        code, _, err = await stop_process(proc)
    assert code == 0, err
    assert not [p for p in os.listdir(plugin_dir) if p.startswith("nvplugin-")]


async def test_a_burst_of_sighups_is_coalesced(plugin_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"

    def replicas(n: int) -> None:
        config.write_text(
            "version: v1\nsharing:\n  timeSlicing:\n    resources:\n"
            f"      - name: nvidia.com/gpu\n        replicas: {n}\n"
        )

    replicas(2)
    async with KubeletSimulator(plugin_dir) as kubelet:
        proc = nvplugin_process(
            "run", "--fake-gpus", "2", "--kubelet-socket", str(plugin_dir / "kubelet.sock"),
            "--config-file", str(config),
        )  # fmt: skip
        try:
            await kubelet.wait_registered(GPU_RESOURCE, timeout=15)
            burst_started = time.monotonic()
            for _ in range(100):
                proc.send_signal(signal.SIGHUP)
                await anyio.sleep(0.005)
            burst = time.monotonic() - burst_started
            # A last reload with a visible change: once the kubelet sees it, every earlier
            # SIGHUP has been handled (reloads run one at a time, in order).
            replicas(3)
            proc.send_signal(signal.SIGHUP)
            await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.capacity == 6, timeout=15)
            registrations = len(kubelet.registrations)
        finally:
            code, _, err = await stop_process(proc)
    assert code == 0, err
    # 101 SIGHUPs: the first registration, then at most one reload per settle period of the
    # burst (however long this machine took to send it), and the last one; not one per signal.
    assert 2 <= registrations <= 3 + math.ceil(burst / RELOAD_SETTLE), (registrations, burst)
