"""The agent as a process: flags, exit codes, signals, and what it tells the user."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import anyio
import pytest
import yaml

from nvplugin.core.resources import GPU_RESOURCE
from nvplugin.simulate.kubelet import KubeletSimulator
from tests.conftest import nvplugin_process as nvplugin
from tests.conftest import read_until, stop_process

ROOT = Path(__file__).resolve().parent.parent


def run_to_end(*args: str, env: dict[str, str] | None = None, timeout: float = 20) -> tuple[int, str, str]:
    proc = nvplugin(*args, env=env)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--fail-on-init-error=maybe"], {}, "--fail-on-init-error: expected true or false, got 'maybe'"),
        (["--fake-gpus", "99"], {}, "--fake-gpus: expected a GPU count from 0 to 64, got 99"),
        (["--device-id-strategy", "serial"], {}, "expected one of uuid, index; got 'serial'"),
        (
            [],
            {"FAIL_ON_INIT_ERROR": "sometimes"},
            "environment variable FAIL_ON_INIT_ERROR: expected true or false",
        ),
        (["--fake-gpus", "/nonexistent/layout.yaml"], {}, "cannot read the fake GPU layout"),
    ],
)
def test_bad_values_exit_2_before_any_socket(
    args: list[str], env: dict[str, str], expected: str, plugin_dir: Path
) -> None:
    code, _, err = run_to_end("run", "--kubelet-socket", str(plugin_dir / "kubelet.sock"), *args, env=env)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err
    assert list(plugin_dir.iterdir()) == []


def test_help_for_every_command() -> None:
    for command in ([], ["run"], ["simulate"]):
        code, out, _ = run_to_end(*command, "--help")
        assert code == 0 and "usage: nvplugin" in out
    code, out, _ = run_to_end("run", "--help")
    assert "KUBELET_SOCKET" in out and "--fake-gpus" in out and "FAIL_ON_INIT_ERROR" in out


def test_missing_nvml_library_fails_with_a_hint(plugin_dir: Path, tmp_path: Path) -> None:
    layout = tmp_path / "broken.json"
    layout.write_text(json.dumps({"count": 2, "faults": {"library": "missing"}}))
    code, _, err = run_to_end(
        "run", "--kubelet-socket", str(plugin_dir / "kubelet.sock"), "--fake-gpus", str(layout)
    )
    assert code == 1
    assert "libnvidia-ml.so.1" in err and "container toolkit" in err and "runtime" in err
    assert "--fail-on-init-error=false" in err
    assert "Traceback" not in err


@pytest.mark.anyio
async def test_missing_nvml_without_fail_on_init_error_registers_nothing(
    plugin_dir: Path, tmp_path: Path
) -> None:
    layout = tmp_path / "broken.json"
    layout.write_text(json.dumps({"count": 2, "faults": {"library": "missing"}}))
    async with KubeletSimulator(plugin_dir) as kubelet:
        proc = nvplugin(
            "run",
            "--fake-gpus",
            str(layout),
            env={"KUBELET_SOCKET": str(plugin_dir / "kubelet.sock"), "FAIL_ON_INIT_ERROR": "false"},
        )
        try:
            # Like NVIDIA's plugin: a resource without devices is not registered.
            early = await read_until(proc, "has no devices: not registered")
        finally:
            code, _, err = await stop_process(proc)
        assert kubelet.registrations == []
    assert code == 0
    err = early + err
    assert "running with zero devices" in err
    assert "no NVML: XID health checks are off" in err and "crashed" not in err


@pytest.mark.anyio
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_within_a_second_and_removes_sockets(plugin_dir: Path, signum: int) -> None:
    async with KubeletSimulator(plugin_dir) as kubelet:
        proc = nvplugin("run", "--fake-gpus", "4", "--kubelet-socket", str(plugin_dir / "kubelet.sock"))
        try:
            plugin = await kubelet.wait_registered(GPU_RESOURCE, timeout=15)
            assert plugin.capacity == 4
        except BaseException:
            proc.kill()
            raise
        await anyio.sleep(1.5)  # past start-up: the directory watcher's thread is in its wait
        started = time.monotonic()
        proc.send_signal(signum)
        await anyio.to_thread.run_sync(proc.wait)
        elapsed = time.monotonic() - started
        await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.stream_ended)
    assert proc.returncode == 0
    assert elapsed < 1.0, f"took {elapsed:.2f} s"
    assert [p.name for p in plugin_dir.iterdir()] == []


def test_simulate_once_tells_what_the_kubelet_sees() -> None:
    code, out, err = run_to_end("simulate", "--once", "--fake-gpus", "2", timeout=30)
    assert code == 0, err
    assert "registered nvidia.com/gpu" in out
    assert "capacity 2, allocatable 2" in out
    assert "env NVIDIA_VISIBLE_DEVICES=GPU-" in out


def test_simulate_narrates_a_refusal_as_the_kubelet_meets_it(tmp_path: Path) -> None:
    """The shipped time-slicing example refuses requests for more than one replica."""
    example = yaml.safe_load((ROOT / "manifests/examples/time-slicing-config.yaml").read_text())
    config = tmp_path / "config.yaml"
    config.write_text(example["data"]["config.yaml"])
    code, out, err = run_to_end("simulate", "--once", "--fake-gpus", "2", "--config-file", str(config))
    assert code == 0, err
    assert "Traceback" not in out + err
    assert "The plugin refuses the allocation, so a real kubelet fails the pod's admission" in out
    assert "maximum request size for shared resources is 1" in out
    assert "A pod that asks for one nvidia.com/gpu instead" in out


@pytest.mark.anyio
async def test_simulate_stops_cleanly_on_sigterm_and_leaves_nothing() -> None:
    proc = nvplugin("simulate", "--fake-gpus", "2")
    try:
        out = await read_until(proc, "Running.", stream="stdout")
    finally:
        code, rest, err = await stop_process(proc)
    assert code == 0, err
    workspace = Path(out.split("embedded kubelet in ", 1)[1].split()[0]).parent
    assert not workspace.exists()
    hints = [line.strip() for line in (out + rest).splitlines() if "inject-xid" in line]
    assert hints, out + rest
    hint = hints[0]
    assert hint.startswith(f"{sys.executable} -m nvplugin inject-xid --control {workspace}")


@pytest.mark.anyio
async def test_the_stand_in_kubelet_command_serves_an_agent(plugin_dir: Path) -> None:
    kubelet = nvplugin("kubelet", "--dir", str(plugin_dir))
    agent = None
    try:
        await read_until(kubelet, "Start an agent against it", stream="stdout")
        agent = nvplugin("run", "--fake-gpus", "2", "--kubelet-socket", str(plugin_dir / "kubelet.sock"))
        await read_until(kubelet, "capacity 2, allocatable 2", stream="stdout")
        kubelet.send_signal(signal.SIGHUP)  # restarts like a kubelet: the agent registers again
        await read_until(kubelet, "SIGHUP: restarting", stream="stdout")
        await read_until(kubelet, "capacity 2, allocatable 2", stream="stdout")
    finally:
        if agent is not None:
            agent_code, _, agent_err = await stop_process(agent)
        code, _, err = await stop_process(kubelet)
    assert code == 0, err
    assert agent_code == 0, agent_err
    assert not (plugin_dir / "kubelet.sock").exists()


@pytest.mark.anyio
async def test_inject_xid_from_another_process_marks_the_gpu_unhealthy(
    plugin_dir: Path, tmp_path: Path
) -> None:
    control = str(tmp_path / "fake.sock")
    async with KubeletSimulator(plugin_dir) as kubelet:
        proc = nvplugin(
            "run",
            "--fake-gpus",
            "2",
            "--kubelet-socket",
            str(plugin_dir / "kubelet.sock"),
            "--fake-control",
            control,
        )
        try:
            plugin = await kubelet.wait_registered(GPU_RESOURCE, timeout=15)
            first = next(iter(plugin.devices))
            for _ in range(100):  # the control socket starts right after registration
                if os.path.exists(control):
                    break
                await anyio.sleep(0.05)
            code, _out, err = await anyio.to_thread.run_sync(
                lambda: run_to_end("inject-xid", "--gpu", "0", "--xid", "79", "--control", control)
            )
            assert code == 0, err
            await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.devices[first] == "Unhealthy", timeout=5)
            assert kubelet.plugins[GPU_RESOURCE].allocatable == 1
            # No agent listening: a clear message, not a traceback.
            code, _, err = await anyio.to_thread.run_sync(
                lambda: run_to_end(
                    "inject-xid", "--gpu", "0", "--xid", "79", "--control", str(tmp_path / "none.sock")
                )
            )
            assert code != 0 and "Traceback" not in err and "none.sock" in err
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await anyio.to_thread.run_sync(proc.communicate)
    assert "XID 79" in err
