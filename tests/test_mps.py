"""MPS sharing end to end: the agent on fake GPUs runs one control daemon per MPS-shared resource
(the fake nvidia-cuda-mps-control, real processes), the kubelet simulator sees its resource go
Unhealthy while the daemon is down, and Allocate answers through the real gRPC path."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from grpclib import GRPCError

from nvplugin.configload import ConfigSource, load
from nvplugin.core.config import Config, ReplicatedResource, ReplicatedResources, Sharing
from nvplugin.core.mps import CONTAINER_ROOT
from nvplugin.core.resources import GPU_RESOURCE, build_resources
from nvplugin.mps import MpsDaemons, MpsError, fake_control_command, find_control_command
from nvplugin.nvml import open_backend
from nvplugin.nvml.discovery import discover
from nvplugin.simulate.kubelet import KubeletSimulator
from nvplugin.state import NodeState
from nvplugin.testing.apiserver import FakeApiServer
from nvplugin.testing.driverroot import make_driver_root
from tests.conftest import eventually, fake_nvml, running_agent

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        os.path.isdir(CONTAINER_ROOT),
        reason=f"{CONTAINER_ROOT} exists here: the agent would use it as its MPS root",
    ),
]

MIB = 1024 * 1024


@pytest.fixture
def mps_root() -> Iterator[Path]:
    # Short: the daemon's control socket lives three levels down.
    root = Path(tempfile.mkdtemp(prefix="nvp-mps-", dir="/tmp"))
    yield root
    for pid_file in root.glob("*/*/pipe/*.pid"):  # a test that failed half-way
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def mps_config(config: Config, root: Path, replicas: int = 4, **changes: object) -> Config:
    shared = ReplicatedResources(
        fail_requests_greater_than_one=True, resources=(ReplicatedResource(GPU_RESOURCE, replicas),)
    )
    return config.with_changes(mps_root=str(root), sharing=Sharing(mps=shared), **changes)


class Daemon:
    """The control daemon of one resource, as found on disk."""

    def __init__(self, root: Path, resource: str = GPU_RESOURCE) -> None:
        self.dir = root / resource
        self.pipe = self.dir / "pipe"

    @property
    def started(self) -> bool:
        return (self.dir / ".started").exists()

    def pid(self) -> int:
        return int((self.pipe / "nvidia-cuda-mps-control.pid").read_text())

    def running_other_than(self, old: int) -> bool:
        """A daemon other than `old` runs with its settings made (it may be mid-restart now)."""
        try:
            pid = self.pid()
        except (FileNotFoundError, ValueError):
            return False
        return pid != old and alive(pid) and self.started

    def environ(self) -> dict[str, str]:
        raw = Path(f"/proc/{self.pid()}/environ").read_bytes()
        return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)

    async def ask(self, command: str) -> str:
        """Through the control client, as an admin would: `echo COMMAND | nvidia-cuda-mps-control`."""
        result = await anyio.run_process(
            fake_control_command(Config()),
            input=command.encode() + b"\n",
            env={**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(self.pipe)},
        )
        return result.stdout.decode().strip()


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def test_a_daemon_per_shared_resource_with_its_env_and_nvidias_settings(
    kubelet: KubeletSimulator, config: Config, mps_root: Path
) -> None:
    nvml = fake_nvml(2)
    async with running_agent(mps_config(config, mps_root), nvml) as agent:
        daemon = Daemon(mps_root)
        await eventually(lambda: daemon.started, what="the daemon's .started file")
        uuids = [g.uuid for g in agent.state.inventory.gpus]
        env = daemon.environ()
        assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(mps_root / "nvidia.com/gpu/pipe")
        assert env["CUDA_MPS_LOG_DIRECTORY"] == str(mps_root / "nvidia.com/gpu/log")
        assert env["CUDA_VISIBLE_DEVICES"] == ",".join(uuids)
        # 4 replicas per GPU: a quarter of the threads and of each GPU's memory by default.
        assert await daemon.ask("get_default_active_thread_percentage") == "25.0"
        limit = f"{agent.state.inventory.gpus[1].memory_bytes // 4 // MIB}M"
        assert await daemon.ask("get_default_device_pinned_mem_limit 1") == limit
        log = (daemon.dir / "log/control.log").read_text()
        commands = [line.partition("Cmd:")[2] for line in log.splitlines() if "Cmd:" in line]
        assert commands[:3] == [
            f"set_default_device_pinned_mem_limit 0 {agent.state.inventory.gpus[0].memory_bytes // 4 // MIB}M",
            f"set_default_device_pinned_mem_limit 1 {limit}",
            "set_default_active_thread_percentage 25",
        ]
        plugin = await kubelet.wait_registered(GPU_RESOURCE)
        assert plugin.allocatable == 8


async def test_allocate_through_grpc_gives_the_pipe_directory_and_mounts(
    kubelet: KubeletSimulator, config: Config, mps_root: Path
) -> None:
    async with running_agent(mps_config(config, mps_root), fake_nvml(2)) as agent:
        plugin = await kubelet.wait_registered(GPU_RESOURCE)
        uuid = agent.state.inventory.gpus[1].uuid
        response = await kubelet.allocate(GPU_RESOURCE, [f"{uuid}::3"])
        assert response.envs == {
            "CUDA_MPS_PIPE_DIRECTORY": "/mps/nvidia.com/gpu/pipe",
            "NVIDIA_VISIBLE_DEVICES": uuid,
        }
        assert [(m.container_path, m.host_path, m.read_only) for m in response.mounts] == [
            ("/mps/nvidia.com/gpu/pipe", f"{mps_root}/nvidia.com/gpu/pipe", False),
            ("/dev/shm", f"{mps_root}/shm", False),
        ]
        assert response.devices == [] and response.annotations == {}
        with pytest.raises(GRPCError, match=r"sharing\.mps\.failRequestsGreaterThanOne is true"):
            await kubelet.allocate(GPU_RESOURCE, sorted(plugin.devices)[:2])


async def test_a_killed_daemon_makes_its_gpus_unhealthy_until_it_is_back(
    kubelet: KubeletSimulator, config: Config, mps_root: Path
) -> None:
    async with running_agent(mps_config(config, mps_root), fake_nvml(2)) as agent:
        daemon = Daemon(mps_root)
        await eventually(lambda: daemon.started)
        await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.allocatable == 8)
        first = daemon.pid()
        os.kill(first, signal.SIGKILL)
        await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.capacity == 8 and p.allocatable == 0)
        reasons = set(agent.state.unhealthy.values())
        assert reasons == {f"MPS control daemon for nvidia.com/gpu (pid {first}) exited; restarting it"}
        await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.allocatable == 8, timeout=10)
        second = daemon.pid()
        assert second != first and alive(second)
        assert await daemon.ask("get_default_active_thread_percentage") == "25.0"


async def test_daemon_marks_and_xid_marks_never_clear_each_other(
    kubelet: KubeletSimulator, config: Config, mps_root: Path
) -> None:
    async with running_agent(mps_config(config, mps_root), fake_nvml(2)) as agent:
        daemon = Daemon(mps_root)
        await eventually(lambda: daemon.started)
        sick = agent.state.inventory.gpus[0].uuid
        agent.state.mark_unhealthy(sick, "XID 79 on GPU 0", 79)
        await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.allocatable == 4)
        first = daemon.pid()
        os.kill(first, signal.SIGKILL)
        await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.allocatable == 0)
        assert agent.state.unhealthy[sick].startswith("XID 79 on GPU 0; MPS control daemon")
        # Back: the daemon clears its own mark only.
        await eventually(lambda: daemon.running_other_than(first), within=10)
        await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.allocatable == 4)
        assert dict(agent.state.unhealthy) == {sick: "XID 79 on GPU 0"}


async def test_shutdown_sends_quit_and_leaves_nothing_behind(
    config: Config, mps_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nvplugin.mps")
    daemon = Daemon(mps_root)
    async with running_agent(mps_config(config, mps_root), fake_nvml(1)):
        await eventually(lambda: daemon.started)
        pid = daemon.pid()
        # An MPS server, as a client's first CUDA call would start one.
        await daemon.ask(f"start_server -uid {os.getuid()}")
        (server,) = map(int, (await daemon.ask("get_server_list")).split())
        assert alive(server)
    # A killed daemon would have left its server running: it quit, and stopped it.
    await eventually(lambda: not alive(pid) and not alive(server), what="the daemon and its server gone")
    assert "killing it" not in caplog.text
    assert "MPS control daemon for nvidia.com/gpu stopped" in caplog.text
    # The pipe directory stays (running pods have it mounted), empty; the rest is gone.
    assert list(daemon.pipe.iterdir()) == []
    assert sorted(p.name for p in daemon.dir.iterdir()) == ["pipe"]


async def test_a_daemon_left_by_an_earlier_run_is_asked_to_quit_and_its_leftovers_cleared(
    config: Config, mps_root: Path
) -> None:
    daemon = Daemon(mps_root)
    daemon.pipe.mkdir(parents=True)
    env = {
        **os.environ,
        "CUDA_MPS_PIPE_DIRECTORY": str(daemon.pipe),
        "CUDA_MPS_LOG_DIRECTORY": str(daemon.dir / "log"),
    }
    started = await anyio.run_process([*fake_control_command(config), "-d"], env=env)
    assert started.returncode == 0
    leftover = daemon.pid()
    (daemon.pipe / "control_lock").write_text("")  # what else an earlier daemon may leave
    async with running_agent(mps_config(config, mps_root), fake_nvml(1)):
        await eventually(lambda: daemon.running_other_than(leftover))
        assert not alive(leftover)
        assert sorted(p.name for p in daemon.pipe.iterdir()) == ["control", "nvidia-cuda-mps-control.pid"]


async def test_a_pid_file_naming_another_process_is_stale_whatever_answers_on_the_pipe(
    config: Config, mps_root: Path
) -> None:
    # After a container restart, the PID an earlier daemon wrote belongs to someone else (here:
    # this test). Even with something answering `quit` on the pipe, that process is never
    # waited for (it would never quit) nor signalled.
    daemon = Daemon(mps_root)
    daemon.pipe.mkdir(parents=True)
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(daemon.pipe), "CUDA_MPS_LOG_DIRECTORY": str(mps_root)}
    assert (await anyio.run_process([*fake_control_command(config), "-d"], env=env)).returncode == 0
    answering = daemon.pid()
    (daemon.pipe / "nvidia-cuda-mps-control.pid").write_text(f"{os.getpid()}\n")
    try:
        async with running_agent(mps_config(config, mps_root), fake_nvml(1)) as agent:
            await eventually(lambda: daemon.running_other_than(os.getpid()) and daemon.pid() != answering)
            assert not agent.state.unhealthy
    finally:
        os.kill(answering, signal.SIGKILL)


async def test_a_daemon_that_cannot_start_is_retried_and_its_gpus_stay_unhealthy(
    config: Config, mps_root: Path, tmp_path: Path
) -> None:
    # A control binary that fails as a driver without GPUs would, then works.
    binary = tmp_path / "nvidia-cuda-mps-control"
    binary.write_text("#!/bin/sh\necho 'cannot open /dev/nvidiactl' >&2\nexit 1\n")
    binary.chmod(0o755)
    nvml = fake_nvml(2)
    nvml.init()
    inventory = discover(nvml)
    cfg = mps_config(config, mps_root)
    state = NodeState(inventory, build_resources(inventory, cfg))
    daemons = MpsDaemons(state, lambda: cfg, lambda _: (str(binary),), container_root=str(tmp_path / "none"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemons.run)
        await eventually(lambda: len(state.unhealthy) == 2)
        reason = next(iter(state.unhealthy.values()))
        assert reason.startswith("MPS control daemon for nvidia.com/gpu could not start: ")
        assert "-d with CUDA_MPS_PIPE_DIRECTORY=" in reason
        assert reason.endswith("failed (exit code 1): cannot open /dev/nvidiactl")
        fake = fake_control_command(cfg)
        binary.write_text(f'#!/bin/sh\nexec {fake[0]} {fake[1]} "$@"\n')
        await eventually(lambda: not state.unhealthy, within=10, what="the daemon started on a retry")
        assert Daemon(mps_root).started
        tg.cancel_scope.cancel()
    assert list(Daemon(mps_root).pipe.iterdir()) == []


async def test_reloads_start_restart_and_stop_daemons(
    kubelet: KubeletSimulator, plugin_dir: Path, mps_root: Path, tmp_path: Path
) -> None:
    config_file = tmp_path / "config.yaml"
    time_slicing = "  timeSlicing:\n    resources:\n      - name: nvidia.com/gpu\n        replicas: 4\n"

    def write(sharing: str) -> None:
        config_file.write_text(f"version: v1\nflags:\n  mpsRoot: {mps_root}\nsharing:\n{sharing}")

    def mps(replicas: int) -> str:
        return f"  mps:\n    resources:\n      - name: nvidia.com/gpu\n        replicas: {replicas}\n"

    # A node set up for MPS (an MPS root) that starts without it, as a node-label config
    # switch would find it.
    write(time_slicing)
    flags: dict[str, object] = {
        "config_file": str(config_file),
        "fake_gpus": "2",
        "kubelet_socket": str(plugin_dir / "kubelet.sock"),
        "metrics_address": "off",
    }
    cfg = load(flags, {}).config
    daemon = Daemon(mps_root)
    async with running_agent(cfg, open_backend(cfg), config_source=ConfigSource(flags)) as agent:
        await kubelet.wait_registered(GPU_RESOURCE)
        assert not daemon.dir.exists()
        write(mps(2))
        assert await agent.reload()
        await eventually(lambda: daemon.started, what="a daemon once the resource is MPS-shared")
        first = daemon.pid()
        assert await daemon.ask("get_default_active_thread_percentage") == "50.0"
        plugin = await kubelet.wait_registered(GPU_RESOURCE, count=2)
        response = await kubelet.allocate(GPU_RESOURCE, [next(iter(plugin.devices))])
        assert response.envs["CUDA_MPS_PIPE_DIRECTORY"] == "/mps/nvidia.com/gpu/pipe"
        write(mps(4))
        assert await agent.reload()
        await eventually(lambda: daemon.running_other_than(first), what="a daemon with the new limits")
        assert not alive(first)
        assert await daemon.ask("get_default_active_thread_percentage") == "25.0"
        second = daemon.pid()
        write(time_slicing)
        assert await agent.reload()
        await eventually(
            lambda: not alive(second), what="the daemon of a resource no longer MPS-shared stopped"
        )
        await eventually(lambda: not list(daemon.pipe.iterdir()))
        plugin = await kubelet.wait_registered(GPU_RESOURCE, count=4)
        response = await kubelet.allocate(GPU_RESOURCE, [next(iter(plugin.devices))])
        assert "CUDA_MPS_PIPE_DIRECTORY" not in response.envs and response.mounts == []


async def test_an_mps_node_is_labelled_as_nvidia_labels_it(
    kubelet: KubeletSimulator, config: Config, mps_root: Path, tmp_path: Path
) -> None:
    api = FakeApiServer(bookmark_interval=0.2)
    async with api:
        api.add_node("gpu-node")
        cfg = mps_config(
            config,
            mps_root,
            labels=True,
            node_name="gpu-node",
            kubeconfig=str(api.write_kubeconfig(tmp_path / "kubeconfig")),
        )
        async with running_agent(cfg, fake_nvml(2)):
            await eventually(lambda: "nvidia.com/gpu.product" in api.labels("gpu-node"), within=15)
            labels = api.labels("gpu-node")
            await eventually(lambda: Daemon(mps_root).started)
    assert labels["nvidia.com/gpu.sharing-strategy"] == "mps"
    assert labels["nvidia.com/mps.capable"] == "true"
    assert labels["nvidia.com/gpu.replicas"] == "4"
    assert labels["nvidia.com/gpu.count"] == "2"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3-SHARED"


# --- finding NVIDIA's control binary


def test_the_control_binary_is_found_under_the_container_driver_root_first(tmp_path: Path) -> None:
    host = make_driver_root(tmp_path / "host", "580.95.05")
    mounted = make_driver_root(tmp_path / "mounted", "580.95.05")
    config = Config(nvidia_driver_root=str(host.root), container_driver_root=str(mounted.root))
    assert find_control_command(config) == (str(mounted.path("/usr/bin/nvidia-cuda-mps-control")),)
    without_mount = config.with_changes(container_driver_root=str(tmp_path / "absent"))
    assert find_control_command(without_mount) == (str(host.path("/usr/bin/nvidia-cuda-mps-control")),)


def test_a_symlinked_control_binary_resolves_inside_the_driver_root(tmp_path: Path) -> None:
    root = make_driver_root(tmp_path / "root", "580.95.05")
    binary = root.path("/usr/bin/nvidia-cuda-mps-control")
    real = root.path("/opt/nvidia/bin/nvidia-cuda-mps-control")
    real.parent.mkdir(parents=True)
    binary.rename(real)
    binary.symlink_to("/opt/nvidia/bin/nvidia-cuda-mps-control")  # absolute: inside the root
    config = Config(container_driver_root=str(root.root))
    assert find_control_command(config) == (str(real),)


def test_a_missing_control_binary_names_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    config = Config(nvidia_driver_root=str(tmp_path / "host"), container_driver_root=str(tmp_path / "absent"))
    with pytest.raises(MpsError) as err:
        find_control_command(config)
    message = str(err.value)
    assert message.startswith("nvidia-cuda-mps-control not found: looked in ")
    for where in (
        f"{tmp_path}/host/usr/bin",
        f"{tmp_path}/host/sbin",
        "/usr/local/nvidia/bin",
        f"{tmp_path}/bin",
    ):
        assert where in message
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in message
