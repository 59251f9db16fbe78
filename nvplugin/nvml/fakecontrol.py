"""Fault injection into a running fake-GPU agent from another process.

When the agent runs on the fake backend (`nvplugin run --fake-gpus ...`) it serves a unix
socket; `nvplugin inject-xid` (nvplugin/commands/inject_xid.py) is its client. One JSON object
per line in, one per line out:

    {"op": "inject-xid", "gpu": 0, "xid": 79}                  -> {"ok": true, "delivered": 1}
    {"op": "inject-xid", "gpu": 0, "xid": 94, "gi": 1, "ci": 0}  (a MIG instance)
    {"op": "inject-ecc", "gpu": 0, "double": true}
    {"op": "lose-gpu", "gpu": 1}       {"op": "reset-gpu", "gpu": 0}
    {"op": "wait-error", "kind": "unknown"}
    {"op": "clear"}                    {"op": "status"}
    errors: {"ok": false, "error": "what was wrong and what was expected"}

The socket lives outside the kubelet's device-plugin directory (the kubelet treats every
socket there as a plugin). Default: $NVPLUGIN_FAKE_CONTROL, else $XDG_RUNTIME_DIR/
nvplugin-fake.sock, else /tmp/nvplugin-fake-<uid>.sock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.abc import SocketStream

from nvplugin.nvml.base import EVENT_DOUBLE_BIT_ECC, EVENT_SINGLE_BIT_ECC, NO_INSTANCE
from nvplugin.nvml.fake import ERROR_KINDS, FakeNvml

log = logging.getLogger(__name__)

ENV_CONTROL = "NVPLUGIN_FAKE_CONTROL"
MAX_LINE = 64 * 1024


class ControlError(Exception):
    """The control channel could not be used; the message says what to do."""


def default_control_path(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    if env.get(ENV_CONTROL):
        return env[ENV_CONTROL]
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "nvplugin-fake.sock")
    return f"/tmp/nvplugin-fake-{os.getuid()}.sock"


# --- requests, applied to the fake backend (pure dispatch; the server and tests share it)


def _int(request: Mapping[str, Any], key: str, what: str, optional: bool = False) -> int | None:
    value = request.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key!r}: expected {what} (an integer >= 0), got {value!r}")
    return value


def _instance(request: Mapping[str, Any], key: str, what: str) -> int | None:
    value = _int(request, key, what, optional=True)
    return None if value == NO_INSTANCE else value


def handle_request(fake: FakeNvml, request: object) -> dict[str, Any]:
    """Apply one request; returns the answer (never raises for a bad request)."""
    try:
        return {"ok": True, **_apply(fake, request)}
    except ValueError as exc:
        return {"ok": False, "error": str(exc)}


_OPS = ("inject-xid", "inject-ecc", "lose-gpu", "reset-gpu", "wait-error", "clear", "status")


def _apply(fake: FakeNvml, request: object) -> dict[str, Any]:
    if not isinstance(request, dict):
        raise ValueError(f"expected a JSON object with an 'op', got {type(request).__name__}")
    op = request.get("op")
    if op == "inject-xid":
        gpu = _int(request, "gpu", "a GPU index")
        xid = _int(request, "xid", "an XID number")
        gi = _instance(request, "gi", "a GPU instance id")
        ci = _instance(request, "ci", "a compute instance id")
        if ci is not None and gi is None:
            raise ValueError("'ci' needs 'gi': a compute instance lives in a GPU instance")
        assert gpu is not None and xid is not None
        return {"delivered": fake.inject_xid(gpu, xid, gi, ci)}
    if op == "inject-ecc":
        gpu = _int(request, "gpu", "a GPU index")
        assert gpu is not None
        kind = EVENT_DOUBLE_BIT_ECC if request.get("double", True) else EVENT_SINGLE_BIT_ECC
        return {"delivered": fake.inject_event(gpu, kind, 1)}
    if op == "lose-gpu":
        gpu = _int(request, "gpu", "a GPU index")
        assert gpu is not None
        fake.lose_gpu(gpu)
        return {}
    if op == "reset-gpu":
        gpu = _int(request, "gpu", "a GPU index")
        assert gpu is not None
        fake.reset_gpu(gpu)
        return {}
    if op == "wait-error":
        kind = request.get("kind", "unknown")
        if kind not in ERROR_KINDS:
            raise ValueError(f"'kind': expected one of {', '.join(ERROR_KINDS)}, got {kind!r}")
        return {"delivered": fake.inject_wait_error(str(kind))}
    if op == "clear":
        fake.clear_health_faults()
        return {}
    if op == "status":
        return {"gpus": len(fake.layout.gpus), "stats": fake.event_stats()}
    raise ValueError(f"'op': expected one of {', '.join(_OPS)}, got {op!r}")


# --- the server (a task in the agent's TaskGroup)


def _same_dir(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _remove_stale(path: str) -> None:
    """A socket file left by an agent that died is removed; a live one is an error."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket: choose another --fake-control path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody answers: left over from an agent that is gone
        return
    finally:
        probe.close()
    raise ControlError(f"another agent already serves fake-GPU control on {path}: pass another path")


async def serve_fake_control(
    fake: FakeNvml,
    path: str,
    *,
    forbidden_dir: str | None = None,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control socket until cancelled; the socket file is removed on the way out.
    `forbidden_dir` is the kubelet's device-plugin directory, where the socket must not be."""
    if forbidden_dir is not None and _same_dir(os.path.dirname(path) or ".", forbidden_dir):
        raise ControlError(
            f"{path}: the fake-GPU control socket must not be in the kubelet's device-plugin "
            f"directory {forbidden_dir} (the kubelet would take it for a plugin)"
        )
    _remove_stale(path)
    listener = await anyio.create_unix_listener(path)
    log.info("fake-GPU control socket on %s (nvplugin inject-xid --control %s ...)", path, path)
    try:
        task_status.started(path)
        async with listener:
            await listener.serve(_client_handler(fake))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _client_handler(fake: FakeNvml) -> Callable[[SocketStream], Any]:
    async def handle(stream: SocketStream) -> None:
        async with stream:
            buffer = b""
            try:
                async for chunk in stream:
                    buffer += chunk
                    if len(buffer) > MAX_LINE and b"\n" not in buffer:
                        await stream.send(_line({"ok": False, "error": "request longer than 64 KiB"}))
                        return
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if line.strip():
                            await stream.send(_line(_answer(fake, line)))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                return  # the client went away

    return handle


def _answer(fake: FakeNvml, line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except ValueError as exc:
        return {"ok": False, "error": f"not a JSON object: {exc}"}
    answer = handle_request(fake, request)
    log.info("fake-GPU control: %s -> %s", request, answer)
    return answer


def _line(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


# --- the client (blocking: it is a short-lived command)


def request(path: str, payload: Mapping[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    """Send one request and return the agent's answer. ControlError says what went wrong."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(
                f"no fake-GPU agent is listening on {path}: start one with "
                f"`nvplugin run --fake-gpus N` (it serves this socket), or pass the path it "
                f"serves with --control PATH"
            ) from None
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        sock.sendall(_line(payload))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ControlError(f"the agent on {path} closed the connection without answering")
            data += chunk
    except TimeoutError:
        raise ControlError(f"the agent on {path} did not answer within {timeout_s:g}s") from None
    finally:
        sock.close()
    answer = json.loads(data)
    if not isinstance(answer, dict):
        raise ControlError(f"the agent on {path} answered {answer!r}, not a JSON object")
    return answer
