"""Hostile or broken gRPC input: bounded reads, strict decoding, clear statuses, one log line.

Driven from outside over the plugin's real socket, by grpcio (an independent gRPC stack) and
by a raw HTTP/2 client for what no gRPC library would send.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import grpc
import pytest
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.server import Server
from hypothesis import given, settings
from hypothesis import strategies as st

from nvplugin.api import v1beta1 as api
from nvplugin.core.config import Config
from nvplugin.core.resources import GPU_RESOURCE
from nvplugin.plugin import guard, strictproto
from nvplugin.plugin.registration import RegistrationFailed, register_once
from nvplugin.plugin.server import MAX_CONTAINER_REQUESTS, MAX_DEVICE_IDS
from nvplugin.simulate.kubelet import KubeletSimulator
from tests.conftest import running_agent
from tests.rawgrpc import RawGrpcClient, frame

SERVICE = "/v1beta1.DevicePlugin/"
ALLOCATE = SERVICE + "Allocate"


def allocate_request(*ids: str) -> bytes:
    return bytes(
        api.AllocateRequest(container_requests=[api.ContainerAllocateRequest(devices_ids=list(ids))])
    )


# --- the strict decoder


def ids() -> st.SearchStrategy[list[str]]:
    return st.lists(st.text(max_size=12), max_size=4)


REQUESTS = st.one_of(
    st.builds(api.Empty),
    st.builds(
        api.AllocateRequest,
        container_requests=st.lists(st.builds(api.ContainerAllocateRequest, devices_ids=ids()), max_size=3),
    ),
    st.builds(
        api.PreferredAllocationRequest,
        container_requests=st.lists(
            st.builds(
                api.ContainerPreferredAllocationRequest,
                available_deviceIDs=ids(),
                must_include_deviceIDs=ids(),
                allocation_size=st.integers(-(2**31), 2**31 - 1),
            ),
            max_size=3,
        ),
    ),
    st.builds(api.PreStartContainerRequest, devices_ids=ids()),
)


@settings(max_examples=200, deadline=None)
@given(
    message=REQUESTS,
    unknown=st.sampled_from([b"", b"\x78\x05", b"\x79" + b"\x00" * 8, b"\x7a\x01z", b"\x7d\x00\x00\x00\x00"]),
)
def test_strict_decoder_reads_what_betterproto2_writes(message: Any, unknown: bytes) -> None:
    # Field 15 of every wire type, unknown to every request: skipped, as protobuf requires.
    assert strictproto.decode(bytes(message) + unknown, type(message)) == message


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\xff\xff\xff", "varint at byte 0 runs past the end"),
        (b"\x0a\x05ab", "field #1 at byte 0 declares 5 bytes; only 2 remain"),
        (b"\x0a\x02\x0a\x05", "field #1 at byte 2 declares 5 bytes; only 0 remain"),
        (b"\x08\x01", "container_requests (#1) at byte 0: a varint where a message belongs"),
        (b"\x0a\x03\x0a\x01\xff", "devices_ids at byte 2: invalid UTF-8"),
        (b"\x0b", "wire type 3"),
        (b"\x00", "field number 0"),
        (b"\x0a\x01\x09", "field #1 at byte 2 runs past the end"),
        (b"\x0a\x0b" + b"\x10" + b"\xff" * 10, "longer than 10 bytes"),
    ],
)
def test_strict_decoder_refuses_what_betterproto2_lets_through(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        strictproto.decode(data, api.AllocateRequest)


def test_strict_decoder_stops_at_the_repeated_limits() -> None:
    containers = b"\x0a\x00" * 1000
    limits = strictproto.Limits(messages=1000, values=10)
    assert len(strictproto.decode(containers, api.AllocateRequest, limits).container_requests) == 1000
    with pytest.raises(ValueError, match="more than 999 container_requests"):
        strictproto.decode(containers, api.AllocateRequest, strictproto.Limits(messages=999))
    ids = b"\x0a\x00" * 10
    assert len(strictproto.decode(ids, api.PreStartContainerRequest, limits).devices_ids) == 10
    with pytest.raises(ValueError, match="more than 10 devices_ids"):
        strictproto.decode(ids + b"\x0a\x00", api.PreStartContainerRequest, limits)


def test_strict_decoder_refuses_a_schema_it_cannot_check() -> None:
    with pytest.raises(TypeError, match=r"RegisterRequest\.options: message fields are not supported"):
        strictproto.decode(b"", api.RegisterRequest)


# --- the agent's plugin socket, driven from outside


@pytest.fixture
async def plugin_socket(kubelet: KubeletSimulator, config: Config, plugin_dir: Path) -> AsyncIterator[str]:
    async with running_agent(config):
        plugin = await kubelet.wait_registered(GPU_RESOURCE)
        yield str(plugin_dir / plugin.endpoint)


def grpcio_call(
    socket_path: str, method: str, body: bytes, **options: Any
) -> tuple[grpc.StatusCode, str, bytes]:
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        call = channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
        try:
            return grpc.StatusCode.OK, "", call(body, timeout=30, **options)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", b""


def raw_call(socket_path: str, path: str, body: bytes, **options: Any) -> Any:
    with RawGrpcClient(socket_path) as client:
        return client.call(path, body, **options)


def our_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith(("nvplugin", "grpclib")) and r.levelno >= logging.WARNING
    ]


CASES: list[tuple[str, Callable[[str], tuple[int, str]], Status, str]] = []


def case(name: str, status: Status, words: str) -> Callable[[Callable[[str], tuple[int, str]]], None]:
    def register(send: Callable[[str], tuple[int, str]]) -> None:
        CASES.append((name, send, status, words))

    return register


def _grpcio(method: str, body: bytes, **options: Any) -> Callable[[str], tuple[int, str]]:
    def send(socket_path: str) -> tuple[int, str]:
        code, details, _ = grpcio_call(socket_path, method, body, **options)
        return code.value[0], details

    return send


def _raw(path: str, body: bytes, **options: Any) -> Callable[[str], tuple[int, str]]:
    def send(socket_path: str) -> tuple[int, str]:
        answer = raw_call(socket_path, path, body, **options)
        assert answer.grpc_status is not None, answer
        return answer.grpc_status, answer.grpc_message

    return send


case("corrupt protobuf", Status.INVALID_ARGUMENT, "not a valid AllocateRequest message: field #1 at byte 0")(
    _grpcio("Allocate", b"\x0a\x05ab")
)
case("wrong wire type", Status.INVALID_ARGUMENT, "a varint where a message belongs")(
    _grpcio("GetPreferredAllocation", b"\x08\x01")
)
case("oversized", Status.RESOURCE_EXHAUSTED, f"more than the {guard.MAX_REQUEST_BYTES}-byte limit")(
    _grpcio("Allocate", allocate_request("GPU-" + "x" * guard.MAX_REQUEST_BYTES))
)
case("gzip-compressed", Status.UNIMPLEMENTED, "compressed request messages are not supported")(
    _grpcio("Allocate", allocate_request("GPU-" + "x" * 4096), compression=grpc.Compression.Gzip)
)
case(
    "too many containers", Status.INVALID_ARGUMENT, f"more than {MAX_CONTAINER_REQUESTS} container_requests"
)(_grpcio("Allocate", b"\x0a\x00" * (MAX_CONTAINER_REQUESTS + 1)))
case("too many IDs", Status.INVALID_ARGUMENT, f"more than {MAX_DEVICE_IDS} devices_ids")(
    _grpcio("Allocate", allocate_request(*[""] * (MAX_DEVICE_IDS + 1)))
)
case("truncated message", Status.INVALID_ARGUMENT, "ended in the middle of a message")(
    _raw(ALLOCATE, frame(allocate_request("GPU-0"))[:-3])
)
# grpclib's own reader takes this for an empty message.
case("prefix but no body", Status.INVALID_ARGUMENT, "ended in the middle of a message")(
    _raw(ALLOCATE, frame(b"", declared=10))
)
case("truncated prefix", Status.INVALID_ARGUMENT, "ended in the middle of a message")(
    _raw(ALLOCATE, b"\x00\x00")
)
case("bad compressed flag", Status.INVALID_ARGUMENT, "invalid compressed-flag byte 2")(
    _raw(ALLOCATE, frame(allocate_request("GPU-0"), flag=2))
)
case("compressed flag without encoding", Status.UNIMPLEMENTED, "compressed request messages")(
    _raw(ALLOCATE, frame(b"\x1f\x8b", flag=1))
)
case("no message", Status.UNIMPLEMENTED, "no request message")(_raw(SERVICE + "GetDevicePluginOptions", b""))


@pytest.mark.anyio
@pytest.mark.parametrize(("name", "send", "status", "words"), CASES, ids=[c[0] for c in CASES])
async def test_malformed_requests_get_a_clear_status_and_one_warning(
    plugin_socket: str,
    caplog: pytest.LogCaptureFixture,
    name: str,
    send: Callable[[str], tuple[int, str]],
    status: Status,
    words: str,
) -> None:
    caplog.set_level(logging.INFO)
    code, details = await anyio.to_thread.run_sync(send, plugin_socket)
    assert (Status(code), name) == (status, name)
    assert words in details and len(details) < 300
    warnings = our_warnings(caplog)
    assert len(warnings) == 1 and words in warnings[0].getMessage(), warnings
    assert not any(r.exc_info for r in caplog.records), "no traceback"
    # The server still serves.
    code, _, _ = await anyio.to_thread.run_sync(grpcio_call, plugin_socket, "GetDevicePluginOptions", b"")
    assert code == grpc.StatusCode.OK


@pytest.mark.anyio
async def test_wrong_content_type_is_refused_without_a_traceback(
    plugin_socket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    answer = await anyio.to_thread.run_sync(
        lambda: raw_call(
            plugin_socket, ALLOCATE, frame(allocate_request("x")), content_type="application/json"
        )
    )
    # gRPC over HTTP/2: a non-gRPC content-type gets HTTP 415 so no HTTP client takes it for success.
    assert answer.http_status == 415 and answer.grpc_status == Status.UNKNOWN.value
    assert not any(r.exc_info for r in caplog.records)


@pytest.mark.anyio
async def test_an_oversized_body_is_refused_before_it_is_read(plugin_socket: str) -> None:
    # Declares 64 MiB and tries to send it all: flow control stops the sender at one window.
    body = frame(b"\x0a" * (64 << 20))
    answer = await anyio.to_thread.run_sync(raw_call, plugin_socket, ALLOCATE, body)
    assert answer.grpc_status == Status.RESOURCE_EXHAUSTED.value
    assert answer.sent <= 4 * 1024 * 1024 + 65_536, "the server let through more than one flow-control window"


@pytest.mark.anyio
async def test_a_stalled_request_is_given_up(plugin_socket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "REQUEST_READ_TIMEOUT", 0.2)
    # The prefix promises 100 bytes; 10 come, and the stream stays open.
    body = frame(b"\x0a" * 10, declared=100)
    answer = await anyio.to_thread.run_sync(lambda: raw_call(plugin_socket, ALLOCATE, body, end_stream=False))
    assert answer.grpc_status == Status.DEADLINE_EXCEEDED.value
    assert "did not arrive whole within 0.2 s" in answer.grpc_message


@pytest.mark.anyio
async def test_huge_and_many_unknown_ids_get_a_short_answer(plugin_socket: str) -> None:
    huge = allocate_request("GPU-" + "a" * 262_144)
    many = allocate_request(*(f"GPU-{i}" for i in range(10_000)))
    for body, words in ((huge, "1 unknown device ID"), (many, "10000 unknown device IDs")):
        code, details, _ = await anyio.to_thread.run_sync(grpcio_call, plugin_socket, "Allocate", body)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert words in details and len(details) < 300


# --- registration: the kubelet's words are cut short too


class _RefusingKubelet(api.RegistrationBase):
    async def register(self, message: api.RegisterRequest) -> api.Empty:
        raise GRPCError(Status.UNKNOWN, "no " * 10_000)  # under HTTP/2's 64 KiB header limit


@pytest.mark.anyio
async def test_a_long_refusal_from_the_kubelet_is_cut_short(plugin_dir: Path) -> None:
    server = Server([_RefusingKubelet()])
    await server.start(path=str(plugin_dir / "kubelet.sock"))
    try:
        with pytest.raises(RegistrationFailed) as refused:
            await register_once(str(plugin_dir / "kubelet.sock"), "x.sock", GPU_RESOURCE)
    finally:
        server.close()
        await server.wait_closed()
    message = str(refused.value)
    assert message.startswith(f"the kubelet refused {GPU_RESOURCE}: no no no") and len(message) < 400
    assert "(30000 characters)" in message
