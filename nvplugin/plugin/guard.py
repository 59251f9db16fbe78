"""Reading gRPC requests within bounds, with a clear status for every malformed one.

grpclib reads a request whole, whatever length its prefix declares (a 64 MiB request once
held the loop 9 s and took 455 MB), and answers any decoding problem with UNKNOWN "Internal
Server Error" and a traceback. A `GuardedServable` wraps a generated servicer so that each
handler reads its request itself, from the HTTP/2 stream, before the servicer's code runs:

- the 5-byte gRPC message prefix first. A declared length over `max_request_bytes` is refused
  with RESOURCE_EXHAUSTED before any of the body is read. grpclib acknowledges DATA frames
  (HTTP/2 flow control) only as they are read, so a peer cannot push more than one flow-control
  window (grpclib's default: 4 MiB per stream and per connection) before the refusal; the
  stream is then reset and what it pushed is dropped with it.
- compressed-flag 1: UNIMPLEMENTED, gRPC's status for a compression the server does not
  support (this one supports none); any other value but 0: INVALID_ARGUMENT.
- no message at all: UNIMPLEMENTED, gRPC's status for a request cardinality violation.
- a message cut short by the end of the stream, or bytes that are not a valid message of the
  request type (decoded strictly: see strictproto), or a repeated field longer than its
  `limits` allow (such as 10,000 container requests where the kubelet sends one):
  INVALID_ARGUMENT.
- a request not received whole within `REQUEST_READ_TIMEOUT`: DEADLINE_EXCEEDED (a stalled
  peer does not hold a handler forever).
Each refusal is one warning line, of bounded size: it names fields, offsets and sizes, never
the peer's bytes.

Bodies over `INLINE_DECODE_BYTES` are decoded in a worker thread, one at a time per server:
decoding takes about 0.5 µs per field, so 4 MiB of tiny fields (2 million of them, where
`limits` allow) would hold the loop for a second; in a thread, the loop keeps its share of
the interpreter and keeps answering.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
from grpclib import GRPCError
from grpclib.const import Handler, Status

from nvplugin.plugin import strictproto

log = logging.getLogger(__name__)

# The kubelet's requests are small (an Allocate names a few IDs; GetPreferredAllocation lists
# the available ones: 16,000 time-sliced replicas are about 800 KB). 4 MiB is gRPC's default
# receive limit, and the kubelet's own for our answers.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
# Above this, decoding could hold the loop for more than a few milliseconds.
INLINE_DECODE_BYTES = 16 * 1024
# A real client sends its request at once; over a unix socket it arrives within milliseconds.
REQUEST_READ_TIMEOUT = 10.0
_PREFIX_BYTES = 5  # compressed flag, then the message length (big-endian uint32)

HandlerFunc = Callable[[Any], Awaitable[None]]


class GuardedServable:
    """A grpclib servable (a generated *Base subclass) whose handlers read their request
    through `read_request`. Pass it to grpclib's Server in place of the servicer."""

    def __init__(
        self,
        servable: Any,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        limits: strictproto.Limits = strictproto.NO_LIMITS,
    ) -> None:
        self._servable = servable
        self.max_request_bytes = max_request_bytes
        self.limits = limits
        # Created on first use, inside the event loop.
        self._large_decodes: anyio.CapacityLimiter | None = None

    def __mapping__(self) -> Mapping[str, Handler]:
        mapping: Mapping[str, Handler] = self._servable.__mapping__()
        guarded = {}
        for name, handler in mapping.items():
            if handler.cardinality.client_streaming:
                raise ValueError(f"{name}: only methods taking one request message can be guarded")
            guarded[name] = handler._replace(func=self._guard(name, handler))
        return guarded

    def _guard(self, name: str, handler: Handler) -> HandlerFunc:
        method = name.rpartition("/")[2]

        async def guarded(stream: Any) -> None:
            try:
                request = await self.read_request(stream, handler.request_type)
            except GRPCError as exc:
                log.warning("%s: refused a malformed request: %s", method, exc.message)
                raise
            await handler.func(_ReceivedStream(stream, request))

        return guarded

    async def read_request(self, stream: Any, request_type: Any) -> Any:
        """The one request message of a call, or GRPCError saying what is wrong with it."""
        try:
            with anyio.fail_after(REQUEST_READ_TIMEOUT):
                # grpclib's HTTP/2 stream under its server stream: nothing public reads raw bytes.
                body = await _read_body(stream._stream, self.max_request_bytes)
        except TimeoutError:
            raise GRPCError(
                Status.DEADLINE_EXCEEDED,
                f"the request message did not arrive whole within {REQUEST_READ_TIMEOUT:g} s",
            ) from None
        if len(body) <= INLINE_DECODE_BYTES:
            return _decode(body, request_type, self.limits)
        if self._large_decodes is None:
            self._large_decodes = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(
            _decode, body, request_type, self.limits, limiter=self._large_decodes
        )


_TRUNCATED = "the request ended in the middle of a message (truncated)"


async def _read_body(raw: Any, limit: int) -> bytes:
    prefix = await _receive(raw, _PREFIX_BYTES)
    if prefix == b"":
        raise GRPCError(
            Status.UNIMPLEMENTED, "the call carried no request message (this method takes exactly one)"
        )
    if prefix is None:
        raise GRPCError(Status.INVALID_ARGUMENT, _TRUNCATED)
    flag, length = prefix[0], int.from_bytes(prefix[1:], "big")
    if flag == 1:
        raise GRPCError(
            Status.UNIMPLEMENTED,
            "compressed request messages are not supported: send them uncompressed (grpc-encoding identity)",
        )
    if flag != 0:
        raise GRPCError(
            Status.INVALID_ARGUMENT, f"invalid compressed-flag byte {flag} in the message prefix (0 or 1)"
        )
    if length > limit:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"the request message is {length} bytes, more than the {limit}-byte limit",
        )
    body = await _receive(raw, length)
    if body is None or len(body) != length:
        raise GRPCError(Status.INVALID_ARGUMENT, _TRUNCATED)
    return body


async def _receive(raw: Any, size: int) -> bytes | None:
    """`size` bytes of the request; b"" if the stream had ended before them (grpclib's buffer
    answers so even when `size` is not 0), None if it ended inside them."""
    try:
        data: bytes = await raw.recv_data(size)
    except AssertionError:  # grpclib's buffer: "Received less data than expected"
        return None
    return data


def _decode(body: bytes, request_type: Any, limits: strictproto.Limits) -> Any:
    try:
        return strictproto.decode(body, request_type, limits)
    except ValueError as exc:
        raise GRPCError(
            Status.INVALID_ARGUMENT, f"the request is not a valid {request_type.__name__} message: {exc}"
        ) from None


class _ReceivedStream:
    """What a generated handler sees: grpclib's server stream, whose one request message was
    already read by the guard (generated handlers call recv_message once)."""

    def __init__(self, stream: Any, request: Any) -> None:
        self._stream = stream
        self._request = request

    async def recv_message(self) -> Any:
        request, self._request = self._request, None
        return request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
