"""A raw HTTP/2 gRPC client for tests: sends what no gRPC library would (a truncated message,
a bad compressed-flag byte, a wrong content-type, a stalled body) and reports exactly what
the server answered and how much it let through.

Blocking (run it in a worker thread); built on h2's state machine, with its own framing, so it
shares nothing with the grpclib code under test but the HTTP/2 parser's library.
"""

from __future__ import annotations

import socket
import struct
import urllib.parse
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions


def frame(body: bytes, *, flag: int = 0, declared: int | None = None) -> bytes:
    """One gRPC length-prefixed message; `declared` lies about the length."""
    return struct.pack(">BI", flag, len(body) if declared is None else declared) + body


@dataclass
class RawAnswer:
    http_status: int | None = None
    grpc_status: int | None = None
    grpc_message: str = ""
    data: bytes = b""
    reset: bool = False
    # Body bytes the server's flow control let us send before it answered.
    sent: int = 0
    headers: dict[str, str] = field(default_factory=dict)


class RawGrpcClient:
    def __init__(self, socket_path: str, timeout: float = 15.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(socket_path)
        self._conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self._conn.initiate_connection()
        self._flush()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RawGrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data:
            self._sock.sendall(data)

    def call(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str = "application/grpc",
        end_stream: bool = True,
        extra_headers: tuple[tuple[str, str], ...] = (),
    ) -> RawAnswer:
        """POST `body` (raw bytes: frame it with `frame`) to `path`; return the server's answer.
        With end_stream False the request stays open after the body: a stalled client."""
        stream_id = self._conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", content_type),
            ("te", "trailers"),
            *extra_headers,
        ]
        self._conn.send_headers(stream_id, headers, end_stream=end_stream and not body)
        self._flush()
        answer = RawAnswer()
        done = False
        pos = 0
        while pos < len(body) and not done:
            window = min(self._conn.local_flow_control_window(stream_id), self._conn.max_outbound_frame_size)
            if window <= 0:
                done = self._receive(stream_id, answer, until_window=True)
                continue
            chunk = body[pos : pos + window]
            pos += len(chunk)
            last = pos == len(body)
            try:
                self._conn.send_data(stream_id, chunk, end_stream=end_stream and last)
            except h2.exceptions.StreamClosedError:
                break
            answer.sent = pos
            self._flush()
        while not done:
            done = self._receive(stream_id, answer, until_window=False)
        return answer

    def _receive(self, stream_id: int, answer: RawAnswer, *, until_window: bool) -> bool:
        """Read one batch of frames; True once the server has ended or reset the stream."""
        data = self._sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        finished = False
        for event in self._conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                for key, value in event.headers:
                    answer.headers[key] = value
                if ":status" in answer.headers:
                    answer.http_status = int(answer.headers[":status"])
                if "grpc-status" in answer.headers:
                    answer.grpc_status = int(answer.headers["grpc-status"])
                    answer.grpc_message = urllib.parse.unquote(answer.headers.get("grpc-message", ""))
            elif isinstance(event, h2.events.DataReceived):
                answer.data += event.data
                self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                finished = True
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                answer.reset = True
                finished = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                finished = True
        self._flush()
        # While sending, an answer means the server stopped reading: stop too.
        return finished or (until_window and answer.grpc_status is not None)
