"""The baseline: a bare grpclib + betterproto2 device plugin that does no work.

    python benchmarks/bare_plugin.py --kubelet-socket /tmp/dp/kubelet.sock [--devices 8]

It serves one resource of made-up devices, registers, answers Allocate with a fixed environment
and GetPreferredAllocation with the first devices it may, re-registers when the kubelet restarts
and on SIGTERM ends its streams, removes its socket and exits. bench_agent.py --bare and
bench_sidebyside.py measure it exactly as they measure nvplugin, on the same machine in the same
run, so the agent's own cost is the difference.

Kubelet restarts are noticed the cheapest way that is still correct: the kubelet's going away
ends the ListAndWatch stream, and only then is kubelet.sock polled (every 2 ms) until a new one
appears; an idle plugin does nothing at all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.exceptions import StreamTerminatedError
from grpclib.server import Server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nvplugin.api import v1beta1 as api

OPTIONS = api.DevicePluginOptions(get_preferred_allocation_available=True)
RESTART_POLL_S = 0.002  # while the kubelet restarts: its new socket, a Register it refused


class Bare(api.DevicePluginBase):
    def __init__(self, devices: list[api.Device], kubelet_gone: asyncio.Event) -> None:
        self.devices = devices
        self.kubelet_gone = kubelet_gone

    async def get_device_plugin_options(self, message: api.Empty) -> api.DevicePluginOptions:
        return OPTIONS

    async def list_and_watch(self, message: api.Empty) -> AsyncIterator[api.ListAndWatchResponse]:
        yield api.ListAndWatchResponse(devices=self.devices)
        try:
            await asyncio.Event().wait()
        finally:  # the kubelet went away (or this plugin is stopping)
            self.kubelet_gone.set()

    async def allocate(self, message: api.AllocateRequest) -> api.AllocateResponse:
        return api.AllocateResponse(
            container_responses=[
                api.ContainerAllocateResponse(envs={"NVIDIA_VISIBLE_DEVICES": ",".join(r.devices_ids)})
                for r in message.container_requests
            ]
        )

    async def get_preferred_allocation(
        self, message: api.PreferredAllocationRequest
    ) -> api.PreferredAllocationResponse:
        responses = []
        for r in message.container_requests:
            free = [d for d in r.available_deviceIDs if d not in r.must_include_deviceIDs]
            chosen = [*r.must_include_deviceIDs, *free][: r.allocation_size]
            responses.append(api.ContainerPreferredAllocationResponse(device_i_ds=chosen))
        return api.PreferredAllocationResponse(container_responses=responses)


def identity(path: str) -> tuple[int, int] | None:
    """A socket file's identity: inode numbers alone are reused when the kubelet re-creates it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_ctime_ns


async def serve(path: str, devices: list[api.Device], kubelet_gone: asyncio.Event) -> Server:
    if os.path.exists(path):
        os.unlink(path)
    server = Server([Bare(devices, kubelet_gone)])
    await server.start(path=path)
    return server


async def register(kubelet_socket: str, endpoint: str, stop: asyncio.Event) -> tuple[int, int] | None:
    """Register, again and again while the kubelet is (re)starting; returns the identity of the
    kubelet.sock that took it (None: stopped first)."""
    request = api.RegisterRequest(
        version="v1beta1", endpoint=endpoint, resource_name="nvidia.com/gpu", options=OPTIONS
    )
    while not stop.is_set():
        kubelet = identity(kubelet_socket)
        channel = Channel(path=kubelet_socket)
        try:
            await api.RegistrationStub(channel).register(request, timeout=5)
            return kubelet
        except (TimeoutError, OSError, GRPCError, StreamTerminatedError):
            await asyncio.sleep(RESTART_POLL_S)
        finally:
            channel.close()
    return None


async def wait_first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()


async def main(kubelet_socket: str, count: int) -> None:
    devices = [api.Device(id=f"GPU-{i:08d}", health="Healthy") for i in range(count)]
    endpoint = f"bare-{os.getpid()}.sock"
    path = os.path.join(os.path.dirname(kubelet_socket), endpoint)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        kubelet_gone = asyncio.Event()
        server = await serve(path, devices, kubelet_gone)
        registered_with = await register(kubelet_socket, endpoint, stop)
        await wait_first(stop, kubelet_gone)
        # A file appearing has no event to await without a watcher: poll, only while restarting.
        while not stop.is_set() and identity(kubelet_socket) in (None, registered_with):  # noqa: ASYNC110
            await asyncio.sleep(RESTART_POLL_S)  # the kubelet is restarting: wait for its new socket
        server.close()
        # On Python 3.12+ wait_closed also waits for every client connection to close, and the
        # kubelet keeps its own open: bounded, as nvplugin bounds its own.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 0.05)
        if os.path.exists(path):
            os.unlink(path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubelet-socket", required=True)
    parser.add_argument("--devices", type=int, default=8, help="how many made-up devices to advertise")
    ns = parser.parse_args()
    asyncio.run(main(ns.kubelet_socket, ns.devices))
