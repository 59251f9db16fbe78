"""The kubelet's device-plugin directory, and whether a running nvplugin is registered there."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

import anyio
from grpclib.client import Channel

from nvplugin.api import v1beta1 as api
from nvplugin.core.address import ListenAddress
from nvplugin.core.config import Config
from nvplugin.doctor.hostfs import HostFs
from nvplugin.doctor.result import FAIL, PASS, SKIP, WARN, CheckResult

PLUGIN_SOCKET_PREFIX = "nvplugin-"
# Socket names NVIDIA's device plugin uses ("nvidia-gpu.sock", "nvidia-mig-1g.10gb.sock").
NVIDIA_SOCKET_PREFIX = "nvidia-"


@dataclass(frozen=True, slots=True)
class KubeletDirFacts:
    directory: str
    # HostFs.file_kind of the directory and of the kubelet's socket.
    directory_kind: str
    socket_path: str
    socket_kind: str
    writable: bool = False
    # None when the kubelet's socket accepts a connection, else why not.
    socket_error: str | None = None


def read_kubelet_dir(host: HostFs, config: Config, timeout: float) -> KubeletDirFacts:
    directory, socket_path = config.plugin_dir, config.kubelet_socket
    directory_kind = host.file_kind(directory)
    socket_kind = host.file_kind(socket_path)
    return KubeletDirFacts(
        directory=directory,
        directory_kind=directory_kind,
        socket_path=socket_path,
        socket_kind=socket_kind,
        writable=directory_kind == "directory" and host.can_write(directory),
        socket_error=host.socket_answers(socket_path, timeout) if socket_kind == "socket" else None,
    )


def check_kubelet_dir(facts: KubeletDirFacts) -> CheckResult:
    name = "kubelet-socket"
    other_roots = (
        "the kubelet may use another root directory (k0s: /var/lib/k0s/kubelet, MicroK8s: "
        "/var/snap/microk8s/common/var/lib/kubelet): pass --kubelet-socket <dir>/device-plugins/kubelet.sock"
    )
    if facts.directory_kind == "missing":
        return CheckResult(
            name,
            FAIL,
            f"{facts.directory} does not exist",
            fix=f"is the kubelet running on this node? It creates the directory when it starts; {other_roots}",
        )
    if facts.directory_kind != "directory":
        return CheckResult(
            name,
            FAIL,
            f"{facts.directory} is a {facts.directory_kind}, not a directory",
            fix=f"remove it and restart the kubelet, which recreates it as a directory; {other_roots}",
        )
    details = [
        f"{facts.directory}: directory, {'writable' if facts.writable else 'NOT writable'} by this process"
    ]
    if not facts.writable:
        return CheckResult(
            name,
            FAIL,
            f"{facts.directory} is not writable: no plugin socket can be created there",
            tuple(details),
            "the kubelet creates it root-owned with mode 0750: run the agent as UID 0 (the shipped "
            "DaemonSet does) and mount the directory read-write",
        )
    if facts.socket_kind == "missing":
        return CheckResult(
            name,
            FAIL,
            f"{facts.socket_path} is missing: the kubelet is not running, or uses another path",
            tuple(details),
            f"start the kubelet (systemctl status kubelet); {other_roots}",
        )
    if facts.socket_kind != "socket":
        return CheckResult(
            name,
            FAIL,
            f"{facts.socket_path} is a {facts.socket_kind}, not a socket",
            tuple(details),
            "remove it and restart the kubelet",
        )
    if facts.socket_error is not None:
        return CheckResult(
            name,
            FAIL,
            f"{facts.socket_path} does not accept connections ({facts.socket_error}): a stale socket",
            tuple(details),
            "the kubelet is not running or is restarting: systemctl status kubelet; journalctl -u kubelet",
        )
    details.append(f"{facts.socket_path}: socket, accepts connections")
    return CheckResult(name, PASS, f"{facts.directory} is ready; the kubelet listens", tuple(details))


# --- our registration


@dataclass(frozen=True, slots=True)
class PluginSocket:
    name: str
    # None when the plugin answered GetDevicePluginOptions and sent its device list.
    error: str | None = None
    devices: int = 0
    healthy: int = 0


@dataclass(frozen=True, slots=True)
class ReadyzFacts:
    url: str
    # HTTP status, or None when nothing answered.
    status: int | None
    body: str


@dataclass(frozen=True, slots=True)
class RegistrationFacts:
    # False when the directory could not be listed (see kubelet-socket).
    directory_usable: bool
    plugins: tuple[PluginSocket, ...] = ()
    # Sockets of NVIDIA's device plugin in the same directory.
    nvidia_sockets: tuple[str, ...] = ()
    readyz: ReadyzFacts | None = None


async def probe_plugin(path: str, timeout: float) -> tuple[str | None, int, int]:
    """(error, devices, healthy) from GetDevicePluginOptions and the first ListAndWatch answer."""
    channel = Channel(path=path)
    try:
        stub = api.DevicePluginStub(channel)
        with anyio.fail_after(timeout):
            await stub.get_device_plugin_options(api.Empty())
            async for answer in stub.list_and_watch(api.Empty()):
                healthy = sum(d.health == "Healthy" for d in answer.devices)
                return None, len(answer.devices), healthy
        return "ListAndWatch ended without a device list", 0, 0
    except TimeoutError:
        return f"no answer within {timeout:g} s", 0, 0
    except Exception as exc:  # grpclib, OSError: any failure means the socket does not serve
        return f"{type(exc).__name__}: {exc}", 0, 0
    finally:
        channel.close()


def read_readyz(address: ListenAddress, timeout: float) -> ReadyzFacts:
    host = address.host or "127.0.0.1"
    url = f"http://{f'[{host}]' if ':' in host else host}:{address.port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return ReadyzFacts(url, response.status, response.read(2048).decode(errors="replace").strip())
    except urllib.error.HTTPError as exc:
        return ReadyzFacts(url, exc.code, exc.read(2048).decode(errors="replace").strip())
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        return ReadyzFacts(url, None, str(reason))


async def read_registration(host: HostFs, config: Config, timeout: float) -> RegistrationFacts:
    directory = config.plugin_dir
    if host.file_kind(directory) != "directory":
        return RegistrationFacts(directory_usable=False)
    names = host.listdir(directory)
    sockets = [n for n in names if host.file_kind(f"{directory}/{n}") == "socket"]
    plugins = []
    for socket_name in sockets:
        if socket_name.startswith(PLUGIN_SOCKET_PREFIX):
            error, devices, healthy = await probe_plugin(
                str(host.path(f"{directory}/{socket_name}")), timeout
            )
            plugins.append(PluginSocket(socket_name, error, devices, healthy))
    readyz = None
    if config.metrics_address is not None:
        readyz = await anyio.to_thread.run_sync(read_readyz, config.metrics_address, timeout)
    return RegistrationFacts(
        directory_usable=True,
        plugins=tuple(plugins),
        nvidia_sockets=tuple(n for n in sockets if n.startswith(NVIDIA_SOCKET_PREFIX)),
        readyz=readyz,
    )


def check_registration(facts: RegistrationFacts, node_name: str | None) -> CheckResult:
    name = "plugin-registration"
    if not facts.directory_usable:
        return CheckResult(name, SKIP, "the kubelet's directory is not usable (see kubelet-socket)")
    live = [p for p in facts.plugins if p.error is None]
    stale = [p for p in facts.plugins if p.error is not None]
    details = [f"{p.name}: serving {p.devices} device(s), {p.healthy} healthy" for p in live] + [
        f"{p.name}: does not answer ({p.error})" for p in stale
    ]
    ready = facts.readyz
    if ready is not None:
        said = (
            f"HTTP {ready.status}: {ready.body}" if ready.status is not None else f"no answer ({ready.body})"
        )
        details.append(f"{ready.url}: {said}")
    pod = (
        "kubectl -n kube-system get pods -l name=nvidia-device-plugin-ds -o wide"
        + (f" --field-selector spec.nodeName={node_name}" if node_name else "")
        + "; kubectl -n kube-system logs <that pod>"
    )
    if facts.nvidia_sockets:
        details.append(f"NVIDIA's device plugin sockets: {', '.join(facts.nvidia_sockets)}")
    if ready is not None and ready.status is not None and ready.status != 200:
        return CheckResult(
            name, FAIL, f"the agent is running but not ready: {ready.body}", tuple(details), pod
        )
    if not live and not (ready is not None and ready.status == 200):
        return CheckResult(
            name,
            FAIL,
            "no running nvplugin serves the kubelet on this node"
            + (f" ({len(stale)} stale socket(s) left behind)" if stale else ""),
            tuple(details),
            f"check the agent's pod on this node: {pod}",
        )
    if facts.nvidia_sockets:
        return CheckResult(
            name,
            WARN,
            "NVIDIA's device plugin runs here too: two plugins advertise the same resources",
            tuple(details),
            "uninstall NVIDIA's device plugin (its DaemonSet or Helm release) and gpu-feature-discovery",
        )
    if stale:
        return CheckResult(
            name,
            WARN,
            f"{len(live)} nvplugin socket(s) answer, {len(stale)} stale one(s) do not",
            tuple(details),
            "stale sockets are left by a killed agent and are harmless: the agent removes its own at "
            "start, the kubelet every socket when it restarts",
        )
    if not live:
        # Ready without a socket: the agent found no devices and, as NVIDIA's plugin, registers none.
        assert ready is not None
        return CheckResult(name, PASS, f"the agent is ready: {ready.body}", tuple(details))
    served = ", ".join(f"{p.devices} device(s) on {p.name}" for p in live)
    return CheckResult(name, PASS, f"nvplugin is registered: {served}", tuple(details))
