"""Side by side: device plugins as separate processes under one independent kubelet stand-in.

    python3 benchmarks/bench_sidebyside.py \\
        --plugin nvidia=.sidebyside/bin/nvidia-device-plugin \\
        --plugin nvplugin="python3 -m nvplugin run --metrics-address off" \\
        --plugin bare="python3 benchmarks/bare_plugin.py --devices 1" \\
        --oneshot gfd=".sidebyside/bin/gpu-feature-discovery --oneshot --no-timestamp \\
                       --use-node-feature-api=false --output-file {output}" \\
        --oneshot nvplugin="python3 -m nvplugin labels --no-timestamp --output-file {output}" \\
        --dir /var/lib/kubelet/device-plugins --json results.json

The kubelet stand-in is grpcio (gRPC C-core) with a few lines of protobuf wire code: nothing of
nvplugin's own gRPC stack (grpclib, betterproto2) is used to measure it. It serves Registration
on DIR/kubelet.sock, records when each Register arrives, dials the plugin back inside the
Register call and asks for its options (as the kubelet does), follows ListAndWatch, and drives
Allocate and GetPreferredAllocation over that same connection, one call in flight.

A plugin is a command line (NAME=COMMAND; leading VAR=value words set its environment). It
gets `--kubelet-socket DIR/kubelet.sock` appended unless the command says where with
{kubelet_socket}; {dir} is DIR; {kubeconfig} starts a test Kubernetes API server (one, for the
whole run) and is the path of its kubeconfig, NODE_NAME being set for the plugins.
NVIDIA's plugin always serves on /var/lib/kubelet/device-plugins/nvidia-<resource>.sock,
whatever its --kubelet-socket, so a comparison with it needs --dir /var/lib/kubelet/device-plugins
(the stand-in deletes every socket there, as a kubelet does: never point it at a live kubelet's).

Measured for each plugin, plugins alternating run by run (the order rotates), N runs each after
one unmeasured warm-up start (median and spread of the per-run figures):
- start -> Register: process spawn to the Register call arriving; start -> first ListAndWatch
  response;
- Allocate and GetPreferredAllocation p50/p99 over K sequential calls after a warm-up;
- re-registration after a kubelet restart (every socket in DIR deleted, kubelet.sock re-created):
  p50 of R restarts, from kubelet.sock's creation to the new Register arriving;
- peak RSS (VmHWM) after all that; SIGTERM -> exit (and: socket removed, ListAndWatch ended).
Then every plugin at once under one stand-in: CPU clock ticks (utime + stime) over an idle
window, and over the same window after a burst of kubelet restarts. Labels one-shots: wall time
and peak RSS (the child's rusage) of each --oneshot command, N times, and the label sets' diff.

Prints a table (each figure, its ratio to the reference plugin and to the floor, the targets
with pass/fail) and writes every raw sample as JSON (--json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import percentile, time_calls

KUBELET_SOCKET = "kubelet.sock"
CHECKPOINT = "kubelet_internal_checkpoint"
NODE_NAME = "sidebyside-node"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOG_TAIL = 300  # characters of each of a log's last two lines, in failure rows
STREAM_OPEN = "still open 1 s after the exit"

# A kubelet's client options, except the reconnect backoff: grpc's 1 s initial backoff would
# otherwise dominate a dial made before the plugin listens. Local subchannels: no sharing of
# connections between the stand-in's channels.
CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 5),
    ("grpc.min_reconnect_backoff_ms", 5),
    ("grpc.max_reconnect_backoff_ms", 50),
]


# --- protobuf wire format: the few v1beta1 messages the stand-in reads and writes


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if not n:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _field(number: int, value: bytes | str | int) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def parse_message(data: bytes) -> dict[int, list[Any]]:
    """Field number -> values: ints for varints, bytes for everything else."""
    fields: dict[int, list[Any]] = {}
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        wire: Any
        if key & 7 == 0:
            wire, i = _read_varint(data, i)
        elif key & 7 == 2:
            length, i = _read_varint(data, i)
            wire, i = data[i : i + length], i + length
        elif key & 7 in (1, 5):
            size = 8 if key & 7 == 1 else 4
            wire, i = data[i : i + size], i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {key & 7} (field {key >> 3})")
        fields.setdefault(key >> 3, []).append(wire)
    return fields


def _text(fields: dict[int, list[Any]], number: int) -> str:
    values = fields.get(number)
    return values[-1].decode() if values else ""


def allocate_request(device_ids: Sequence[str]) -> bytes:
    container = b"".join(_field(1, d) for d in device_ids)
    return _field(1, container)


def preferred_request(available: Sequence[str], size: int) -> bytes:
    container = b"".join(_field(1, d) for d in available) + _field(3, size)
    return _field(1, container)


def list_devices(message: bytes) -> list[tuple[str, str]]:
    """ListAndWatchResponse -> [(device ID, health)]."""
    devices = []
    for raw in parse_message(message).get(1, []):
        device = parse_message(raw)
        devices.append((_text(device, 1), _text(device, 2)))
    return devices


def container_responses(message: bytes) -> list[dict[int, list[Any]]]:
    return [parse_message(raw) for raw in parse_message(message).get(1, [])]


# --- the kubelet stand-in


@dataclass
class Connection:
    """The stand-in's connection to one registered plugin (one channel, as the kubelet's)."""

    channel: grpc.Channel
    connected_at: float  # when the dial-back and GetDevicePluginOptions were done
    stream: Any = None  # the ListAndWatch call
    lists: list[tuple[float, list[tuple[str, str]]]] = field(default_factory=list)
    ended_at: float | None = None
    end: str | None = None  # how ListAndWatch ended: OK or a status code (and details)

    def unary(self, method: str) -> Any:
        return self.channel.unary_unary(f"/v1beta1.DevicePlugin/{method}")


@dataclass
class Registration:
    at: float  # time.perf_counter() when the Register call arrived
    version: str
    endpoint: str
    resource: str
    generation: int  # which kubelet "process" (server) it arrived at
    error: str | None = None
    pid: int | None = None  # the process serving the endpoint (attributed registrations only)
    connection: Connection | None = None


class KubeletStandIn:
    """The kubelet's side of the device-plugin API, in grpcio, on real unix sockets."""

    def __init__(self, directory: Path, dial_timeout: float = 10.0, attribute: bool = False) -> None:
        self.directory = directory
        self.socket_path = directory / KUBELET_SOCKET
        self.dial_timeout = dial_timeout
        self.attribute = attribute
        self.registrations: list[Registration] = []
        self.changed = threading.Condition()
        self._server: grpc.Server | None = None
        self._connections: list[Connection] = []
        # One per kubelet "process" (server); the one serving, or None while stopped. A Register
        # handled across a restart is refused, as the dying kubelet's would be.
        self.generation = 0
        self._serving: int | None = None

    def start(self) -> float:
        """Start as a kubelet does: delete every socket in the directory, then serve kubelet.sock.
        Returns when kubelet.sock was created (time.perf_counter())."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for entry in self.directory.iterdir():
            if entry.name != CHECKPOINT and entry.is_socket():
                entry.unlink(missing_ok=True)
        self.generation += 1
        generation = self.generation
        server = grpc.server(ThreadPoolExecutor(max_workers=8, thread_name_prefix="kubelet"))
        handler = grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._register(generation, request, context)
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("v1beta1.Registration", {"Register": handler}),)
        )
        created = time.perf_counter()
        if not server.add_insecure_port(f"unix:{self.socket_path}"):
            raise RuntimeError(f"cannot serve on {self.socket_path}")
        server.start()
        self._server = server
        with self.changed:
            self._serving = generation
        return created

    def stop(self) -> None:
        """Go away as a dying kubelet does: every plugin connection dropped, kubelet.sock gone."""
        with self.changed:
            connections, self._connections = self._connections, []
            self._serving = None
        for connection in connections:
            connection.stream.cancel()
            connection.channel.close()
        if self._server is not None:
            self._server.stop(None).wait()
            self._server = None
        self.socket_path.unlink(missing_ok=True)

    def restart(self) -> float:
        self.stop()
        return self.start()

    def _register(self, generation: int, request: bytes, context: grpc.ServicerContext) -> bytes:
        arrived = time.perf_counter()
        fields = parse_message(request)
        registration = Registration(
            arrived,
            version=_text(fields, 1),
            endpoint=_text(fields, 2),
            resource=_text(fields, 3),
            generation=generation,
        )
        with self.changed:
            self.registrations.append(registration)
            self.changed.notify_all()
        try:
            registration.connection = self._connect(registration, generation)
        except (ValueError, grpc.RpcError, grpc.FutureTimeoutError) as exc:
            registration.error = str(exc) or type(exc).__name__
            with self.changed:
                self.changed.notify_all()
            context.abort(grpc.StatusCode.UNKNOWN, registration.error)
        return b""

    def _connect(self, registration: Registration, generation: int) -> Connection:
        if registration.version != "v1beta1":
            raise ValueError(f"unsupported API version {registration.version!r}")
        if not registration.endpoint or "/" in registration.endpoint:
            raise ValueError(f"invalid endpoint {registration.endpoint!r}: expected a file name")
        path = self.directory / registration.endpoint
        channel = grpc.insecure_channel(f"unix:{path}", options=CHANNEL_OPTIONS)
        try:
            grpc.channel_ready_future(channel).result(timeout=self.dial_timeout)
        except grpc.FutureTimeoutError:
            channel.close()
            raise ValueError(
                f"failed to dial device plugin at {path} within {self.dial_timeout:g} s"
                + ("" if path.exists() else ": no such socket")
            ) from None
        channel.unary_unary("/v1beta1.DevicePlugin/GetDevicePluginOptions")(b"", timeout=self.dial_timeout)
        connection = Connection(channel, connected_at=time.perf_counter())
        connection.stream = channel.unary_stream("/v1beta1.DevicePlugin/ListAndWatch")(b"")
        with self.changed:
            if generation != self._serving:
                connection.stream.cancel()
                channel.close()
                raise ValueError("the kubelet restarted while this Register was handled")
            self._connections.append(connection)
        threading.Thread(target=self._follow, args=(connection,), daemon=True).start()
        if self.attribute:
            registration.pid = socket_owner(path)
        return connection

    def _follow(self, connection: Connection) -> None:
        try:
            for message in connection.stream:
                arrived = time.perf_counter()
                with self.changed:
                    connection.lists.append((arrived, list_devices(message)))
                    self.changed.notify_all()
            end = "OK"
        except grpc.RpcError as exc:
            end = f"{exc.code().name}: {exc.details()}"
        with self.changed:
            connection.ended_at, connection.end = time.perf_counter(), end
            self.changed.notify_all()

    def wait(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """predicate()'s first truthy value, or None after timeout. Checked at least every 20 ms,
        so predicates may also look at processes."""
        deadline = time.perf_counter() + timeout
        with self.changed:
            while True:
                value = predicate()
                left = deadline - time.perf_counter()
                if value or left <= 0:
                    return value
                self.changed.wait(min(left, 0.02))


def socket_owner(path: Path) -> int | None:
    """The pid that listens on a unix socket (its peer credentials)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            s.connect(str(path))
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def refuse_live_kubelet(directory: Path) -> None:
    kubelet = directory / KUBELET_SOCKET
    if kubelet.is_socket() and socket_owner(kubelet) is not None:
        raise SystemExit(
            f"{kubelet} is served by a live process (pid {socket_owner(kubelet)}): the stand-in deletes "
            "every socket in its directory, as a kubelet does; use a directory no kubelet serves"
        )


# --- plugin processes


@dataclass(frozen=True)
class Command:
    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> Command:
        name, sep, line = text.partition("=")
        if not sep or not name or not line.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=COMMAND, got {text!r}")
        words = shlex.split(line)
        env = []
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            key, _, value = words.pop(0).partition("=")
            env.append((key, value))
        if not words:
            raise argparse.ArgumentTypeError(f"{name}: no command after the environment in {line!r}")
        return cls(name, tuple(words), tuple(env))

    def render(self, **values: str) -> list[str]:
        argv = []
        for word in self.argv:
            for key, value in values.items():
                word = word.replace("{" + key + "}", value)
            argv.append(word)
        return argv

    def mentions(self, placeholder: str) -> bool:
        text = "{" + placeholder + "}"
        return any(text in word for word in self.argv) or any(text in v for _, v in self.env)


@dataclass
class Context:
    args: argparse.Namespace
    directory: Path
    logs: Path
    kubeconfig: str = ""

    def plugin_argv_env(self, command: Command) -> tuple[list[str], dict[str, str]]:
        values = {
            "kubelet_socket": str(self.directory / KUBELET_SOCKET),
            "dir": str(self.directory),
            "kubeconfig": self.kubeconfig,
        }
        argv = command.render(**values)
        if not command.mentions("kubelet_socket"):
            argv += ["--kubelet-socket", values["kubelet_socket"]]
        env = dict(os.environ)
        if self.kubeconfig:
            env["NODE_NAME"] = NODE_NAME
        for key, value in command.env:
            for name, text in values.items():
                value = value.replace("{" + name + "}", text)
            env[key] = value
        return argv, env


class RunFailed(Exception):
    pass


class Process:
    """A spawned plugin; its output goes to a log file (a pipe nobody reads could block it)."""

    live: set[Process] = set()

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.spawned = time.perf_counter()
            self.popen = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.pid = self.popen.pid
        self.exited_at: float | None = None
        self.exit_code: int | None = None
        self.max_rss_kib = 0
        self._reaped = threading.Event()
        threading.Thread(target=self._reap, daemon=True).start()
        Process.live.add(self)

    def _reap(self) -> None:
        # A blocking wait4 in its own thread: the exit time is exact (Popen.wait polls) and the
        # child's rusage gives its peak RSS.
        _, status, usage = os.wait4(self.pid, 0)
        self.exited_at = time.perf_counter()
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.max_rss_kib = usage.ru_maxrss
        self.popen.returncode = self.exit_code
        Process.live.discard(self)
        self._reaped.set()

    @property
    def running(self) -> bool:
        return not self._reaped.is_set()

    def wait(self, timeout: float) -> bool:
        return self._reaped.wait(timeout)

    def signal(self, signum: int) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self, timeout: float) -> str:
        """SIGTERM, then SIGKILL after timeout; says what happened."""
        sent = time.perf_counter()
        self.signal(signal.SIGTERM)
        if self.wait(timeout):
            assert self.exited_at is not None
            return f"exited with code {self.exit_code} {(self.exited_at - sent) * 1000:.1f} ms after SIGTERM"
        self.signal(signal.SIGKILL)
        self.wait(5)
        return f"did not exit within {timeout:g} s of SIGTERM: killed"

    def status_kib(self, key: str) -> int:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            self.wait(1)
            raise RunFailed(f"exited with code {self.exit_code}: {self.tail()}") from None
        for line in status.splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def cpu_ticks(self) -> int:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    def tail(self) -> str:
        """The output's last lines, briefly (the whole of it stays in the log file)."""
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line[:LOG_TAIL] for line in lines[-2:]) + f" (log: {self.log.name})"


def descends_from(pid: int | None, ancestor: int) -> bool:
    while pid is not None and pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def first_list(standin: KubeletStandIn, registration: Registration, proc: Process, timeout: float) -> float:
    """Wait for the registration's first ListAndWatch response; returns when it arrived."""

    def listed() -> Any:
        c = registration.connection
        return (c is not None and c.lists) or registration.error or not proc.running

    standin.wait(listed, timeout)
    if registration.error:
        raise RunFailed(f"the stand-in refused Register: {registration.error}")
    connection = registration.connection
    if connection is None or not connection.lists:
        why = "the plugin exited" if not proc.running else f"none within {timeout:g} s"
        raise RunFailed(f"no ListAndWatch response after Register ({why})")
    return connection.lists[0][0]


def current(standin: KubeletStandIn) -> list[Registration]:
    """The registrations that arrived at the kubelet now serving."""
    return [r for r in standin.registrations if r.generation == standin.generation]


def await_register(standin: KubeletStandIn, proc: Process, timeout: float) -> Registration:
    """The first Register at the kubelet now serving; raises RunFailed when none comes."""
    found = standin.wait(lambda: current(standin) or not proc.running, timeout)
    if isinstance(found, list):
        registration: Registration = found[0]
        return registration
    if not proc.running:
        raise RunFailed(f"exited with code {proc.exit_code} before Register: {proc.tail()}")
    raise RunFailed(f"no Register within {timeout:g} s")


def measure_run(ctx: Context, command: Command, label: str) -> dict[str, Any]:
    """One start-to-exit run of one plugin: every per-run figure, raw samples included."""
    args = ctx.args
    standin = KubeletStandIn(ctx.directory, dial_timeout=args.dial_timeout)
    standin.start()
    argv, env = ctx.plugin_argv_env(command)
    proc = Process(argv, env, ctx.logs / f"{command.name}-{label}.log")
    run: dict[str, Any] = {"label": label}
    try:
        registration = await_register(standin, proc, args.register_timeout)
        run["start_register_ms"] = (registration.at - proc.spawned) * 1000
        run["pid"], run["endpoint"] = proc.pid, registration.endpoint
        listed = first_list(standin, registration, proc, args.register_timeout)
        run["first_list_ms"] = (listed - proc.spawned) * 1000
        connection = registration.connection
        assert connection is not None
        # The stand-in's own share of start -> first ListAndWatch: dialing back, asking for options.
        run["dial_back_ms"] = (connection.connected_at - registration.at) * 1000
        if label == "warmup":
            return run
        healthy = [d for d, health in connection.lists[0][1] if health == "Healthy"]
        run["devices"] = len(healthy)
        if not healthy:
            raise RunFailed(f"advertised no healthy device: {connection.lists[0][1]}")
        measure_calls(run, connection, healthy, args)
        run["reregister_ms"] = []
        for _ in range(args.restarts):
            created = standin.restart()
            registration = await_register(standin, proc, args.register_timeout)
            run["reregister_ms"].append((registration.at - created) * 1000)
            first_list(standin, registration, proc, args.register_timeout)
        run["peak_rss_mib"] = proc.status_kib("VmHWM") / 1024
        measure_sigterm(run, standin, registration, proc, ctx.directory, args.exit_timeout)
    except RunFailed as exc:
        run["error"] = str(exc)
    finally:
        if proc.running:
            run["terminated"] = proc.terminate(args.exit_timeout)
        standin.stop()
    return run


def measure_calls(
    run: dict[str, Any], connection: Connection, healthy: list[str], args: argparse.Namespace
) -> None:
    """Each RPC checked once, then timed. GetDevicePluginOptions does no work: it is the floor
    of what the transport and this client cost, for every plugin alike."""
    size = min(args.preferred_size, len(healthy))
    calls = {
        "options": ("GetDevicePluginOptions", b""),
        "allocate": ("Allocate", allocate_request(healthy[:1])),
        "preferred": ("GetPreferredAllocation", preferred_request(healthy, size)),
    }
    for name, (method, request) in calls.items():
        call = connection.unary(method)
        try:
            answer = call(request, timeout=5)
        except grpc.RpcError as exc:
            raise RunFailed(f"{method} failed: {exc.code().name}: {exc.details()}") from None
        if name != "options":
            containers = container_responses(answer)
            if len(containers) != 1:
                raise RunFailed(f"{method} answered {len(containers)} container responses to one request")
            if name == "preferred" and len(containers[0].get(1, [])) != size:
                raise RunFailed(f"{method} chose {containers[0].get(1, [])} for allocation_size {size}")
        milliseconds = time_calls(call, request, calls=args.calls, warmup=args.warmup, timeout=5)
        run[f"{name}_us"] = [round(ms * 1000, 2) for ms in milliseconds]


def measure_sigterm(
    run: dict[str, Any],
    standin: KubeletStandIn,
    registration: Registration,
    proc: Process,
    directory: Path,
    timeout: float,
) -> None:
    connection = registration.connection
    assert connection is not None
    socket_path = directory / registration.endpoint
    sent = time.perf_counter()
    proc.signal(signal.SIGTERM)
    if not proc.wait(timeout):
        raise RunFailed(f"did not exit within {timeout:g} s of SIGTERM")
    assert proc.exited_at is not None
    run["sigterm_exit_ms"] = (proc.exited_at - sent) * 1000
    run["exit_code"] = proc.exit_code
    run["socket_removed"] = not socket_path.exists()
    standin.wait(lambda: connection.ended_at is not None, 1.0)
    run["stream_end"] = connection.end or STREAM_OPEN


# --- every plugin at once: idle CPU, CPU after a burst of kubelet restarts


def idle_groups(commands: Sequence[Command]) -> list[list[Command]]:
    """Plugins that can serve one kubelet together: two variants of nvplugin cannot (the second
    refuses to start beside a live first), so each further one gets a round of its own."""
    first: list[Command] = []
    rest: list[list[Command]] = []
    for command in commands:
        is_nvplugin = "nvplugin" in " ".join(command.argv) and " run" in " ".join(command.argv)
        if is_nvplugin and any("nvplugin" in " ".join(c.argv) and " run" in " ".join(c.argv) for c in first):
            rest.append([command])
        else:
            first.append(command)
    return [first, *rest]


def measure_idle(ctx: Context, commands: Sequence[Command]) -> dict[str, dict[str, Any]]:
    args = ctx.args
    standin = KubeletStandIn(ctx.directory, dial_timeout=args.dial_timeout, attribute=True)
    standin.start()
    procs: dict[str, Process] = {}
    out: dict[str, dict[str, Any]] = {c.name: {} for c in commands}

    def drop_failed(failed: dict[str, str], when: str) -> None:
        for name, why in failed.items():
            out[name].setdefault("error", f"{why} ({when})")
            procs.pop(name).terminate(args.exit_timeout)

    try:
        for command in commands:
            argv, env = ctx.plugin_argv_env(command)
            procs[command.name] = Process(argv, env, ctx.logs / f"{command.name}-idle.log")
        drop_failed(wait_all_registered(standin, procs, args.register_timeout), "starting")
        time.sleep(args.settle)
        for name, ticks in count_ticks(procs, args.idle).items():
            out[name]["idle_ticks"], out[name]["idle_window_s"] = ticks
        drop_failed(exited(procs), "idle")
        for name in procs:
            out[name]["burst_reregistered"] = 0
        for restart in range(args.burst):
            standin.restart()
            failed = wait_all_registered(standin, procs, args.register_timeout)
            for name in procs:
                out[name]["burst_reregistered"] += name not in failed
            drop_failed(exited(procs), f"kubelet restart {restart + 1}")
        for name, ticks in count_ticks(procs, args.idle).items():
            out[name].update(burst_ticks=ticks[0], burst_window_s=ticks[1], burst_restarts=args.burst)
            with contextlib.suppress(RunFailed):  # exited: reported below
                out[name]["peak_rss_mib"] = procs[name].status_kib("VmHWM") / 1024
        drop_failed(exited(procs), "after the restarts")
    finally:
        for name, proc in procs.items():
            if proc.running:
                out[name]["terminated"] = proc.terminate(args.exit_timeout)
        standin.stop()
    return out


def exited(procs: dict[str, Process]) -> dict[str, str]:
    return {name: f"exited with code {p.exit_code}: {p.tail()}" for name, p in procs.items() if not p.running}


def wait_all_registered(standin: KubeletStandIn, procs: dict[str, Process], timeout: float) -> dict[str, str]:
    """Wait until every process has registered with the kubelet now serving and been listed;
    returns those that did not, with why."""

    def pending() -> dict[str, Process]:
        done = {
            name
            for name, proc in procs.items()
            for r in current(standin)
            if r.connection is not None and r.connection.lists and descends_from(r.pid, proc.pid)
        }
        return {name: proc for name, proc in procs.items() if name not in done and proc.running}

    standin.wait(lambda: not pending(), timeout)
    failed = exited(procs)
    failed.update({name: f"not registered and listed within {timeout:g} s" for name in pending()})
    return failed


def count_ticks(procs: dict[str, Process], seconds: float) -> dict[str, tuple[int, float]]:
    """CPU clock ticks each process spent over `seconds` (those that exited meanwhile left out)."""

    def ticks() -> dict[str, int]:
        counts = {}
        for name, proc in procs.items():
            with contextlib.suppress(OSError):  # exited: /proc/<pid> is gone
                counts[name] = proc.cpu_ticks()
        return counts

    before = ticks()
    started = time.perf_counter()
    time.sleep(seconds)
    window = time.perf_counter() - started
    after = ticks()
    return {name: (after[name] - before[name], window) for name in before.keys() & after.keys()}


# --- labels one-shots


def measure_oneshot(ctx: Context, command: Command, label: str) -> dict[str, Any]:
    output = ctx.logs / f"{command.name}-{label}.labels"
    output.unlink(missing_ok=True)
    argv = command.render(output=str(output))
    env = dict(os.environ) | dict(command.env)
    proc = Process(argv, env, ctx.logs / f"{command.name}-{label}.oneshot.log")
    if not proc.wait(ctx.args.oneshot_timeout):
        proc.terminate(1)
        return {"label": label, "error": f"did not finish within {ctx.args.oneshot_timeout:g} s"}
    assert proc.exited_at is not None
    result: dict[str, Any] = {
        "label": label,
        "seconds": proc.exited_at - proc.spawned,
        "peak_rss_mib": proc.max_rss_kib / 1024,
        "exit_code": proc.exit_code,
    }
    if proc.exit_code != 0:
        result["error"] = f"exited with code {proc.exit_code}: {proc.tail()}"
    elif not output.exists():
        result["error"] = f"wrote no {output}: is {{output}} in its command?"
    else:
        result["labels"] = read_labels(output)
    return result


def read_labels(path: Path) -> dict[str, str]:
    labels = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep:
            labels[key] = value
    return labels


def label_diff(reference: dict[str, str], other: dict[str, str]) -> dict[str, Any]:
    return {
        "only_reference": {k: reference[k] for k in sorted(reference.keys() - other.keys())},
        "only_other": {k: other[k] for k in sorted(other.keys() - reference.keys())},
        "differ": {
            k: [reference[k], other[k]]
            for k in sorted(reference.keys() & other.keys())
            if reference[k] != other[k]
        },
    }


# --- the test API server, for plugins run with labels on


def serve_apiserver(kubeconfig: str) -> None:
    """Run until SIGTERM: a test Kubernetes API server with one node, its kubeconfig written."""
    import asyncio

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from nvplugin.testing.apiserver import FakeApiServer

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with FakeApiServer() as api:
            api.add_node(NODE_NAME)
            written = api.write_kubeconfig(Path(kubeconfig + ".tmp"))
            os.replace(written, kubeconfig)
            await stop.wait()

    asyncio.run(serve())


def start_apiserver(ctx: Context) -> Process:
    ctx.kubeconfig = str(ctx.logs / "kubeconfig")
    proc = Process(
        [sys.executable, __file__, "--serve-apiserver", ctx.kubeconfig],
        dict(os.environ),
        ctx.logs / "apiserver.log",
    )
    deadline = time.perf_counter() + 30
    while not Path(ctx.kubeconfig).exists():
        if not proc.running or time.perf_counter() > deadline:
            proc.terminate(5)
            raise SystemExit(f"the test API server did not start: {proc.tail()}")
        time.sleep(0.05)
    return proc


# --- summary, targets, table

# (key, what, unit): the per-plugin figures, in table order.
FIGURES = (
    ("start_register_ms", "start -> Register", "ms"),
    ("first_list_ms", "start -> first ListAndWatch", "ms"),
    ("dial_back_ms", "  of it: stand-in dial-back + options", "ms"),
    ("options_p50_us", "GetDevicePluginOptions p50 (no work)", "us"),
    ("options_p99_us", "GetDevicePluginOptions p99 (no work)", "us"),
    ("allocate_p50_us", "Allocate p50", "us"),
    ("allocate_p99_us", "Allocate p99", "us"),
    ("preferred_p50_us", "GetPreferredAllocation p50", "us"),
    ("preferred_p99_us", "GetPreferredAllocation p99", "us"),
    ("reregister_p50_ms", "re-register after kubelet restart p50", "ms"),
    ("sigterm_exit_ms", "SIGTERM -> exit", "ms"),
    ("clean_exits", "stream ended + socket gone at exit", "%"),
    ("peak_rss_mib", "peak RSS (VmHWM)", "MiB"),
    ("idle_ticks_30s", "CPU ticks idle, per 30 s", "ticks"),
    ("burst_ticks_30s", "CPU ticks after restarts, per 30 s", "ticks"),
)
ONESHOT_FIGURES = (
    ("oneshot_s", "labels one-shot", "s"),
    ("oneshot_rss_mib", "labels one-shot peak RSS", "MiB"),
)


@dataclass(frozen=True)
class Target:
    text: str
    figure: str
    limit: float
    of_reference: bool = False  # limit is a ratio to the reference plugin's figure
    subject: str = "plugin"  # plugin, labels (the subject run with labels on) or oneshot
    at_least: bool = False


TARGETS = (
    Target("start -> Register <= 3x NVIDIA", "start_register_ms", 3.0, of_reference=True),
    Target("Allocate p50 <= 2.5x NVIDIA", "allocate_p50_us", 2.5, of_reference=True),
    Target("Allocate p99 <= 1.5x NVIDIA", "allocate_p99_us", 1.5, of_reference=True),
    Target("GetPreferredAllocation p99 <= 1.5x NVIDIA", "preferred_p99_us", 1.5, of_reference=True),
    Target("re-register p50 <= NVIDIA's (no regression)", "reregister_p50_ms", 1.0, of_reference=True),
    Target("SIGTERM -> exit <= 50 ms", "sigterm_exit_ms", 50.0),
    Target("every exit: stream ended, socket removed", "clean_exits", 1.0, at_least=True),
    Target("peak RSS <= 45 MiB (labels off)", "peak_rss_mib", 45.0),
    Target("peak RSS <= 90 MiB (labels on)", "peak_rss_mib", 90.0, subject="labels"),
    Target("idle CPU <= 2 ticks / 30 s (no regression)", "idle_ticks_30s", 2.0),
    Target("CPU after restarts <= 2 ticks / 30 s", "burst_ticks_30s", 2.0),
    Target("labels one-shot <= 0.15 s", "oneshot_s", 0.15, subject="oneshot"),
)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize_plugin(runs: list[dict[str, Any]], idle: dict[str, Any]) -> dict[str, dict[str, float]]:
    good = [r for r in runs if "error" not in r and r["label"] != "warmup"]
    per_run: dict[str, list[float]] = {k: [] for k, _, _ in FIGURES}
    for r in good:
        per_run["start_register_ms"].append(r["start_register_ms"])
        per_run["first_list_ms"].append(r["first_list_ms"])
        per_run["dial_back_ms"].append(r["dial_back_ms"])
        for name in ("options", "allocate", "preferred"):
            per_run[f"{name}_p50_us"].append(percentile(r[f"{name}_us"], 50))
            per_run[f"{name}_p99_us"].append(percentile(r[f"{name}_us"], 99))
        if r["reregister_ms"]:
            per_run["reregister_p50_ms"].append(percentile(r["reregister_ms"], 50))
        per_run["sigterm_exit_ms"].append(r["sigterm_exit_ms"])
        per_run["peak_rss_mib"].append(r["peak_rss_mib"])
    summary = {k: spread(v) for k, v in per_run.items() if v}
    if good:
        clean = [r["socket_removed"] and r["stream_end"] != STREAM_OPEN for r in good]
        share = sum(clean) / len(clean)
        summary["clean_exits"] = {"median": share, "min": share, "max": share, "n": 1, "runs": len(clean)}
    for kind in ("idle", "burst"):
        if f"{kind}_ticks" in idle:
            per_30s = idle[f"{kind}_ticks"] * 30 / idle[f"{kind}_window_s"]
            summary[f"{kind}_ticks_30s"] = spread([per_30s])
    return summary


def summarize_oneshot(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    good = [r for r in results if "error" not in r]
    if not good:
        return {}
    return {
        "oneshot_s": spread([r["seconds"] for r in good]),
        "oneshot_rss_mib": spread([r["peak_rss_mib"] for r in good]),
    }


def evaluate(
    target: Target, subject: dict[str, dict[str, float]] | None, reference: dict[str, dict[str, float]] | None
) -> dict[str, Any]:
    value = (subject or {}).get(target.figure, {}).get("median")
    limit: float | None = target.limit
    if target.of_reference:
        base = (reference or {}).get(target.figure, {}).get("median")
        limit = None if base is None else base * target.limit
    result: dict[str, Any] = {"target": target.text, "figure": target.figure, "value": value, "limit": limit}
    if value is None or limit is None:
        result["result"] = "n/a (" + ("no reference figure" if value is not None else "not measured") + ")"
    else:
        passed = value >= limit if target.at_least else value <= limit
        result["result"] = "PASS" if passed else "FAIL"
    return result


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("us", "ticks"):
        return f"{value:.0f}" if unit == "us" else f"{value:.1f}"
    if unit == "s":
        return f"{value:.3f}"
    if unit == "%":
        return f"{value:.0%}"
    return f"{value:.1f}"


def ratio(a: float | None, b: float | None, unit: str) -> str:
    if a is None or b is None or b == 0 or unit == "%":
        return "-"
    return f"{a / b:.2f}x"


def print_table(results: dict[str, Any], args: argparse.Namespace) -> None:
    ref, floor = args.reference, args.floor
    print(
        f"\n{'figure':44} {'plugin':16} {'median':>9} {'[min .. max]':>21} {'/' + ref:>10} {'/' + floor:>10}"
    )
    groups = [
        (FIGURES, results["summary"], ref, floor),
        (ONESHOT_FIGURES, results["oneshot_summary"], args.oneshot_reference, ""),
    ]
    for figures, table, reference, base in groups:
        for key, what, unit in figures:
            title = f"{what} ({unit})"
            for name, figures_of in table.items():
                figure = figures_of.get(key)
                if figure is None:
                    continue
                median = figure["median"]
                low_high = (
                    f"[{fmt(figure['min'], unit)} .. {fmt(figure['max'], unit)}]" if figure["n"] > 1 else ""
                )
                to_ref = ratio(median, table.get(reference, {}).get(key, {}).get("median"), unit)
                to_floor = ratio(median, table.get(base, {}).get(key, {}).get("median"), unit) if base else ""
                print(
                    f"{title:44} {name:16} {fmt(median, unit):>9} {low_high:>21} {to_ref:>10} {to_floor:>10}"
                )
                title = ""
    ends = {
        name: dict(Counter(r["stream_end"].split(":")[0] for r in runs if "stream_end" in r))
        for name, runs in results["runs"].items()
    }
    print("\nListAndWatch at SIGTERM ended with: " + "; ".join(f"{n} {c}" for n, c in ends.items() if c))
    for name, why in results["failures"].items():
        print(f"FAILED {name}: {why}")
    units = {k: u for k, _, u in FIGURES + ONESHOT_FIGURES}
    rows = [(f"{t['subject']}: {t['target']}", t) for t in results["targets"]]
    width = max([len(text) for text, _ in rows] + [6])
    print(f"\n{'target':{width}} {'value':>9} {'limit':>9}  result")
    for text, t in rows:
        unit = units[t["figure"]]
        print(f"{text:{width}} {fmt(t['value'], unit):>9} {fmt(t['limit'], unit):>9}  {t['result']}")
    for name, diff in results["label_diffs"].items():
        print(f"\nlabels, {args.oneshot_reference} vs {name}:")
        for key, value in diff["only_reference"].items():
            print(f"  only {args.oneshot_reference}: {key}={value}")
        for key, value in diff["only_other"].items():
            print(f"  only {name}: {key}={value}")
        for key, (a, b) in diff["differ"].items():
            print(f"  differ: {key}: {args.oneshot_reference}={a} {name}={b}")
        if not any(diff.values()):
            print("  identical")


# --- the whole comparison


def rotated(items: Sequence[Command], by: int) -> list[Command]:
    by %= max(1, len(items))
    return [*items[by:], *items[:by]]


def measure_all(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    """Every measurement, raw; on an interrupt (SIGINT: `timeout -s INT`), what was measured so far."""
    plugins: list[Command] = args.plugin
    runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in plugins}
    oneshots: dict[str, list[dict[str, Any]]] = {c.name: [] for c in args.oneshot}
    measured: dict[str, Any] = {"runs": runs, "oneshots": oneshots, "idle": {}, "failures": {}}
    failures: dict[str, str] = measured["failures"]
    given_up: set[str] = set()

    def attempt(command: Command, label: str) -> None:
        run = measure_run(ctx, command, label)
        runs[command.name].append(run)
        note = run.get("error") or f"{run.get('start_register_ms', 0):.1f} ms to Register"
        print(f"  {command.name:16} {label:7} {note}", flush=True)
        if "error" in run:
            failures[f"{command.name} {label}"] = run["error"]
            if not any("error" not in r for r in runs[command.name]):
                given_up.add(command.name)  # never worked: not tried again

    try:
        for command in plugins:
            for _ in range(args.warmup_starts):
                if command.name not in given_up:
                    attempt(command, "warmup")
        for i in range(args.runs):
            for command in rotated(plugins, i):
                if command.name not in given_up:
                    attempt(command, f"run{i + 1}")
        for i in range(args.oneshot_runs if args.oneshot else 0):
            for command in rotated(args.oneshot, i):
                if f"oneshot {command.name}" in given_up:
                    continue
                result = measure_oneshot(ctx, command, f"run{i + 1}")
                oneshots[command.name].append(result)
                if "error" in result:
                    failures[f"oneshot {command.name} {result['label']}"] = result["error"]
                    if not any("error" not in r for r in oneshots[command.name]):
                        given_up.add(f"oneshot {command.name}")
        working = [c for c in plugins if c.name not in given_up]
        if working and args.idle > 0:
            for group in idle_groups(working):
                print(
                    f"  {', '.join(c.name for c in group)} together: {args.settle:g} s to settle, "
                    f"{args.idle:g} s idle, {args.burst} kubelet restarts, {args.idle:g} s",
                    flush=True,
                )
                measured["idle"].update(measure_idle(ctx, group))
            for name, idle in measured["idle"].items():
                if "error" in idle:
                    failures[f"{name} idle"] = idle["error"]
                elif idle.get("burst_reregistered") != args.burst:
                    failures[f"{name} idle"] = (
                        f"re-registered after {idle.get('burst_reregistered')} of {args.burst} restarts"
                    )
    except KeyboardInterrupt:
        measured["interrupted"] = True
        print("  interrupted: the figures below are what was measured until then", flush=True)
    except Exception:  # a harness bug must not cost the figures already measured (one GPU call)
        measured["harness_error"] = traceback.format_exc()
        print(
            f"  harness error, the figures below are what was measured until then:\n{measured['harness_error']}"
        )
    return measured


def summarize(args: argparse.Namespace, measured: dict[str, Any]) -> dict[str, Any]:
    runs, oneshots = measured["runs"], measured["oneshots"]
    summary = {name: summarize_plugin(r, measured["idle"].get(name, {})) for name, r in runs.items()}
    oneshot_summary = {name: summarize_oneshot(r) for name, r in oneshots.items()}
    targets = []
    for target in TARGETS:
        if target.subject == "oneshot":
            table, name, reference = oneshot_summary, args.subject, args.oneshot_reference
        else:
            table = summary
            name = args.subject if target.subject == "plugin" else args.subject_labels
            reference = args.reference
        if name in table:
            targets.append({"subject": name, **evaluate(target, table[name], table.get(reference))})
    label_sets = {
        name: next((r["labels"] for r in reversed(results) if "labels" in r), None)
        for name, results in oneshots.items()
    }
    reference_labels = label_sets.get(args.oneshot_reference)
    diffs = {
        name: label_diff(reference_labels, labels)
        for name, labels in label_sets.items()
        if reference_labels is not None and labels is not None and name != args.oneshot_reference
    }
    return {
        **measured,
        "summary": summary,
        "oneshot_summary": oneshot_summary,
        "targets": targets,
        "label_diffs": diffs,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plugin", type=Command.parse, action="append", default=[], metavar="NAME=COMMAND")
    p.add_argument(
        "--oneshot",
        type=Command.parse,
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="a labels one-shot command; {output} is the file it must write",
    )
    p.add_argument(
        "--dir", type=Path, help="the kubelet's device-plugin directory (default: a new temporary one)"
    )
    p.add_argument("--runs", type=int, default=5, help="runs per plugin (default 5)")
    p.add_argument(
        "--warmup-starts", type=int, default=1, help="unmeasured starts per plugin first (default 1)"
    )
    p.add_argument(
        "--calls", type=int, default=2000, help="timed Allocate and GetPreferredAllocation calls per run"
    )
    p.add_argument("--warmup", type=int, default=100, help="untimed calls before those")
    p.add_argument("--preferred-size", type=int, default=1, help="allocation_size of GetPreferredAllocation")
    p.add_argument("--restarts", type=int, default=10, help="kubelet restarts per run (re-registration)")
    p.add_argument(
        "--idle", type=float, default=30.0, help="CPU-tick window, seconds (0: skip the idle phase)"
    )
    p.add_argument(
        "--settle", type=float, default=5.0, help="seconds after registering before the idle window"
    )
    p.add_argument("--burst", type=int, default=10, help="kubelet restarts before the second CPU window")
    p.add_argument("--oneshot-runs", type=int, default=5)
    p.add_argument("--register-timeout", type=float, default=20.0, help="seconds to wait for Register")
    p.add_argument("--dial-timeout", type=float, default=10.0, help="the stand-in's dial-back timeout")
    p.add_argument("--exit-timeout", type=float, default=10.0, help="seconds from SIGTERM to SIGKILL")
    p.add_argument("--oneshot-timeout", type=float, default=60.0)
    p.add_argument("--reference", default="nvidia", help="the plugin ratios are taken to (default nvidia)")
    p.add_argument("--floor", default="bare", help="the Python floor plugin (default bare)")
    p.add_argument("--subject", default="nvplugin", help="the plugin (and one-shot) the targets apply to")
    p.add_argument("--subject-labels", default="nvplugin+labels", help="the subject run with labels on")
    p.add_argument(
        "--oneshot-reference", default="gfd", help="the one-shot ratios and label diffs are taken to"
    )
    p.add_argument("--json", type=Path, help="write every raw sample and figure here")
    p.add_argument("--logs", type=Path, help="keep the plugins' output here (default: a temporary directory)")
    p.add_argument("--serve-apiserver", metavar="KUBECONFIG", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [c.name for c in args.plugin]
    if len(set(names)) != len(names) or len({c.name for c in args.oneshot}) != len(args.oneshot):
        p.error("plugin and one-shot names must be unique")
    if not args.plugin and not args.oneshot and not args.serve_apiserver:
        p.error("nothing to measure: give --plugin and/or --oneshot")
    return args


def machine() -> dict[str, Any]:
    return {
        "node": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "clock_ticks_per_s": CLOCK_TICKS,
    }


@dataclass
class Workspace:
    directory: Path
    logs: Path
    cleanup: list[Path]

    @classmethod
    def make(cls, args: argparse.Namespace) -> Workspace:
        cleanup = []
        if args.dir is None:
            directory = Path(tempfile.mkdtemp(prefix="sbs-", dir="/tmp"))  # short: sun_path is 108 bytes
            cleanup.append(directory)
        else:
            directory = args.dir.resolve()
            refuse_live_kubelet(directory)
        if args.logs is None:
            logs = Path(tempfile.mkdtemp(prefix="sbs-logs-"))
            cleanup.append(logs)
        else:
            logs = args.logs
            logs.mkdir(parents=True, exist_ok=True)
        return cls(directory, logs, cleanup)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_apiserver:
        serve_apiserver(args.serve_apiserver)
        return 0
    space = Workspace.make(args)
    ctx = Context(args, space.directory, space.logs)
    info = machine()
    print(
        f"# bench_sidebyside on {info['node']} ({info['cpus']} CPUs, Python {info['python']}, grpcio {info['grpcio']}), {info['date']}"
    )
    print(
        f"# kubelet directory {space.directory}; {args.runs} runs, {args.calls} calls, {args.restarts} restarts per run"
    )
    for command in [*args.plugin, *args.oneshot]:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in command.env)
        print(f"#   {command.name}: {env + ' ' if env else ''}{shlex.join(command.argv)}")
    apiserver = start_apiserver(ctx) if any(c.mentions("kubeconfig") for c in args.plugin) else None
    try:
        results = summarize(args, measure_all(args, ctx))
    finally:
        for proc in list(Process.live):
            proc.terminate(2)
        if apiserver is not None:
            apiserver.terminate(5)
        for path in space.cleanup:
            shutil.rmtree(path, ignore_errors=True)
    print_table(results, args)
    if args.json:
        commands = {c.name: {"argv": list(c.argv), "env": dict(c.env)} for c in [*args.plugin, *args.oneshot]}
        settings = {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("plugin", "oneshot")
        }
        document = {"machine": info, "settings": settings, "commands": commands, **results}
        args.json.write_text(json.dumps(document, indent=1, default=str) + "\n")
        print(f"\nraw samples: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
