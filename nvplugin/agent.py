"""The agent: one anyio TaskGroup owning every task of the node agent.

Tasks (each named, supervised: an unexpected end is logged and the task restarted):
- kubelet side: start one PluginServer per resource on fresh sockets, register each, then wait
  for a reason to start over (kubelet restart, our socket removed, reload);
- kubelet-directory watcher (watchfiles): turns file events into those reasons;
- signals: SIGTERM/SIGINT end the TaskGroup (streams closed, sockets removed, exit 0),
  SIGHUP reloads;
- extra tasks added by the CLI (health watcher, metrics, labels) through `add_task`.
Blocking NVML calls run in worker threads; nothing on the loop waits on the driver.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from nvplugin.core.config import Config, ConfigError
from nvplugin.core.inventory import EMPTY_INVENTORY, Inventory
from nvplugin.core.resources import Resource, plan_resources
from nvplugin.devicenodes import existing_control_nodes
from nvplugin.nvml.base import LIBRARY_HINT, Nvml, NvmlError, NvmlLibraryNotFound
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.early import EarlyStart
from nvplugin.observability import NULL_METRICS, Metrics, track_devices
from nvplugin.plugin.registration import register_with_retry
from nvplugin.plugin.server import PluginServer
from nvplugin.state import NodeState

if TYPE_CHECKING:
    from nvplugin.metrics_server import MetricsServer

log = logging.getLogger(__name__)

# How often the kubelet-socket wait re-checks by itself, in case a file event is missed
# (some hostPath mounts do not deliver inotify events).
KUBELET_SOCKET_RECHECK = 5.0
# Stopping all plugin servers must fit in the 1 s shutdown budget.
SERVER_STOP_GRACE = 0.4
# After the kubelet drops our stream, look for its new socket this often, for this long.
# The kubelet is usually back within milliseconds of its socket being deleted; later
# re-creation is still caught by the directory watcher.
RESTART_PROBE_INTERVAL = 0.001
RESTART_PROBE_WINDOW = 3.0


class AgentError(Exception):
    """The agent cannot start; the message says what to check. Exit code 1."""


TaskFactory = Callable[["Agent"], Awaitable[None]]
ConfigLoader = Callable[[], Config]


class Agent:
    def __init__(
        self,
        config: Config,
        nvml: Nvml,
        *,
        config_loader: ConfigLoader | None = None,
        handle_signals: bool = True,
        early: EarlyStart | None = None,
    ) -> None:
        self.config = config.with_changes(kubelet_socket=os.path.abspath(config.kubelet_socket))
        self.nvml = nvml
        self.state = NodeState(EMPTY_INVENTORY, ())
        # Records from the first second on; shown once the endpoint starts (after Register).
        self.metrics: Metrics = Metrics() if self.config.metrics_address is not None else NULL_METRICS
        # The /metrics, /healthz, /readyz endpoint once it runs (its bound port: tests).
        self.metrics_server: MetricsServer | None = None
        self.registered: dict[str, bool] = {}
        self.servers: list[PluginServer] = []
        self.generation = 0
        self.nvml_ready = False
        # NVIDIA's control device nodes present on this node (for PASS_DEVICE_SPECS).
        self.control_nodes: frozenset[str] | None = None
        # Health transitions go here too when node Events are on: (uuid, xid, reason, healthy).
        self.node_events: Callable[[str, int | None, str, bool], None] | None = None
        self._config_loader = config_loader
        # NVML init and the first discovery, already running in a thread (cli starts it first).
        self._early = early
        self._handle_signals = handle_signals
        self._extra_tasks: list[tuple[str, TaskFactory]] = []
        self._tg: TaskGroup | None = None
        self._restart: anyio.Event | None = None
        self._restart_reason = ""
        self._kubelet_seen: anyio.Event | None = None
        self._registered_kubelet_inode: tuple[int, int] | None = None
        self._own_sockets: set[str] = set()
        self._probing = False
        self._reload_lock: anyio.Lock | None = None  # made on first use (it needs a running loop)
        # Set when the agent stops: ends the directory watcher's thread within one step.
        self._watch_stop: anyio.Event | None = None
        # Set once the first generation has registered or begun waiting for the kubelet: the
        # watcher's imports and thread wait for it, off the start -> Register path.
        self._first_attempt: anyio.Event | None = None
        self._registered_once: anyio.Event | None = None
        # Set once every task has been started (tests and simulate wait on it).
        self.started: anyio.Event | None = None

    # --- public control

    def add_task(self, name: str, factory: TaskFactory) -> None:
        """Run `factory(agent)` in the agent's TaskGroup, supervised, once the agent starts."""
        self._extra_tasks.append((name, factory))

    @property
    def ready(self) -> bool:
        """Registered with the kubelet for every resource."""
        return bool(self.registered) and all(self.registered.values())

    async def wait_ready(self) -> None:
        """Return once registered with the kubelet for every resource (the first time)."""
        if self._registered_once is None:
            self._registered_once = anyio.Event()
        await self._registered_once.wait()

    def schedule_reload(self, why: str) -> None:
        """Reload from a synchronous callback (a node-label config switch)."""
        if self._tg is not None:
            log.info("reloading: %s", why)
            self._tg.start_soon(self.reload, name="reload")

    def stop(self) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def request_restart(self, reason: str) -> None:
        """Start the kubelet side over: new sockets, register again."""
        if self._restart is not None and not self._restart.is_set():
            self._restart_reason = reason
            self._restart.set()

    # --- start-up

    async def _initialise(self) -> Inventory:
        try:
            await anyio.to_thread.run_sync(self._early.initialised if self._early else self.nvml.init)
        except NvmlLibraryNotFound as exc:
            if self.config.fail_on_init_error:
                raise AgentError(
                    f"NVML could not be loaded ({exc}).\n{_hint(exc)}\n"
                    "To keep running with zero GPUs instead, set --fail-on-init-error=false."
                ) from None
            log.error("NVML could not be loaded (%s): running with zero devices. %s", exc, _hint(exc))
            return EMPTY_INVENTORY
        except NvmlError as exc:
            if self.config.fail_on_init_error:
                raise AgentError(
                    f"NVML failed to initialise: {exc}. Check the driver (nvidia-smi on the node) "
                    "and the kernel log for NVRM errors. To keep running with zero GPUs instead, "
                    "set --fail-on-init-error=false."
                ) from None
            log.error("NVML failed to initialise (%s): running with zero devices", exc)
            return EMPTY_INVENTORY
        self.nvml_ready = True
        return await self._discover()

    async def _discover(self) -> Inventory:
        early, self._early = self._early, None  # the early result serves the first discovery only
        try:
            if early is not None:
                inventory = await anyio.to_thread.run_sync(early.inventory)
            else:
                inventory = await anyio.to_thread.run_sync(discover, self.nvml)
        except NvmlError as exc:
            if self.config.fail_on_init_error:
                raise AgentError(f"GPU discovery failed: {exc}") from None
            log.error("GPU discovery failed (%s): running with zero devices", exc)
            return EMPTY_INVENTORY
        for problem in inventory.problems:
            log.error("discovery: %s", problem)
        if inventory.gpus:
            log.info(
                "found %d GPU(s): %s (driver %s, CUDA %d.%d)",
                len(inventory.gpus),
                ", ".join(sorted({g.name for g in inventory.gpus})),
                inventory.driver_version,
                *inventory.cuda_version,
            )
        else:
            log.warning("no GPUs found: advertising zero devices (nothing will be scheduled here)")
        return inventory

    # --- the loop

    async def run(self) -> None:
        """Run until cancelled or stopped. Raises AgentError when it cannot start."""
        self.started = self.started or anyio.Event()
        self._first_attempt = anyio.Event()
        self._watch_stop = anyio.Event()
        # Signals first: a SIGTERM or SIGHUP during NVML start-up must not kill the process.
        signals: contextlib.AbstractContextManager[Any] = (
            anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
            if self._handle_signals
            else contextlib.nullcontext()
        )
        with signals as receiver:
            await self._run(receiver)

    async def _run(self, receiver: AsyncIterator[int] | None) -> None:
        self._registered_once = self._registered_once or anyio.Event()
        inventory = await self._initialise()
        try:
            resources = self._plan(inventory, self.config)
        except ConfigError as exc:
            raise AgentError(f"cannot advertise the GPUs with this configuration: {exc}") from None
        self.control_nodes = await anyio.to_thread.run_sync(existing_control_nodes)
        self.state.replace(inventory, resources)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if receiver is not None:
                    tg.start_soon(self._signals, receiver, name="signals")
                tg.start_soon(self._watch_stopper, name="watch-stopper")
                tg.start_soon(self._supervise, "kubelet-watcher", _watch_kubelet_dir, name="kubelet-watcher")
                tg.start_soon(self._supervise, "kubelet-side", _serve_kubelet, name="kubelet-side")
                tg.start_soon(self._supervise, "device-metrics", _track_devices, name="device-metrics")
                if self.config.metrics_address is not None:
                    tg.start_soon(self._supervise, "metrics-server", _serve_metrics, name="metrics-server")
                for name, factory in self._extra_tasks:
                    tg.start_soon(self._supervise, name, factory, name=name)
                assert self.started is not None
                self.started.set()
        finally:
            self._tg = None
            if self.nvml_ready:
                with anyio.CancelScope(shield=True), anyio.move_on_after(0.3):
                    await anyio.to_thread.run_sync(_quiet_shutdown, self.nvml, abandon_on_cancel=True)
            log.info("agent stopped")

    @staticmethod
    def _plan(inventory: Inventory, config: Config) -> tuple[Resource, ...]:
        plan = plan_resources(inventory, config)
        for warning in plan.warnings:
            log.warning("%s", warning)
        return plan.resources

    async def _supervise(self, name: str, factory: TaskFactory) -> None:
        """Keep a long-lived task alive: log every unexpected end and start it again with backoff."""
        delay = 0.1
        while True:
            started = anyio.current_time()
            try:
                await factory(self)
                log.error("task %s ended unexpectedly; restarting it", name)
            except Exception:
                log.exception("task %s crashed; restarting it", name)
            if anyio.current_time() - started > 30:
                delay = 0.1
            await anyio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                # In its own task: a slow rediscovery must not hold back a SIGTERM behind it.
                self.schedule_reload("SIGHUP")
            else:
                log.info("%s: shutting down", signal.Signals(signum).name)
                self.stop()
                return

    async def reload(self) -> bool:
        """Re-read the config and rediscover; swap only if both succeed, else keep serving as is.
        Reloads run one at a time, so the last one asked for is the one that stays."""
        if self._reload_lock is None:
            self._reload_lock = anyio.Lock()
        async with self._reload_lock:
            return await self._reload()

    async def _watch_stopper(self) -> None:
        """Sets the watcher's stop event when the agent's TaskGroup is cancelled: watchfiles'
        thread only looks at that event, so without it shutdown waits out its 5 s timeout."""
        try:
            await anyio.sleep_forever()
        finally:
            if self._watch_stop is not None:
                self._watch_stop.set()

    async def _reload(self) -> bool:
        config = self.config
        if self._config_loader is not None:
            try:  # reads and parses a file: off the loop
                config = await anyio.to_thread.run_sync(self._config_loader)
            except Exception as exc:  # a bad file on reload must never stop the agent
                log.error("reload: keeping the running configuration: %s", exc)
                return False
            config = config.with_changes(kubelet_socket=os.path.abspath(config.kubelet_socket))
        try:
            inventory = (
                await anyio.to_thread.run_sync(discover, self.nvml, abandon_on_cancel=True)
                if self.nvml_ready
                else EMPTY_INVENTORY
            )
            resources = self._plan(inventory, config)
        except Exception as exc:
            log.error("reload: keeping the running configuration: %s", exc)
            return False
        self.config = config
        self.state.replace(inventory, resources)
        log.info("reload: %d resource(s): %s", len(resources), ", ".join(r.name for r in resources))
        self.request_restart("configuration reloaded")
        return True

    # --- helpers for the kubelet side

    def _kubelet_inode(self) -> tuple[int, int] | None:
        """kubelet.sock's identity. The inode number alone is often reused by the kubelet's
        re-created socket, so the creation time is part of it."""
        try:
            st = os.stat(self.config.kubelet_socket)
        except OSError:
            return None
        return st.st_ino, st.st_ctime_ns

    async def _wait_for_kubelet_socket(self) -> None:
        announced = False
        while self._kubelet_inode() is None:
            if self._first_attempt is not None:
                self._first_attempt.set()
            if not announced:
                log.info("waiting for the kubelet socket %s", self.config.kubelet_socket)
                announced = True
            self._kubelet_seen = anyio.Event()
            if self._kubelet_inode() is not None:
                break
            with anyio.move_on_after(KUBELET_SOCKET_RECHECK):
                await self._kubelet_seen.wait()

    def on_stream_lost(self) -> None:
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
                    inode = self._kubelet_inode()
                    if inode is not None and inode != self._registered_kubelet_inode:
                        self.metrics.kubelet_restart()
                        self.request_restart("kubelet.sock was re-created (kubelet restarted)")
                        return
                    await anyio.sleep(RESTART_PROBE_INTERVAL)
        finally:
            self._probing = False

    def on_directory_change(self, added: bool, path: str) -> None:
        """Called by the watcher for each file event in the kubelet's directory."""
        if path == self.config.kubelet_socket:
            if not added:
                return
            if self._kubelet_seen is not None:
                self._kubelet_seen.set()
            inode = self._kubelet_inode()
            if self._registered_kubelet_inode is not None and inode not in (
                None,
                self._registered_kubelet_inode,
            ):
                self.metrics.kubelet_restart()
                self.request_restart("kubelet.sock was re-created (kubelet restarted)")
        elif not added and path in self._own_sockets:
            self.request_restart(f"our socket {os.path.basename(path)} was removed")


async def _serve_kubelet(agent: Agent) -> None:
    """Generations of plugin servers: start, register, wait for a reason, tear down, repeat."""
    while True:
        agent._restart = anyio.Event()
        await agent._wait_for_kubelet_socket()
        agent.generation += 1
        servers = [
            PluginServer(
                r,
                agent.state,
                agent.config,
                agent.control_nodes,
                metrics=agent.metrics,
                on_stream_lost=agent.on_stream_lost,
            )
            for r in agent.state.resources
        ]
        agent.servers = servers
        agent.registered = {s.resource_name: False for s in servers}
        try:
            for server in servers:
                await server.start()
            agent._own_sockets = {s.socket_path for s in servers}
            agent._registered_kubelet_inode = agent._kubelet_inode()
            async with anyio.create_task_group() as generation:
                for server in servers:
                    generation.start_soon(_register, agent, server)
                await agent._restart.wait()
                generation.cancel_scope.cancel()
            log.info("restarting the plugin servers: %s", agent._restart_reason)
        finally:
            agent._own_sockets = set()
            agent.registered = {}
            # The next generation registers against whatever kubelet.sock is then: a re-created
            # socket seen while it waits must not restart it again.
            agent._registered_kubelet_inode = None
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as stopping:
                    for server in servers:
                        stopping.start_soon(server.stop, SERVER_STOP_GRACE)


async def _register(agent: Agent, server: PluginServer) -> None:
    attempts = await register_with_retry(
        agent.config.kubelet_socket, server.socket_name, server.resource_name
    )
    for _ in range(attempts - 1):
        agent.metrics.registered(server.resource_name, ok=False)
    agent.metrics.registered(server.resource_name)
    agent.registered[server.resource_name] = True
    if agent.ready:
        if agent._first_attempt is not None:
            agent._first_attempt.set()
        if agent._registered_once is not None and not agent._registered_once.is_set():
            agent._registered_once.set()
            # What exists now (modules, inventory) lives as long as the process: keep it out of
            # the collector's way, so a full collection never lands inside an RPC. After the
            # first registration, not before: it costs ~10 ms.
            gc.collect()
            gc.freeze()


async def _track_devices(agent: Agent) -> None:
    await track_devices(agent.state, agent.metrics)


def _liveness(agent: Agent) -> tuple[bool, str]:
    if agent._tg is None:
        return False, "the agent's task group is not running"
    return True, f"event loop answering; generation {agent.generation}"


def _readiness(agent: Agent) -> tuple[bool, str]:
    if not agent.state.resources:
        return True, "no GPUs on this node: nothing to register"
    missing = [name for name, done in agent.registered.items() if not done]
    if agent.ready:
        return True, f"registered {', '.join(sorted(agent.registered))}"
    return False, f"not registered with the kubelet: {', '.join(missing) or 'waiting for the kubelet'}"


async def _serve_metrics(agent: Agent) -> None:
    # Off the start -> Register path, like the watcher; but serve probes even if Register hangs.
    if agent._first_attempt is not None:
        with anyio.move_on_after(5.0):
            await agent._first_attempt.wait()
    from nvplugin.metrics_server import MetricsServer

    address = agent.config.metrics_address
    assert address is not None
    server = MetricsServer(
        address, agent.metrics, liveness=lambda: _liveness(agent), readiness=lambda: _readiness(agent)
    )
    agent.metrics_server = server
    try:
        await server.serve()
    except OSError as exc:
        # A taken or bad port: say so once, keep serving the kubelet, try again now and then.
        log.error("%s; metrics and probes are unavailable, retrying in 60 s", exc)
        await anyio.sleep(60)


async def _watch_kubelet_dir(agent: Agent) -> None:
    # Not on the start -> Register path: the kubelet side checks the socket itself first.
    if agent._first_attempt is not None:
        with anyio.move_on_after(1.0):  # registration may be refused for long: watch anyway
            await agent._first_attempt.wait()
    from watchfiles import Change, awatch

    directory = agent.config.plugin_dir
    os.makedirs(directory, exist_ok=True)
    # Anything removed before the watch began is caught here.
    for path in list(agent._own_sockets):
        if not os.path.exists(path):
            agent.on_directory_change(False, path)
    # watchfiles' Rust thread wakes every `step` ms even when idle, so keep it coarse: the fast
    # path for a kubelet restart is on_stream_lost's probe; this watcher is the safety net
    # (kubelet started after us, a socket removed by hand).
    async for changes in awatch(
        directory,
        debounce=500,
        step=250,
        recursive=False,
        ignore_permission_denied=True,
        watch_filter=None,
        stop_event=agent._watch_stop,
    ):
        # Deletions first: a kubelet restart removes our socket and re-creates its own at once.
        for change, path in sorted(changes, key=lambda c: c[0] != Change.deleted):
            agent.on_directory_change(change == Change.added, os.path.abspath(path))
    await anyio.sleep_forever()  # the stop event ended the watch: the agent is stopping


def _quiet_shutdown(nvml: Nvml) -> None:
    try:
        nvml.shutdown()
    except NvmlError as exc:
        log.warning("NVML shutdown: %s", exc)


def _hint(exc: NvmlError) -> str:
    return "" if LIBRARY_HINT in str(exc) else f"Hint: {LIBRARY_HINT}."
