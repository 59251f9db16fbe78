"""A kubelet simulator: the kubelet's side of the device-plugin protocol, on real unix sockets.

It behaves as the kubelet's device manager does (see docs/kubelet-protocol in the shared docs):
it serves Registration on `kubelet.sock`, validates each Register (version, extended resource
name), dials the plugin back within `dial_timeout` inside the Register call, asks for its
options, follows ListAndWatch (capacity = all devices, allocatable = healthy ones; a stream that
ends marks every device unhealthy), and can restart like a kubelet: delete every socket in the
directory (never `kubelet_internal_checkpoint`) and recreate `kubelet.sock`.

Used by the tests, `nvplugin simulate` and the benchmarks; usable in users' own tests:

    async with KubeletSimulator(tmpdir) as kubelet:
        ...start the agent with --kubelet-socket tmpdir/kubelet.sock...
        plugin = await kubelet.wait_registered("nvidia.com/gpu")
        response = await kubelet.allocate("nvidia.com/gpu", [some_id])
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.server import Server

from nvplugin.api import v1beta1 as api

log = logging.getLogger(__name__)

KUBELET_SOCKET = "kubelet.sock"
CHECKPOINT = "kubelet_internal_checkpoint"
SUPPORTED_VERSIONS = ("v1beta1",)

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def is_extended_resource_name(name: str) -> bool:
    """The kubelet's rule: domain-prefixed, not in the kubernetes.io domain, not `requests.`."""
    if name.startswith("requests.") or "/" not in name:
        return False
    domain, _, short = name.partition("/")
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        return False
    return (
        len(domain) <= 253
        and bool(_DNS_SUBDOMAIN.match(domain))
        and len(short) <= 63
        and bool(_NAME.match(short))
        # quota's "requests.<name>" must also be a valid qualified name
        and len(f"requests.{name}") <= 253 + 1 + 63
    )


@dataclass
class Registration:
    at: float  # time.monotonic() when the Register call arrived
    request: api.RegisterRequest
    error: str | None = None
    accepted: bool = False


@dataclass
class PluginView:
    """What the kubelet knows of one registered resource."""

    resource_name: str
    endpoint: str
    options: api.DevicePluginOptions
    # device ID -> health string, as last listed
    devices: dict[str, str] = field(default_factory=dict)
    # device ID -> NUMA nodes
    numa: dict[str, list[int]] = field(default_factory=dict)
    updates: int = 0
    stream_ended: bool = False
    stream_error: str | None = None
    channel: Channel | None = field(default=None, repr=False)
    last_update_at: float = 0.0

    @property
    def capacity(self) -> int:
        return len(self.devices)

    @property
    def allocatable(self) -> int:
        if self.stream_ended:
            return 0
        return sum(1 for h in self.devices.values() if h == "Healthy")

    @property
    def stub(self) -> api.DevicePluginStub:
        assert self.channel is not None
        return api.DevicePluginStub(self.channel)


class _RegistrationService(api.RegistrationBase):
    def __init__(self, kubelet: KubeletSimulator) -> None:
        self._kubelet = kubelet

    async def register(self, message: api.RegisterRequest) -> api.Empty:
        await self._kubelet._handle_register(message)
        return api.Empty()


class KubeletSimulator:
    def __init__(
        self,
        plugin_dir: str | os.PathLike[str],
        dial_timeout: float = 10.0,
        narrate: Callable[[str], None] | None = None,
    ) -> None:
        self.plugin_dir = Path(plugin_dir)
        self.socket_path = str(self.plugin_dir / KUBELET_SOCKET)
        self.dial_timeout = dial_timeout
        self.registrations: list[Registration] = []
        self.plugins: dict[str, PluginView] = {}
        self.restarts = 0
        self._narrate = narrate
        self._server: Server | None = None
        self._tg: TaskGroup | None = None
        self._stream_scopes: dict[str, anyio.CancelScope] = {}
        self._changed: anyio.Event | None = None

    # --- lifecycle

    async def __aenter__(self) -> KubeletSimulator:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        await self.stop()
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(*exc)

    async def start(self) -> None:
        """Start like a kubelet: make the directory, delete every socket in it, serve kubelet.sock."""
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        for entry in self.plugin_dir.iterdir():
            if entry.name != CHECKPOINT and entry.is_socket():
                entry.unlink(missing_ok=True)
        self._server = Server([_RegistrationService(self)])
        await self._server.start(path=self.socket_path)
        self._say(f"kubelet: listening on {self.socket_path}")

    async def stop(self) -> None:
        """Stop serving and drop every plugin connection (as a dying kubelet does)."""
        for scope in self._stream_scopes.values():
            scope.cancel()
        self._stream_scopes.clear()
        for plugin in self.plugins.values():
            if plugin.channel is not None:
                plugin.channel.close()
                plugin.channel = None
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with anyio.move_on_after(0.5):
                await server.wait_closed()
        Path(self.socket_path).unlink(missing_ok=True)

    async def restart(self) -> None:
        """A kubelet restart: plugin sockets deleted, kubelet.sock recreated, registrations forgotten."""
        await self.stop()
        self.plugins.clear()
        self.restarts += 1
        await self.start()
        self._notify()

    # --- Register, as the kubelet's device manager handles it

    async def _handle_register(self, request: api.RegisterRequest) -> None:
        record = Registration(at=time.monotonic(), request=request)
        self.registrations.append(record)
        try:
            if request.version not in SUPPORTED_VERSIONS:
                raise GRPCError(
                    Status.UNKNOWN,
                    f"requested API version {request.version!r} is not supported by kubelet. "
                    f"Supported versions are {list(SUPPORTED_VERSIONS)!r}",
                )
            if not is_extended_resource_name(request.resource_name):
                raise GRPCError(Status.UNKNOWN, f"the ResourceName {request.resource_name!r} is invalid")
            if "/" in request.endpoint or not request.endpoint:
                raise GRPCError(
                    Status.UNKNOWN, f"invalid endpoint {request.endpoint!r}: expected a file name"
                )
            channel, options = await self._dial(request)
        except GRPCError as exc:
            record.error = exc.message
            self._say(f"kubelet: refused registration of {request.resource_name!r}: {exc.message}")
            self._notify()
            raise
        old = self.plugins.get(request.resource_name)
        if old is not None:
            self._drop(old)
        plugin = PluginView(request.resource_name, request.endpoint, options, channel=channel)
        self.plugins[request.resource_name] = plugin
        record.accepted = True
        self._say(f"kubelet: registered {request.resource_name} (plugin socket {request.endpoint})")
        assert self._tg is not None
        scope = anyio.CancelScope()
        self._stream_scopes[request.resource_name] = scope
        self._tg.start_soon(self._follow, plugin, scope)
        self._notify()

    async def _dial(self, request: api.RegisterRequest) -> tuple[Channel, api.DevicePluginOptions]:
        """Dial back with a blocking timeout, like grpc.WithBlock(), then ask for the options."""
        path = str(self.plugin_dir / request.endpoint)
        deadline = time.monotonic() + self.dial_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            channel = Channel(path=path)
            try:
                options = await api.DevicePluginStub(channel).get_device_plugin_options(
                    api.Empty(), timeout=max(0.01, deadline - time.monotonic())
                )
                return channel, options
            except (OSError, TimeoutError) as exc:
                last_error = exc
                channel.close()
                await anyio.sleep(0.02)
            except GRPCError:
                channel.close()
                raise
        raise GRPCError(Status.UNKNOWN, f"failed to dial device plugin at {path}: {last_error or 'timeout'}")

    def _drop(self, plugin: PluginView) -> None:
        scope = self._stream_scopes.pop(plugin.resource_name, None)
        if scope is not None:
            scope.cancel()
        if plugin.channel is not None:
            plugin.channel.close()
            plugin.channel = None

    async def _follow(self, plugin: PluginView, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                async for response in plugin.stub.list_and_watch(api.Empty()):
                    plugin.devices = {d.id: d.health for d in response.devices}
                    plugin.numa = {
                        d.id: [n.id for n in d.topology.nodes] if d.topology else [] for d in response.devices
                    }
                    plugin.updates += 1
                    plugin.last_update_at = time.monotonic()
                    self._notify()
                plugin.stream_error = None
            except (GRPCError, OSError, TimeoutError) as exc:
                plugin.stream_error = str(exc)
            except Exception as exc:  # the stream broke in a way grpclib reports otherwise
                plugin.stream_error = f"{type(exc).__name__}: {exc}"
            # The stream ended while registered: every device becomes unhealthy.
            plugin.stream_ended = True
            self._say(f"kubelet: ListAndWatch of {plugin.resource_name} ended; allocatable is now 0")
            self._notify()

    # --- waiting for what the kubelet sees

    def _notify(self) -> None:
        event, self._changed = self._changed, None
        if event is not None:
            event.set()

    async def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition"
    ) -> Any:
        """Wait until predicate() returns something truthy; return it."""
        with anyio.fail_after(timeout):
            while True:
                value = predicate()
                if value:
                    return value
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()
        raise AssertionError(f"timed out waiting for {what}")  # pragma: no cover - fail_after raises

    async def wait_registered(self, resource: str, count: int = 1, timeout: float = 5.0) -> PluginView:
        """Wait for the `count`-th accepted registration of `resource` and its first device list."""

        def ready() -> PluginView | None:
            accepted = [r for r in self.registrations if r.request.resource_name == resource and r.accepted]
            plugin = self.plugins.get(resource)
            if (
                len(accepted) >= count
                and plugin is not None
                and plugin.endpoint == accepted[-1].request.endpoint
                and plugin.updates > 0
            ):
                return plugin
            return None

        result: PluginView = await self.wait_for(ready, timeout, f"registration #{count} of {resource}")
        return result

    async def wait_devices(
        self, resource: str, predicate: Callable[[PluginView], bool], timeout: float = 5.0
    ) -> PluginView:
        def ready() -> PluginView | None:
            plugin = self.plugins.get(resource)
            return plugin if plugin is not None and predicate(plugin) else None

        result: PluginView = await self.wait_for(ready, timeout, f"devices of {resource}")
        return result

    # --- calls the kubelet makes at pod admission

    def _plugin(self, resource: str) -> PluginView:
        plugin = self.plugins.get(resource)
        if plugin is None or plugin.channel is None:
            raise LookupError(f"no plugin registered for {resource}")
        return plugin

    async def allocate(self, resource: str, device_ids: Sequence[str]) -> api.ContainerAllocateResponse:
        response = await self._plugin(resource).stub.allocate(
            api.AllocateRequest(
                container_requests=[api.ContainerAllocateRequest(devices_ids=list(device_ids))]
            )
        )
        return response.container_responses[0]

    async def preferred(
        self, resource: str, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        response = await self._plugin(resource).stub.get_preferred_allocation(
            api.PreferredAllocationRequest(
                container_requests=[
                    api.ContainerPreferredAllocationRequest(
                        available_deviceIDs=list(available),
                        must_include_deviceIDs=list(must_include),
                        allocation_size=size,
                    )
                ]
            )
        )
        return list(response.container_responses[0].device_i_ds)

    def _say(self, text: str) -> None:
        log.debug(text)
        if self._narrate is not None:
            self._narrate(text)
