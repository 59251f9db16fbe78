"""The agent's side of the kubelet: generations of plugin servers, registration, restarts.

A generation is one PluginServer per advertised resource, each on a fresh socket, registered
with the kubelet. It lasts until a reason to start over: the kubelet restarted (kubelet.sock
re-created), one of our sockets was removed, or the configuration was reloaded. Then the
servers stop (streams end, sockets removed) and the next generation starts. Inventory and
health live in NodeState and survive every generation.

Two tasks run this object: `serve()` (the generations, plus a short fine-grained probe after
the kubelet drops a stream) and `watch_directory()` (watchfiles on the kubelet's directory:
the safety net for a kubelet started after us or a socket removed by hand).
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import socket
import stat
import threading
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from nvplugin.core.allocation import NO_NODE_DEVICES, NodeDevices
from nvplugin.core.config import Config
from nvplugin.core.resources import Resource
from nvplugin.observability import Metrics
from nvplugin.plugin.registration import register_with_retry
from nvplugin.plugin.server import SOCKET_PREFIX, PluginServer, fresh_socket_name
from nvplugin.state import NodeState

if TYPE_CHECKING:
    from watchfiles import Change

log = logging.getLogger(__name__)

# How often the kubelet-socket wait re-checks by itself, in case a file event is missed
# (some hostPath mounts do not deliver inotify events).
KUBELET_SOCKET_RECHECK = 5.0
# Stopping all plugin servers must fit in the shutdown budget.
SERVER_STOP_GRACE = 0.4
# After the kubelet drops our stream, look for its new socket this often, for this long.
# The kubelet is usually back within milliseconds of its socket being deleted; later
# re-creation is still caught by the directory watcher.
RESTART_PROBE_INTERVAL = 0.001
RESTART_PROBE_WINDOW = 3.0
# A unix socket path holds at most 107 bytes (sun_path is 108 with its NUL).
MAX_SOCKET_PATH = 107


class KubeletDirError(Exception):
    """The kubelet's directory cannot be used; the message names the path and the fix."""


class AnotherAgent(Exception):
    """Another live nvplugin already serves the kubelet from this directory."""


def check_kubelet_dir(config: Config, resources: tuple[Resource, ...]) -> None:
    """Before any socket: the kubelet's directory must be a directory we can create sockets
    in, and every socket path must fit. A directory that does not exist yet is the kubelet's
    to create (it is waited for, never created by us). Blocking (file system)."""
    directory = config.plugin_dir
    paths = [config.kubelet_socket] + [os.path.join(directory, fresh_socket_name(r)) for r in resources]
    too_long = [p for p in paths if len(os.fsencode(p)) > MAX_SOCKET_PATH]
    if too_long:
        raise KubeletDirError(
            f"socket path {too_long[0]!r} is {len(os.fsencode(too_long[0]))} bytes, longer than a unix "
            f"socket allows ({MAX_SOCKET_PATH}): use a shorter --kubelet-socket directory"
        )
    try:
        mode = os.stat(directory).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise KubeletDirError(
            f"cannot use the kubelet's directory {directory}: {exc.strerror or exc}"
        ) from None
    if not stat.S_ISDIR(mode):
        raise KubeletDirError(
            f"{directory} is not a directory: --kubelet-socket must name the kubelet's socket inside "
            "its device-plugin directory (default /var/lib/kubelet/device-plugins/kubelet.sock)"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise KubeletDirError(
            f"cannot create sockets in the kubelet's directory {directory}: permission denied; run the "
            "agent as root (the DaemonSet does) or mount the directory read-write"
        )
    if os.path.isdir(config.kubelet_socket):
        raise KubeletDirError(
            f"{config.kubelet_socket} is a directory: --kubelet-socket must name the kubelet's socket file"
        )


def clean_stale_sockets(directory: str) -> list[str]:
    """Remove our own sockets left by an agent that died (SIGKILL, OOM): those named like ours
    that nobody answers on. Never touches another plugin's socket. Raises AnotherAgent when one
    of ours answers: a second agent would advertise the same GPUs twice. Returns what it removed."""
    try:
        names = [n for n in os.listdir(directory) if n.startswith(SOCKET_PREFIX) and n.endswith(".sock")]
    except OSError:
        return []
    removed = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
        except OSError:
            continue
        if _answers(path):
            raise AnotherAgent(
                f"another nvplugin agent serves the kubelet from {directory} (its socket {name} answers): "
                "two agents would advertise the same GPUs twice; stop the other one first"
            )
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            continue
    return removed


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        # Refused (nobody listens) or gone: stale. Anything else (EAGAIN: a full backlog) is alive.
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        probe.close()
    return True


class KubeletSide:
    """Create it inside the running loop (it owns anyio events)."""

    def __init__(
        self,
        config: Config,
        state: NodeState,
        metrics: Metrics,
        node: NodeDevices = NO_NODE_DEVICES,
    ) -> None:
        self.config = config
        self._state = state
        self._metrics = metrics
        self._node = node
        self.generation = 0
        self.servers: list[PluginServer] = []
        # resource name -> registered with the kubelet in the current generation
        self.registered: dict[str, bool] = {}
        # Set once the first generation has registered or begun waiting for the kubelet: work
        # that must stay off the start -> Register path (the watcher, /metrics) waits for it.
        self.first_attempt = anyio.Event()
        self.registered_once = anyio.Event()
        self._restart = anyio.Event()
        self._restart_reason = ""
        self._kubelet_seen = anyio.Event()
        self._registered_kubelet: tuple[int, int] | None = None
        self._own_sockets: frozenset[str] = frozenset()
        self._tg: TaskGroup | None = None
        self._probing = False

    # --- what the agent calls

    @property
    def ready(self) -> bool:
        """Registered with the kubelet for every resource of this generation."""
        return bool(self.registered) and all(self.registered.values())

    def readiness(self) -> tuple[bool, str]:
        if not any(r.devices for r in self._state.resources):
            return True, "no GPUs on this node: nothing to register"
        if self.ready:
            return True, f"registered {', '.join(sorted(self.registered))}"
        missing = [name for name, done in self.registered.items() if not done]
        return False, f"not registered with the kubelet: {', '.join(missing) or 'waiting for the kubelet'}"

    def use_config(self, config: Config) -> None:
        """A reloaded configuration: the next generation serves it (call request_restart)."""
        self.config = config

    def request_restart(self, reason: str) -> None:
        """Start the kubelet side over: new sockets, register again."""
        if not self._restart.is_set():
            self._restart_reason = reason
            self._restart.set()

    # --- the generations (task "kubelet-side")

    async def serve(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                while True:
                    self._restart = anyio.Event()
                    if not any(r.devices for r in self._state.resources):
                        # Nothing to register: as ready as this node gets (labels need not wait).
                        self.first_attempt.set()
                        self.registered_once.set()
                    await self._wait_for_kubelet_socket()
                    await self._one_generation()
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    async def _one_generation(self) -> None:
        self.generation += 1
        config = self.config
        for resource in self._state.resources:
            if not resource.devices:
                log.info("%s has no devices: not registered", resource.name)
        # Like NVIDIA's plugin, a resource without devices is not registered.
        servers = [
            PluginServer(
                resource,
                self._state,
                config,
                self._node,
                metrics=self._metrics,
                on_stream_lost=self._on_stream_lost,
            )
            for resource in self._state.resources
            if resource.devices
        ]
        self.servers = servers
        self.registered = {s.resource_name: False for s in servers}
        try:
            for server in servers:
                await server.start()
            self._own_sockets = frozenset(s.socket_path for s in servers)
            self._registered_kubelet = self._kubelet_identity()
            async with anyio.create_task_group() as generation:
                for server in servers:
                    generation.start_soon(self._register, server, name=f"register {server.resource_name}")
                if not servers:
                    self.first_attempt.set()
                await self._restart.wait()
                generation.cancel_scope.cancel()
            log.info("restarting the plugin servers: %s", self._restart_reason)
        finally:
            self._own_sockets = frozenset()
            self.registered = {}
            # The next generation registers against whatever kubelet.sock is then: a re-created
            # socket seen while it waits must not restart it again.
            self._registered_kubelet = None
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as stopping:
                    for server in servers:
                        stopping.start_soon(server.stop, SERVER_STOP_GRACE)

    async def _register(self, server: PluginServer) -> None:
        attempts = await register_with_retry(
            self.config.kubelet_socket, server.socket_name, server.resource_name
        )
        for _ in range(attempts - 1):
            self._metrics.registered(server.resource_name, ok=False)
        self._metrics.registered(server.resource_name)
        self.registered[server.resource_name] = True
        if self.ready:
            self.first_attempt.set()
            if not self.registered_once.is_set():
                self.registered_once.set()
                # What exists now (modules, inventory) lives as long as the process: keep it out
                # of the collector's way, so a full collection never lands inside an RPC. After
                # the first registration, not before: it costs ~10 ms.
                gc.collect()
                gc.freeze()

    def _kubelet_identity(self) -> tuple[int, int] | None:
        """kubelet.sock's identity. The inode number alone is often reused by the kubelet's
        re-created socket, so the creation time is part of it."""
        try:
            st = os.stat(self.config.kubelet_socket)
        except OSError:
            return None
        return st.st_ino, st.st_ctime_ns

    async def _wait_for_kubelet_socket(self) -> None:
        announced = False
        while self._kubelet_identity() is None:
            self.first_attempt.set()
            if not announced:
                log.info("waiting for the kubelet socket %s", self.config.kubelet_socket)
                announced = True
            self._kubelet_seen = anyio.Event()
            if self._kubelet_identity() is not None:
                break
            with anyio.move_on_after(KUBELET_SOCKET_RECHECK):
                await self._kubelet_seen.wait()

    # --- noticing a kubelet restart

    def _on_stream_lost(self) -> None:
        """The kubelet closed a ListAndWatch stream: it may be restarting. Probe for its new
        socket at a fine grain for a short while, so re-registration does not wait for the
        directory watcher's batching (which stays coarse to keep the idle agent asleep)."""
        if not self._probing and self._tg is not None:
            self._probing = True
            self._tg.start_soon(self._probe_kubelet_restart, name="kubelet-restart-probe")

    async def _probe_kubelet_restart(self) -> None:
        try:
            with anyio.move_on_after(RESTART_PROBE_WINDOW):
                while True:
                    identity = self._kubelet_identity()
                    if identity is not None and identity != self._registered_kubelet:
                        self._kubelet_restarted()
                        return
                    await anyio.sleep(RESTART_PROBE_INTERVAL)
        finally:
            self._probing = False

    def _kubelet_restarted(self) -> None:
        self._metrics.kubelet_restart()
        self.request_restart("kubelet.sock was re-created (kubelet restarted)")

    def on_directory_change(self, added: bool, path: str) -> None:
        """One file event in the kubelet's directory."""
        if path == self.config.kubelet_socket:
            if not added:
                return
            self._kubelet_seen.set()
            identity = self._kubelet_identity()
            if self._registered_kubelet is not None and identity not in (None, self._registered_kubelet):
                self._kubelet_restarted()
        elif not added and path in self._own_sockets:
            self.request_restart(f"our socket {os.path.basename(path)} was removed")

    # --- the directory watcher (task "kubelet-watcher")

    async def watch_directory(self) -> None:
        """Until cancelled. The watch runs in a worker thread that cancellation abandons (it
        sees its stop flag within one watchfiles step and closes the watch itself), so the
        agent's shutdown never waits for it."""
        # Not on the start -> Register path: the kubelet side checks the socket itself first.
        with anyio.move_on_after(1.0):  # registration may be refused for long: watch anyway
            await self.first_attempt.wait()
        directory = self.config.plugin_dir
        if not os.path.isdir(directory):
            log.warning("waiting for the kubelet's directory %s (is --kubelet-socket right?)", directory)
        while not os.path.isdir(directory):  # noqa: ASYNC110 - the kubelet creates it: no event to wait on
            await anyio.sleep(KUBELET_SOCKET_RECHECK)
        stop = threading.Event()
        try:
            await anyio.to_thread.run_sync(self._watch_thread, directory, stop, abandon_on_cancel=True)
        finally:
            stop.set()

    def _watch_thread(self, directory: str, stop: threading.Event) -> None:
        """In a worker thread: watchfiles' Rust watcher on the directory, each batch of changes
        handed to the loop. Its thread wakes every `step` ms even when idle, so keep it coarse:
        the fast path for a kubelet restart is the stream-lost probe; this is the safety net
        (kubelet started after us, a socket removed by hand)."""
        from watchfiles import Change
        from watchfiles._rust_notify import RustNotify

        with RustNotify([directory], False, False, 300, False, True) as notify:
            # Anything removed before the watch began is caught here.
            try:
                anyio.from_thread.run_sync(self._check_own_sockets)
            except RuntimeError:
                return
            while not stop.is_set():
                raw = notify.watch(500, 250, 5000, stop)
                if isinstance(raw, str) or stop.is_set():  # "stop", "timeout" or "signal"
                    continue
                # Deletions first: a kubelet restart removes our socket and re-creates its own.
                changes = sorted(
                    ((Change(int(kind)), os.path.abspath(str(path))) for kind, path in raw),
                    key=lambda c: c[0] != Change.deleted,
                )
                try:
                    anyio.from_thread.run_sync(self._on_changes, changes)
                except RuntimeError:
                    return  # the loop is gone: the agent stopped

    def _check_own_sockets(self) -> None:
        for path in self._own_sockets:
            if not os.path.exists(path):
                self.on_directory_change(False, path)

    def _on_changes(self, changes: list[tuple[Change, str]]) -> None:
        from watchfiles import Change

        for change, path in changes:
            self.on_directory_change(change == Change.added, path)
