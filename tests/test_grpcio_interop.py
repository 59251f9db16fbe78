"""Wire compatibility beyond grpclib: an independent grpcio peer on both sides of the protocol.

grpcio is the C-core implementation (the same core family as grpc-go's peers in behaviour):
it drives the plugin's server, and it plays the kubelet's Registration server for the agent.
"""

from __future__ import annotations

import threading
from concurrent import futures
from pathlib import Path

import anyio
import grpc
import pytest

from nvplugin.api import v1beta1 as api
from nvplugin.core.config import Config
from nvplugin.core.resources import GPU_RESOURCE
from nvplugin.simulate.kubelet import KubeletSimulator
from tests.conftest import fake_nvml, running_agent

pytestmark = pytest.mark.anyio

SERVICE = "/v1beta1.DevicePlugin/"


def _unary(channel: grpc.Channel, method: str, response_type: type) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        SERVICE + method, request_serializer=bytes, response_deserializer=response_type().parse
    )


def grpcio_session(socket_path: str, expected_ids: list[str]) -> dict[str, object]:
    """Runs in a worker thread: a blocking grpcio client, as a foreign kubelet would be."""
    out: dict[str, object] = {}
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        out["options"] = _unary(channel, "GetDevicePluginOptions", api.DevicePluginOptions)(
            api.Empty(), timeout=5
        )
        stream = channel.unary_stream(
            SERVICE + "ListAndWatch",
            request_serializer=bytes,
            response_deserializer=api.ListAndWatchResponse().parse,
        )(api.Empty(), timeout=5)
        first = next(stream)
        out["listed"] = [d.id for d in first.devices]
        stream.cancel()
        out["allocate"] = _unary(channel, "Allocate", api.AllocateResponse)(
            api.AllocateRequest(
                container_requests=[api.ContainerAllocateRequest(devices_ids=expected_ids[:2])]
            ),
            timeout=5,
        )
        try:
            _unary(channel, "Allocate", api.AllocateResponse)(
                api.AllocateRequest(
                    container_requests=[api.ContainerAllocateRequest(devices_ids=["GPU-bogus"])]
                ),
                timeout=5,
            )
        except grpc.RpcError as exc:
            out["refusal"] = (exc.code(), exc.details())
        out["preferred"] = _unary(channel, "GetPreferredAllocation", api.PreferredAllocationResponse)(
            api.PreferredAllocationRequest(
                container_requests=[
                    api.ContainerPreferredAllocationRequest(
                        available_deviceIDs=expected_ids,
                        must_include_deviceIDs=[expected_ids[3]],
                        allocation_size=2,
                    )
                ]
            ),
            timeout=5,
        )
    return out


async def test_grpcio_client_drives_the_plugin(kubelet: KubeletSimulator, config: Config) -> None:
    nvml = fake_nvml(4)
    ids = [g.uuid for g in nvml.layout.gpus]
    async with running_agent(config, nvml) as agent:
        await kubelet.wait_registered(GPU_RESOURCE)
        out = await anyio.to_thread.run_sync(grpcio_session, agent.servers[0].socket_path, ids)
    options = out["options"]
    assert isinstance(options, api.DevicePluginOptions)
    assert options.get_preferred_allocation_available and not options.pre_start_required
    assert out["listed"] == ids
    allocate = out["allocate"]
    assert isinstance(allocate, api.AllocateResponse)
    assert allocate.container_responses[0].envs == {"NVIDIA_VISIBLE_DEVICES": ",".join(ids[:2])}
    code, details = out["refusal"]  # type: ignore[misc]
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'GPU-bogus'" in details
    preferred = out["preferred"]
    assert isinstance(preferred, api.PreferredAllocationResponse)
    answer = preferred.container_responses[0].device_i_ds
    assert len(answer) == 2 and ids[3] in answer


class _GrpcioKubelet:
    """A minimal Registration server on grpcio: records what the agent sends."""

    def __init__(self, socket_path: Path) -> None:
        self.requests: list[api.RegisterRequest] = []
        self.received = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.method_handlers_generic_handler(
            "v1beta1.Registration",
            {
                "Register": grpc.unary_unary_rpc_method_handler(
                    self._register,
                    request_deserializer=api.RegisterRequest().parse,
                    response_serializer=bytes,
                )
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.server.add_insecure_port(f"unix://{socket_path}")

    def _register(self, request: api.RegisterRequest, context: grpc.ServicerContext) -> api.Empty:
        self.requests.append(request)
        self.received.set()
        return api.Empty()


async def test_agent_registers_with_a_grpcio_kubelet(config: Config, plugin_dir: Path) -> None:
    kubelet = _GrpcioKubelet(plugin_dir / "kubelet.sock")
    kubelet.server.start()
    try:
        async with running_agent(config):
            with anyio.fail_after(5):
                while not kubelet.received.is_set():  # noqa: ASYNC110 - a thread-side event
                    await anyio.sleep(0.01)
    finally:
        kubelet.server.stop(0)
    request = kubelet.requests[0]
    assert request.version == "v1beta1" and request.resource_name == GPU_RESOURCE
    assert request.endpoint.endswith(".sock") and "/" not in request.endpoint
    assert request.options is not None and request.options.get_preferred_allocation_available
