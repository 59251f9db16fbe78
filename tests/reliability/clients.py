"""grpcio clients of the plugin's socket, for the reliability tests: blocking, each in its own
thread, so they share nothing with the agent's event loop they measure."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import grpc

SERVICE = "/v1beta1.DevicePlugin/"
# An answer takes about a millisecond; a loop held for seconds (a 256 KB ID once held it
# 7 s) misses it. Generous, so a busy 2-core machine does not make a probe miss.
PROBE_TIMEOUT = 5.0
# Between probes, so that probing does not take the CPU the work under test needs.
PROBE_PACE = 0.02


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str = ""
    response: bytes = b""


def unary(
    channel: grpc.Channel, method: str, body: bytes, timeout: float = 30.0, **options: object
) -> Outcome:
    call = channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
    try:
        return Outcome(grpc.StatusCode.OK, response=call(body, timeout=timeout, **options))
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "")


@dataclass
class Probe:
    """Asks GetDevicePluginOptions again and again (each within PROBE_TIMEOUT) and holds a
    ListAndWatch stream open, until stopped: counts what answered and what did not."""

    socket_path: str
    answers: int = 0
    misses: list[str] = field(default_factory=list)
    slowest: float = 0.0
    listed: int = 0  # ListAndWatch messages received
    stream_error: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    _stream: grpc.Future | None = None

    def ask(self) -> None:
        with grpc.insecure_channel(f"unix://{self.socket_path}") as channel:
            while not self.stop.is_set():
                started = time.monotonic()
                outcome = unary(channel, "GetDevicePluginOptions", b"", timeout=PROBE_TIMEOUT)
                if outcome.code == grpc.StatusCode.OK:
                    self.answers += 1
                    self.slowest = max(self.slowest, time.monotonic() - started)
                else:
                    self.misses.append(f"{outcome.code.name}: {outcome.details}")
                self.stop.wait(PROBE_PACE)

    def watch(self) -> None:
        with grpc.insecure_channel(f"unix://{self.socket_path}") as channel:
            self._stream = channel.unary_stream(
                SERVICE + "ListAndWatch", request_serializer=None, response_deserializer=None
            )(b"")
            if self.stop.is_set():  # ended before the stream existed for end() to cancel
                self._stream.cancel()
            try:
                for _ in self._stream:
                    self.listed += 1
            except grpc.RpcError as exc:
                if not self.stop.is_set() or exc.code() != grpc.StatusCode.CANCELLED:
                    self.stream_error = f"{exc.code().name}: {exc.details()}"
            else:
                self.stream_error = "the stream ended"

    def end(self) -> None:
        self.stop.set()
        if self._stream is not None:
            self._stream.cancel()
