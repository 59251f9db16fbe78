"""NVIDIA-compatible resources end to end: the agent process against the kubelet simulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from grpclib import GRPCError
from grpclib.const import Status

from nvplugin.core.config import Config
from nvplugin.nvml.fake import FakeNvml, load_layout
from nvplugin.simulate.kubelet import KubeletSimulator
from tests.conftest import nvplugin_process, read_until, running_agent, stop_process

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = ROOT / "nvplugin" / "nvml" / "layouts"

pytestmark = pytest.mark.anyio


async def test_mig_mixed_registers_one_resource_per_profile(
    kubelet: KubeletSimulator, config: Config
) -> None:
    layout = load_layout(str(LAYOUTS / "mig-mixed-2gpu.yaml"))
    async with running_agent(config.with_changes(mig_strategy="mixed"), FakeNvml(layout)) as agent:
        names = sorted(r.name for r in agent.state.resources)
        assert names == [
            "nvidia.com/mig-1g.10gb",
            "nvidia.com/mig-1g.10gb.me",
            "nvidia.com/mig-1g.20gb",
            "nvidia.com/mig-2g.20gb",
            "nvidia.com/mig-3g.40gb",
            "nvidia.com/mig-4g.40gb",
        ]
        for name in names:
            await kubelet.wait_registered(name)
        small = kubelet.plugins["nvidia.com/mig-1g.10gb"]
        assert small.capacity == 3 and all(i.startswith("MIG-") for i in small.devices)
        chosen = next(iter(small.devices))
        response = await kubelet.allocate("nvidia.com/mig-1g.10gb", [chosen])
        assert response.envs == {"NVIDIA_VISIBLE_DEVICES": chosen}
        # Health of a MIG device is its own: marking it leaves its siblings healthy.
        agent.state.mark_unhealthy(chosen, "XID 94 on GI 1")
        await kubelet.wait_devices("nvidia.com/mig-1g.10gb", lambda p: p.allocatable == 2)


async def test_mig_single_with_different_profiles_refuses_to_start(config: Config) -> None:
    from nvplugin.agent import Agent, AgentError

    layout = load_layout(str(LAYOUTS / "mig-mixed-2gpu.yaml"))
    agent = Agent(config.with_changes(mig_strategy="single"), FakeNvml(layout), handle_signals=False)
    with pytest.raises(AgentError, match="single"):
        await agent.run()


def write_config(path: Path, replicas: int, **flags: bool) -> None:
    extra = "".join(f"    {k}: {str(v).lower()}\n" for k, v in flags.items())
    path.write_text(
        "version: v1\n"
        "sharing:\n"
        "  timeSlicing:\n"
        f"{extra}"
        "    resources:\n"
        "      - name: nvidia.com/gpu\n"
        f"        replicas: {replicas}\n"
    )


def spawn(plugin_dir: Path, *args: str) -> subprocess.Popen[str]:
    return nvplugin_process("run", "--kubelet-socket", str(plugin_dir / "kubelet.sock"), *args)


async def stop(proc: subprocess.Popen[str]) -> str:
    return (await stop_process(proc))[2]


async def test_time_slicing_replicas_refusal_and_sighup_reload(plugin_dir: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    write_config(config_file, 2, failRequestsGreaterThanOne=True)
    async with KubeletSimulator(plugin_dir) as kubelet:
        proc = spawn(plugin_dir, "--fake-gpus", "2", "--config-file", str(config_file))
        try:
            plugin = await kubelet.wait_registered("nvidia.com/gpu", timeout=15)
            ids = list(plugin.devices)
            assert len(ids) == 4 and ids[0].endswith("::0") and ids[1].endswith("::1")
            with pytest.raises(GRPCError) as refused:
                await kubelet.allocate("nvidia.com/gpu", ids[:2])
            assert refused.value.status == Status.INVALID_ARGUMENT
            assert "maximum request size for shared resources is 1" in (refused.value.message or "")
            one = await kubelet.allocate("nvidia.com/gpu", ids[:1])
            assert one.envs == {"NVIDIA_VISIBLE_DEVICES": ids[0].split("::")[0]}

            # SIGHUP with 4 replicas: new servers, re-registered, 8 devices.
            write_config(config_file, 4)
            proc.send_signal(signal.SIGHUP)
            plugin = await kubelet.wait_registered("nvidia.com/gpu", count=2, timeout=15)
            assert plugin.capacity == 8
            # A broken file on reload is refused: the running config stays.
            config_file.write_text(
                "version: v1\nsharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 1}]}}\n"
            )
            proc.send_signal(signal.SIGHUP)
            refused = await read_until(proc, "keeping the running configuration")
            assert "replicas" in refused.splitlines()[-1]
            assert len([r for r in kubelet.registrations if r.accepted]) == 2
            assert kubelet.plugins["nvidia.com/gpu"].capacity == 8
        finally:
            await stop(proc)
    assert proc.returncode == 0


async def test_rename_by_default_advertises_gpu_shared(plugin_dir: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    write_config(config_file, 3, renameByDefault=True)
    async with KubeletSimulator(plugin_dir) as kubelet:
        proc = spawn(plugin_dir, "--fake-gpus", "1", "--config-file", str(config_file))
        try:
            plugin = await kubelet.wait_registered("nvidia.com/gpu.shared", timeout=15)
            assert plugin.capacity == 3
            assert "nvidia.com/gpu" not in kubelet.plugins
        finally:
            await stop(proc)


async def test_invalid_config_file_refuses_to_start(plugin_dir: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    write_config(config_file, 1)
    proc = spawn(plugin_dir, "--fake-gpus", "1", "--config-file", str(config_file))
    _, err = await anyio.to_thread.run_sync(proc.communicate)
    assert proc.returncode == 2
    assert f"{config_file}: sharing.timeSlicing.resources[0].replicas: must be >= 2, got 1" in err
    assert "Traceback" not in err
    assert not plugin_dir.exists() or not any(plugin_dir.iterdir())


def test_check_config_command(tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    write_config(config_file, 4)
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    ok = subprocess.run(
        [sys.executable, "-m", "nvplugin", "check-config", str(config_file)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "valid" in ok.stdout and "replicas: 4" in ok.stdout
    config_file.write_text("version: v2\n")
    bad = subprocess.run(
        [sys.executable, "-m", "nvplugin", "check-config", str(config_file)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "version" in bad.stderr and "Traceback" not in bad.stderr
