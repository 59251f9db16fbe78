"""The device-plugin gRPC server for one resource: the servicer and its socket's lifecycle.

One PluginServer per advertised resource, each on a fresh socket name per start (the kubelet
can reject a re-registration on a path it still holds). Stopping ends every ListAndWatch stream
on purpose first: grpclib's close waits for open handlers, and a stream never ends by itself.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.server import Server

from nvplugin.api import v1beta1 as api
from nvplugin.core.allocation import (
    NO_NODE_DEVICES,
    AllocationError,
    NodeDevices,
    check_request,
    container_allocation,
    preferred_in_order,
)
from nvplugin.core.config import Config
from nvplugin.core.mps import is_mps_shared
from nvplugin.core.placement import preferred_devices
from nvplugin.core.resources import Resource
from nvplugin.core.wire import encode_allocate_response, encode_list_and_watch, encode_preferred_response
from nvplugin.observability import NULL_METRICS, Metrics
from nvplugin.plugin.guard import GuardedServable
from nvplugin.plugin.strictproto import Limits
from nvplugin.state import NodeState

log = logging.getLogger(__name__)

# Sent identically in Register and GetDevicePluginOptions: the kubelet trusts the latter.
PLUGIN_OPTIONS = api.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)

# Bounds on a request, checked while it is decoded (INVALID_ARGUMENT past them), so neither
# the work nor the answer grows with what a peer sends. The kubelet sends one container
# request per Allocate and GetPreferredAllocation call (the API allows more). No list of
# device IDs it sends can be longer than the device list it can receive in one ListAndWatch
# answer (its 4 MiB receive limit: about 67,000 devices).
MAX_CONTAINER_REQUESTS = 128
MAX_DEVICE_IDS = 100_000
REQUEST_LIMITS = Limits(messages=MAX_CONTAINER_REQUESTS, values=MAX_DEVICE_IDS)

_socket_counter = itertools.count()
# Every socket nvplugin creates in the kubelet's directory starts with this (stale ones are
# found by it after a crash).
SOCKET_PREFIX = "nvplugin-"


def fresh_socket_name(resource: Resource) -> str:
    """A socket name never used before by this process (nor, very likely, any other)."""
    return f"{SOCKET_PREFIX}{resource.short_name}-{os.getpid()}-{next(_socket_counter)}-{os.urandom(3).hex()}.sock"


class _Encoded:
    """A message carrying wire bytes built by core.wire: the same bytes betterproto2 would make
    (tests compare them), made without building and serialising betterproto2 messages on every
    call (896 devices in a ListAndWatch: 0.3 ms instead of 32 ms on the loop). grpclib's codec
    only calls SerializeToString."""

    raw: bytes

    def __init__(self, raw: bytes) -> None:
        super().__init__()
        object.__setattr__(self, "raw", raw)

    def SerializeToString(self) -> bytes:
        return self.raw

    def __bytes__(self) -> bytes:
        return self.raw


class EncodedDeviceList(_Encoded, api.ListAndWatchResponse):
    """ListAndWatch's full device list (core.wire.encode_list_and_watch)."""


class EncodedAllocateResponse(_Encoded, api.AllocateResponse):
    """Allocate's answer (core.wire.encode_allocate_response)."""


class EncodedPreferredAllocation(_Encoded, api.PreferredAllocationResponse):
    """GetPreferredAllocation's answer (core.wire.encode_preferred_response)."""


class EncodedOptions(_Encoded, api.DevicePluginOptions):
    """GetDevicePluginOptions' answer: PLUGIN_OPTIONS, encoded once."""


_OPTIONS_ANSWER = EncodedOptions(bytes(PLUGIN_OPTIONS))


class DevicePluginServicer(api.DevicePluginBase):
    """Answers the kubelet for one resource, from the shared NodeState."""

    def __init__(
        self,
        resource_name: str,
        state: NodeState,
        config: Config,
        node: NodeDevices = NO_NODE_DEVICES,
        *,
        metrics: Metrics = NULL_METRICS,
        on_stream_lost: Callable[[], None] | None = None,
    ) -> None:
        self.resource_name = resource_name
        self._state = state
        self._config = config
        self._node = node
        self._metrics = metrics
        # Called when a stream ends while we still serve: the kubelet went away (restarting?).
        self._on_stream_lost = on_stream_lost
        self._stopping = False
        self._open_streams = 0
        # (state version, message): every stream of this resource shares one built list.
        self._list_cache: tuple[int, EncodedDeviceList] | None = None

    # --- helpers

    def _resource(self) -> Resource:
        resource = self._state.resource(self.resource_name)
        if resource is None:  # the resource vanished on reload; this server is about to stop
            return Resource(self.resource_name, ())
        return resource

    def device_list(self) -> EncodedDeviceList:
        version = self._state.version
        cached = self._list_cache
        if cached is not None and cached[0] == version:
            return cached[1]
        message = EncodedDeviceList(encode_list_and_watch(self._resource().devices, self._state.unhealthy))
        self._list_cache = (version, message)
        return message

    def stop(self) -> None:
        """End every open ListAndWatch stream (they return at their next wake-up)."""
        self._stopping = True
        self._state.poke()

    @property
    def open_streams(self) -> int:
        return self._open_streams

    # --- the five RPCs

    async def get_device_plugin_options(self, message: api.Empty) -> api.DevicePluginOptions:
        return _OPTIONS_ANSWER

    async def list_and_watch(self, message: api.Empty) -> AsyncIterator[api.ListAndWatchResponse]:
        self._open_streams += 1
        try:
            sent: bytes | None = None
            seen = -1
            while not self._stopping:
                if self._state.version != seen:
                    seen = self._state.version
                    response = self.device_list()
                    # A version bump may concern another resource: send only real changes.
                    if response.raw != sent:
                        sent = response.raw
                        yield response
                await self._state.wait_changed(seen)
        finally:
            self._open_streams -= 1
            if not self._stopping and self._on_stream_lost is not None:
                self._on_stream_lost()

    async def get_preferred_allocation(
        self, message: api.PreferredAllocationRequest
    ) -> api.PreferredAllocationResponse:
        # A hint only, and an error fails pod admission: every request the kubelet can send
        # gets an answer (core.allocation.PreferenceRequest says what it promises).
        started = anyio.current_time()
        answers = []
        for request in message.container_requests:
            answers.append(
                self._preferred(
                    request.available_deviceIDs, request.must_include_deviceIDs, request.allocation_size
                )
            )
            # One container's search is bounded (placement's budget); let others in between.
            await anyio.lowlevel.checkpoint()
        self._metrics.preferred_allocation(self.resource_name, anyio.current_time() - started, True)
        return EncodedPreferredAllocation(encode_preferred_response(answers))

    def _preferred(self, available: list[str], must: list[str], size: int) -> list[str]:
        """From the topology read at discovery, never from NVML. Never raises: the answer is a
        hint, and an error would fail pod admission."""
        resource = self._resource()
        try:
            return preferred_devices(
                self._state.inventory.topology,
                resource,
                available,
                must,
                size,
                unhealthy=self._state.unhealthy,
                policy=self._config.shared_devices_allocation_policy,
            )
        except Exception:
            log.exception("GetPreferredAllocation: the preference policy failed; answering in order")
            return preferred_in_order(resource, available, must, size)

    async def allocate(self, message: api.AllocateRequest) -> api.AllocateResponse:
        started = anyio.current_time()
        responses = []
        try:
            if not message.container_requests:
                raise AllocationError(f"{self.resource_name}: the request has no container requests")
            for request in message.container_requests:
                resource = self._resource()
                devices = check_request(resource, request.devices_ids, self._state.unhealthy)
                allocation = container_allocation(
                    devices,
                    self._config,
                    existing_control_nodes=self._node.control_nodes,
                    imex_channels=self._node.imex_channels,
                    mps_resource=resource.name if is_mps_shared(resource) else None,
                )
                responses.append(allocation)
                await anyio.lowlevel.checkpoint()
        except AllocationError as exc:
            log.warning("Allocate refused: %s", exc)
            self._observe_allocate(started, ok=False)
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
        self._observe_allocate(started, ok=True)
        return EncodedAllocateResponse(encode_allocate_response(responses))

    def _observe_allocate(self, started: float, ok: bool) -> None:
        self._metrics.allocation(self.resource_name, anyio.current_time() - started, ok)

    async def pre_start_container(
        self, message: api.PreStartContainerRequest
    ) -> api.PreStartContainerResponse:
        return api.PreStartContainerResponse()


# h2 remembers how each closed stream of a connection ended, up to 65,536 of them (about
# 8 MB), to judge frames that arrive late. The kubelet's connection lives as long as it does
# and opens a stream per call; a late frame only ever concerns the latest streams.
CLOSED_STREAMS_KEPT = 1024


class _TrackingServer(Server):
    """A grpclib Server that remembers its connections, so stop can close them (on Python
    3.12+ asyncio's wait_closed waits for every client connection, and the kubelet's stays
    open), and keeps h2's record of closed streams short on each."""

    def __init__(self, handlers: list[Any]) -> None:
        super().__init__(handlers)
        self.protocols: list[Any] = []

    def _protocol_factory(self) -> Any:
        protocol: Any = super()._protocol_factory()
        self.protocols = [p for p in self.protocols if _is_open(p)]
        self.protocols.append(protocol)
        connection_made = protocol.connection_made

        def made(transport: Any) -> None:
            connection_made(transport)
            # grpclib's Connection over h2's H2Connection, whose SizeLimitDict holds the record
            # (private to both: should they change, h2's own bound stays; the leak test shows it).
            h2_connection = getattr(protocol.connection, "_connection", None)
            closed = getattr(h2_connection, "_closed_streams", None)
            if hasattr(closed, "_size_limit"):
                closed._size_limit = CLOSED_STREAMS_KEPT  # type: ignore[union-attr]

        protocol.connection_made = made
        return protocol


def _is_open(protocol: Any) -> bool:
    connection = getattr(protocol, "connection", None)
    return connection is None or hasattr(connection, "_transport")


class PluginServer:
    """One resource's gRPC server on a fresh unix socket in the kubelet's directory."""

    def __init__(
        self,
        resource: Resource,
        state: NodeState,
        config: Config,
        node: NodeDevices = NO_NODE_DEVICES,
        *,
        metrics: Metrics = NULL_METRICS,
        on_stream_lost: Callable[[], None] | None = None,
    ) -> None:
        self.resource_name = resource.name
        self.socket_name = fresh_socket_name(resource)
        self.socket_path = os.path.join(config.plugin_dir, self.socket_name)
        self.servicer = DevicePluginServicer(
            resource.name,
            state,
            config,
            node,
            metrics=metrics,
            on_stream_lost=on_stream_lost,
        )
        self._server: _TrackingServer | None = None

    async def start(self) -> None:
        if len(os.fsencode(self.socket_path)) > 107:  # sun_path holds 108 bytes with its NUL
            raise OSError(
                f"socket path {self.socket_path!r} is longer than a unix socket allows (107 bytes): "
                "use a shorter --kubelet-socket directory"
            )
        server = _TrackingServer([GuardedServable(self.servicer, limits=REQUEST_LIMITS)])
        await server.start(path=self.socket_path)
        self._server = server  # only a started server is stopped later
        log.debug("serving %s on %s", self.resource_name, self.socket_path)

    async def stop(self, grace: float = 0.5) -> None:
        """End streams, close connections, remove the socket. Bounded by `grace` seconds."""
        server, self._server = self._server, None
        if server is None:
            return
        self.servicer.stop()
        with anyio.CancelScope(shield=True):
            # Let the streams send their end-of-stream before the connections go.
            with anyio.move_on_after(grace / 2):
                while self.servicer.open_streams:  # noqa: ASYNC110 - shutdown only, bounded
                    await anyio.sleep(0.005)
            server.close()
            for protocol in server.protocols:
                processor = getattr(protocol, "processor", None)
                if processor is not None and _is_open(protocol):
                    processor.close("device plugin stopping")
            with anyio.move_on_after(grace / 2):
                await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        log.debug("stopped %s on %s", self.resource_name, self.socket_path)
