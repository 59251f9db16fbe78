"""The agent against the kubelet simulator on real unix sockets: the protocol doc's scenarios."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status

from nvplugin.api import v1beta1 as api
from nvplugin.core.config import Config
from nvplugin.core.resources import GPU_RESOURCE
from nvplugin.plugin.server import PLUGIN_OPTIONS
from nvplugin.simulate.kubelet import KubeletSimulator, is_extended_resource_name
from tests.conftest import eventually, fake_nvml, running_agent

pytestmark = pytest.mark.anyio


def sockets(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.is_socket()}


async def test_register_list_allocate(kubelet: KubeletSimulator, config: Config) -> None:
    nvml = fake_nvml(4)
    async with running_agent(config, nvml) as agent:
        plugin = await kubelet.wait_registered(GPU_RESOURCE)
        uuids = [g.uuid for g in nvml.layout.gpus]
        assert list(plugin.devices) == uuids
        assert plugin.capacity == 4 and plugin.allocatable == 4
        registration = kubelet.registrations[-1].request
        assert registration.version == "v1beta1"
        assert registration.options == PLUGIN_OPTIONS == plugin.options
        assert not registration.options.pre_start_required
        assert registration.options.get_preferred_allocation_available

        response = await kubelet.allocate(GPU_RESOURCE, uuids[1:3])
        assert response.envs == {"NVIDIA_VISIBLE_DEVICES": f"{uuids[1]},{uuids[2]}"}
        assert agent.ready

        pre = await plugin.stub.pre_start_container(api.PreStartContainerRequest(devices_ids=uuids[:1]))
        assert pre == api.PreStartContainerResponse()


async def test_numa_node_is_sent_only_when_known(kubelet: KubeletSimulator, config: Config) -> None:
    from nvplugin.nvml.fake import FakeLayout, FakeNvml, parse_layout

    layout = parse_layout({"gpus": [{"numaNode": 1}, {"numaNode": -1}]})
    async with running_agent(config, FakeNvml(layout)):
        plugin = await kubelet.wait_registered(GPU_RESOURCE)
        assert [plugin.numa[g.uuid] for g in layout.gpus] == [[1], []]
    assert isinstance(layout, FakeLayout)


async def test_health_change_sends_new_full_list(kubelet: KubeletSimulator, config: Config) -> None:
    async with running_agent(config) as agent:
        plugin = await kubelet.wait_registered(GPU_RESOURCE)
        first = list(plugin.devices)
        updates = plugin.updates
        agent.state.mark_unhealthy(first[0], "test: XID 79")
        await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.devices[first[0]] == "Unhealthy")
        assert list(plugin.devices) == first, "every message carries the full list"
        assert plugin.allocatable == 3 and plugin.capacity == 4
        assert plugin.updates == updates + 1

        with pytest.raises(GRPCError) as refused:
            await kubelet.allocate(GPU_RESOURCE, [first[0]])
        assert refused.value.status == Status.INVALID_ARGUMENT
        assert first[0] in refused.value.message and "XID 79" in refused.value.message

        agent.state.mark_healthy(first[0])
        await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.allocatable == 4)


async def test_allocate_refuses_unknown_and_unhealthy_ids(kubelet: KubeletSimulator, config: Config) -> None:
    async with running_agent(config) as agent:
        plugin = await kubelet.wait_registered(GPU_RESOURCE)
        ids = list(plugin.devices)
        agent.state.mark_unhealthy(ids[2], "lost")
        await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.allocatable == 3)
        with pytest.raises(GRPCError) as refused:
            await kubelet.allocate(GPU_RESOURCE, [ids[0], "GPU-nope", ids[0], ids[2]])
        message = refused.value.message or ""
        assert refused.value.status == Status.INVALID_ARGUMENT
        assert "1 unknown device ID (not advertised by this plugin): 'GPU-nope'" in message
        assert f"1 unhealthy device: '{ids[2]}' (lost)" in message
        # An empty container request is refused too, not answered with nothing.
        with pytest.raises(GRPCError) as empty:
            await kubelet.allocate(GPU_RESOURCE, [])
        assert empty.value.status == Status.INVALID_ARGUMENT
        # Duplicates count once, as with NVIDIA's plugin.
        answer = await kubelet.allocate(GPU_RESOURCE, [ids[1], ids[0], ids[1]])
        assert answer.envs["NVIDIA_VISIBLE_DEVICES"] == f"{ids[1]},{ids[0]}"


async def test_preferred_allocation_sizes_and_must_include(kubelet: KubeletSimulator, config: Config) -> None:
    async with running_agent(config, fake_nvml(8)):
        plugin = await kubelet.wait_registered(GPU_RESOURCE)
        ids = list(plugin.devices)
        for size in range(1, len(ids) + 1):
            for must in ([], ids[-1:], ids[3:5]):
                if len(must) > size:
                    continue
                answer = await kubelet.preferred(GPU_RESOURCE, ids, must, size)
                assert len(answer) == size and len(set(answer)) == size
                assert set(must) <= set(answer) <= set(ids)
        # Asking for more than available returns what there is, never an error.
        assert sorted(await kubelet.preferred(GPU_RESOURCE, ids[:2], [], 5)) == sorted(ids[:2])


async def test_kubelet_restart_reregisters_on_a_fresh_socket(
    kubelet: KubeletSimulator, config: Config, plugin_dir: Path
) -> None:
    async with running_agent(config) as agent:
        await kubelet.wait_registered(GPU_RESOURCE)
        first_endpoint = kubelet.registrations[-1].request.endpoint
        for round_ in range(2, 5):
            await kubelet.restart()
            plugin = await kubelet.wait_registered(GPU_RESOURCE, count=round_)
            assert plugin.allocatable == 4
        endpoints = [r.request.endpoint for r in kubelet.registrations]
        assert len(set(endpoints)) == len(endpoints) == 4, "a fresh socket name per start"
        assert first_endpoint not in sockets(plugin_dir)
        # Only the current socket is left behind, beside kubelet.sock.
        assert sockets(plugin_dir) == {"kubelet.sock", endpoints[-1]}
        assert agent.generation == 4


async def test_own_socket_removed_triggers_reregistration(
    kubelet: KubeletSimulator, config: Config, plugin_dir: Path
) -> None:
    async with running_agent(config):
        await kubelet.wait_registered(GPU_RESOURCE)
        endpoint = kubelet.registrations[-1].request.endpoint
        (plugin_dir / endpoint).unlink()
        await kubelet.wait_registered(GPU_RESOURCE, count=2)
        assert kubelet.registrations[-1].request.endpoint != endpoint


async def test_waits_for_a_missing_kubelet_socket(config: Config, plugin_dir: Path) -> None:
    async with running_agent(config) as agent:
        assert agent.kubelet is not None
        with anyio.fail_after(5):
            await agent.kubelet.first_attempt.wait()  # set once it waits for kubelet.sock
        assert not agent.ready and agent.generation == 0
        async with KubeletSimulator(plugin_dir) as kubelet:
            plugin = await kubelet.wait_registered(GPU_RESOURCE, timeout=3)
            assert plugin.capacity == 4


async def test_refused_registration_is_retried(
    config: Config, plugin_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A kubelet that refuses (here: it cannot dial back in time) gets asked again with backoff."""
    async with KubeletSimulator(plugin_dir, dial_timeout=2.0) as kubelet:
        original = kubelet._handle_register
        refusals = 0

        async def refuse_twice(request: api.RegisterRequest) -> None:
            nonlocal refusals
            if refusals < 2:
                refusals += 1
                raise GRPCError(Status.UNKNOWN, "simulated refusal: kubelet busy")
            await original(request)

        kubelet._handle_register = refuse_twice  # type: ignore[method-assign]
        async with running_agent(config) as agent:
            await kubelet.wait_registered(GPU_RESOURCE, timeout=5)
            assert refusals == 2 and agent.ready
    assert "simulated refusal: kubelet busy" in caplog.text


async def test_plugin_restart_and_stream_end(
    kubelet: KubeletSimulator, config: Config, plugin_dir: Path
) -> None:
    async with running_agent(config):
        plugin = await kubelet.wait_registered(GPU_RESOURCE)
        assert plugin.allocatable == 4
    # The agent stopped: its stream ended, so the kubelet counts nothing allocatable, and its
    # socket is gone.
    await kubelet.wait_devices(GPU_RESOURCE, lambda p: p.stream_ended)
    assert kubelet.plugins[GPU_RESOURCE].allocatable == 0
    assert sockets(plugin_dir) == {"kubelet.sock"}
    async with running_agent(config):
        plugin = await kubelet.wait_registered(GPU_RESOURCE, count=2)
        assert plugin.allocatable == 4 and not plugin.stream_ended


async def test_kubelet_and_plugin_restart_together(
    kubelet: KubeletSimulator, config: Config, plugin_dir: Path
) -> None:
    async with running_agent(config):
        await kubelet.wait_registered(GPU_RESOURCE)
    await kubelet.restart()
    async with running_agent(config):
        plugin = await kubelet.wait_registered(GPU_RESOURCE, count=2)
        assert plugin.allocatable == 4


async def test_shutdown_ends_open_streams_quickly(kubelet: KubeletSimulator, config: Config) -> None:
    # Extra ListAndWatch streams besides the kubelet's: all must end on stop.
    async with running_agent(config) as agent:
        plugin = await kubelet.wait_registered(GPU_RESOURCE)
        server = agent.servers[0]
        channel = Channel(path=server.socket_path)
        stream_ended = anyio.Event()

        async def watch() -> None:
            async for _ in api.DevicePluginStub(channel).list_and_watch(api.Empty()):
                pass
            stream_ended.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await eventually(lambda: server.servicer.open_streams == 2)
            started = anyio.current_time()
            await server.stop()
            with anyio.fail_after(1):
                await stream_ended.wait()
            assert anyio.current_time() - started < 1.0
        channel.close()
        assert not os.path.exists(server.socket_path)
        assert plugin is not None


async def test_registration_is_validated_by_the_simulator(
    kubelet: KubeletSimulator, plugin_dir: Path
) -> None:
    channel = Channel(path=kubelet.socket_path)
    stub = api.RegistrationStub(channel)
    try:
        with pytest.raises(GRPCError, match="not supported by kubelet"):
            await stub.register(
                api.RegisterRequest(version="v1alpha", endpoint="x.sock", resource_name="a.com/b")
            )
        with pytest.raises(GRPCError, match="ResourceName 'gpu' is invalid"):
            await stub.register(
                api.RegisterRequest(version="v1beta1", endpoint="x.sock", resource_name="gpu")
            )
        # Dial-back: nobody serves x.sock, so the kubelet gives up after its dial timeout.
        kubelet.dial_timeout = 0.3
        with pytest.raises(GRPCError, match="failed to dial device plugin"):
            await stub.register(
                api.RegisterRequest(version="v1beta1", endpoint="x.sock", resource_name="example.com/gpu")
            )
    finally:
        channel.close()
    assert [r.error is not None for r in kubelet.registrations] == [True, True, True]


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("nvidia.com/gpu", True),
        ("nvidia.com/mig-1g.10gb", True),
        ("nvidia.com/gpu.shared", True),
        ("gpu", False),
        ("kubernetes.io/gpu", False),
        ("requests.nvidia.com/gpu", False),
        ("nvidia.com/", False),
        ("Nvidia.com/gpu", False),
    ],
)
def test_extended_resource_names(name: str, valid: bool) -> None:
    assert is_extended_resource_name(name) is valid


async def test_reload_restarts_servers_and_keeps_health(kubelet: KubeletSimulator, config: Config) -> None:
    async with running_agent(config) as agent:
        plugin = await kubelet.wait_registered(GPU_RESOURCE)
        sick = next(iter(plugin.devices))
        agent.state.mark_unhealthy(sick, "XID 48")
        assert await agent.reload()
        plugin = await kubelet.wait_registered(GPU_RESOURCE, count=2)
        assert plugin.devices[sick] == "Unhealthy"
