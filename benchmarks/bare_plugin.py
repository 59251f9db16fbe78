"""The baseline: a bare grpclib + betterproto2 device plugin that does no work.

    python benchmarks/bare_plugin.py --kubelet-socket /tmp/dp/kubelet.sock

It serves one resource of 8 made-up devices, registers once and answers Allocate with a fixed
environment. bench_agent.py --bare measures it exactly as it measures nvplugin, on the same
machine in the same run, so the agent's own cost is the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from grpclib.client import Channel
from grpclib.server import Server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nvplugin.api import v1beta1 as api

DEVICES = [api.Device(id=f"GPU-{i:08d}", health="Healthy") for i in range(8)]
OPTIONS = api.DevicePluginOptions(get_preferred_allocation_available=True)


class Bare(api.DevicePluginBase):
    async def get_device_plugin_options(self, message: api.Empty) -> api.DevicePluginOptions:
        return OPTIONS

    async def list_and_watch(self, message: api.Empty) -> AsyncIterator[api.ListAndWatchResponse]:
        yield api.ListAndWatchResponse(devices=DEVICES)
        await asyncio.Event().wait()

    async def allocate(self, message: api.AllocateRequest) -> api.AllocateResponse:
        return api.AllocateResponse(
            container_responses=[
                api.ContainerAllocateResponse(envs={"NVIDIA_VISIBLE_DEVICES": ",".join(r.devices_ids)})
                for r in message.container_requests
            ]
        )


async def main(kubelet_socket: str) -> None:
    directory = os.path.dirname(kubelet_socket)
    endpoint = f"bare-{os.getpid()}.sock"
    server = Server([Bare()])
    await server.start(path=os.path.join(directory, endpoint))
    channel = Channel(path=kubelet_socket)
    await api.RegistrationStub(channel).register(
        api.RegisterRequest(
            version="v1beta1", endpoint=endpoint, resource_name="nvidia.com/gpu", options=OPTIONS
        )
    )
    channel.close()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    os.unlink(os.path.join(directory, endpoint))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubelet-socket", required=True)
    asyncio.run(main(parser.parse_args().kubelet_socket))
