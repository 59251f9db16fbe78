"""The agent: the one place where nvplugin's parts are built, wired and run.

Start-up (in order): signals first (a SIGTERM during start-up is a clean exit), NVML
initialised and GPUs discovered (begun in a thread before this module was even imported, see
nvplugin.nvml.early), resources planned from the inventory and the config, then every task of
TASKS that applies, each run by the task guard (nvplugin.tasks.guarded) in one TaskGroup:

    signals          TERM/INT stop the agent, HUP asks for a reload           ends with the agent
    kubelet-side     plugin servers, Register, generations (KubeletSide)     restarts with backoff
    kubelet-watcher  the kubelet's directory (watchfiles)                    ends with the agent
    reloads          one reload at a time; bursts of requests coalesce       restarts with backoff
    health           NVML XID events -> device health (HealthWatcher)        restarts with backoff
    fake-control     fault injection socket, fake GPUs only                  may end (socket taken)
    device-metrics   device gauges and transition counters from NodeState    restarts with backoff
    metrics-server   /metrics /healthz /readyz                               retries every minute
    node-labels      labels (Node, features file) and health Events          restarts with backoff

Health transitions are published in one place, NodeState: the streams wake on its version, the
device metrics follow it, and Node Events subscribe to it. Blocking calls (NVML, files) run in
worker threads; nothing on the loop waits on the driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from nvplugin.core.allocation import CDI_STRATEGIES, NodeDevices
from nvplugin.core.config import Config, ConfigError
from nvplugin.core.inventory import EMPTY_INVENTORY, Inventory
from nvplugin.core.resources import Resource, plan_resources
from nvplugin.core.xid import DEFAULT_POLICY, HealthPolicy
from nvplugin.devicenodes import existing_control_nodes
from nvplugin.nvml.base import LIBRARY_HINT, Nvml, NvmlError, NvmlLibraryNotFound
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.early import EarlyStart
from nvplugin.observability import NULL_METRICS, Metrics, track_devices
from nvplugin.plugin.kubeletside import (
    AnotherAgent,
    KubeletDirError,
    KubeletSide,
    check_kubelet_dir,
    clean_stale_sockets,
)
from nvplugin.plugin.server import PluginServer
from nvplugin.state import NodeState
from nvplugin.tasks import Backoff, StopAgent, TaskFailed, TaskSpec, guarded

if TYPE_CHECKING:
    from nvplugin.configload import ConfigSource
    from nvplugin.health import HealthWatcher
    from nvplugin.metrics_server import MetricsServer

log = logging.getLogger(__name__)


# How long a reload request waits for more requests to join it.
RELOAD_SETTLE = 0.5


class AgentError(Exception):
    """The agent cannot start (or a vital task failed); the message says what to check."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        # 1: start-up failed (no NVML, another agent); 2: a usage error (an unusable path).
        self.exit_code = exit_code


class Agent:
    def __init__(
        self,
        config: Config,
        nvml: Nvml,
        *,
        health_policy: HealthPolicy = DEFAULT_POLICY,
        config_source: ConfigSource | None = None,
        handle_signals: bool = True,
        early: EarlyStart | None = None,
        fake_control: str | None = None,
        reload_pending: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config = config.with_changes(kubelet_socket=os.path.abspath(config.kubelet_socket))
        self.nvml = nvml
        self.health_policy = health_policy
        self.state = NodeState(EMPTY_INVENTORY, ())
        # Records from the first second on; shown once the endpoint starts (after Register).
        self.metrics: Metrics = Metrics() if self.config.metrics_address is not None else NULL_METRICS
        # Reloads (SIGHUP, node-label config switch) re-read the environment and the config file.
        self.config_source = config_source
        # The fake backend's fault-injection socket (None: the default path).
        self.fake_control = fake_control
        self.nvml_ready = False
        # Made inside run() (they own anyio primitives, which need the running loop).
        self.kubelet: KubeletSide | None = None
        self.health: HealthWatcher | None = None
        self.metrics_server: MetricsServer | None = None
        self.started: anyio.Event | None = None
        self._handle_signals = handle_signals
        self._early = early
        self._tg: TaskGroup | None = None
        self._reload_wanted: anyio.Event | None = None
        self._reload_why = ""
        self._reload_lock: anyio.Lock | None = None
        self._signals: AsyncIterator[int] | None = None
        # A SIGHUP that arrived before the agent's own handler (see cli.EarlySignals).
        self._reload_pending = reload_pending

    # --- what callers (CLI, simulate, tests) use

    @property
    def ready(self) -> bool:
        """Registered with the kubelet for every resource."""
        return self.kubelet is not None and self.kubelet.ready

    @property
    def generation(self) -> int:
        return self.kubelet.generation if self.kubelet is not None else 0

    @property
    def servers(self) -> list[PluginServer]:
        return self.kubelet.servers if self.kubelet is not None else []

    async def wait_started(self) -> None:
        """Until every task has been started."""
        while self.started is None:  # noqa: ASYNC110 - before run() has made its event
            await anyio.sleep(0.005)
        await self.started.wait()

    async def wait_ready(self) -> None:
        """Until registered with the kubelet for every resource (the first time)."""
        await self.wait_started()
        assert self.kubelet is not None
        await self.kubelet.registered_once.wait()

    def stop(self) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def request_reload(self, why: str) -> None:
        """Ask for a reload from a synchronous callback (SIGHUP, a node-label config switch).
        Requests arriving while one runs coalesce into one more reload."""
        if self._reload_wanted is not None:
            log.info("reload requested: %s", why)
            self._reload_why = why
            self._reload_wanted.set()

    async def reload(self) -> bool:
        """Re-read the config and rediscover; swap only if both succeed, else keep serving as
        is. One at a time, so the last one asked for is the one that stays."""
        if self._reload_lock is None:
            self._reload_lock = anyio.Lock()
        async with self._reload_lock:
            return await self._reload()

    # --- the run

    async def run(self) -> None:
        """Run until cancelled or stopped. Raises AgentError when it cannot start."""
        self.started = self.started or anyio.Event()
        signals: contextlib.AbstractContextManager[Any] = (
            anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
            if self._handle_signals
            else contextlib.nullcontext()
        )
        # Signals first: a SIGTERM or SIGHUP during NVML start-up must not kill the process.
        with signals as receiver:
            self._signals = receiver
            inventory = await self._initialise()
            try:
                resources = _plan(inventory, self.config)
            except ConfigError as exc:
                raise AgentError(f"cannot advertise the GPUs with this configuration: {exc}") from None
            await anyio.to_thread.run_sync(self._check_kubelet_dir, resources)
            node = await anyio.to_thread.run_sync(self._node_devices)
            await self._write_cdi_spec(inventory, resources, self.config, fatal=True)
            self.state.replace(inventory, resources)
            self.kubelet = KubeletSide(self.config, self.state, self.metrics, node)
            if not self.nvml_ready:
                log.warning("no NVML: XID health checks are off")
            elif not self.health_policy.watching:
                log.info("%s", self.health_policy.describe())
            self._reload_wanted = anyio.Event()
            try:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    for spec in TASKS:
                        if spec.enabled(self):
                            tg.start_soon(guarded, spec, self, name=spec.name)
                    self.started.set()
                    if self._reload_pending():
                        self.request_reload("SIGHUP during start-up")
            except StopAgent as exc:
                raise AgentError(f"a vital task failed: {exc}") from None
            finally:
                self._tg = None
                await self._shutdown_nvml()
                log.info("agent stopped")

    async def _shutdown_nvml(self) -> None:
        if not self.nvml_ready:
            return
        if self.health is not None and not self.health.wait_stopped(0):
            # An abandoned NVML event wait is still in flight (it ends within its timeout): NVML
            # must not be shut down under it, and the process exit releases it anyway.
            log.debug("NVML left to the process exit: an event wait is still in flight")
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(0.3):
            await anyio.to_thread.run_sync(_quiet_shutdown, self.nvml, abandon_on_cancel=True)

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

    def _node_devices(self) -> NodeDevices:
        """Blocking (stats device nodes): what Allocate needs to know about the node."""
        from nvplugin.imex import discover_imex_channels

        try:
            imex = discover_imex_channels(self.config)
        except ConfigError as exc:
            raise AgentError(str(exc), exit_code=2) from None
        for warning in imex.warnings:
            log.warning("IMEX: %s", warning)
        return NodeDevices(control_nodes=existing_control_nodes(), imex_channels=imex.channels)

    async def _write_cdi_spec(
        self, inventory: Inventory, resources: tuple[Resource, ...], config: Config, fatal: bool = False
    ) -> None:
        """Under a CDI device-list strategy, the spec every CDI name Allocate hands out resolves
        in. Raises CdiSpecError (unwritable, no driver files to describe), as AgentError when
        `fatal` (at start)."""
        if not set(config.device_list_strategy) & CDI_STRATEGIES:
            return
        from nvplugin.cdi import CdiDriverMissing, CdiSpecError, options_from_config, write_specs

        try:
            options = options_from_config(config)
        except ValueError as exc:  # an unknown CDI feature flag or hook name
            raise AgentError(str(exc), exit_code=2) from None
        try:
            result = await anyio.to_thread.run_sync(write_specs, inventory, resources, options)
        except CdiDriverMissing as exc:
            if not self.simulated:
                if fatal:
                    raise AgentError(str(exc)) from None
                raise
            # Simulated GPUs on a machine without a driver: nothing real to describe.
            log.warning("fake GPUs: no CDI spec written: %s", exc)
            return
        except CdiSpecError as exc:
            if fatal:
                raise AgentError(str(exc)) from None
            raise
        for warning in result.warnings:
            log.warning("CDI spec: %s", warning)
        for path in result.removed:
            log.info("CDI spec: removed %s (no devices left in it)", path)
        if result.path is not None:
            log.info(
                "CDI spec %s: %d device names%s",
                result.path,
                result.device_names,
                "" if result.changed else " (already up to date)",
            )

    @property
    def simulated(self) -> bool:
        """Running on the fake NVML backend (--fake-gpus)."""
        from nvplugin.nvml.fake import FakeNvml

        return isinstance(self.nvml, FakeNvml)

    def _check_kubelet_dir(self, resources: tuple[Resource, ...]) -> None:
        try:
            check_kubelet_dir(self.config, resources)
            for path in clean_stale_sockets(self.config.plugin_dir):
                log.info("removed %s, left by an agent that is gone", path)
        except KubeletDirError as exc:
            raise AgentError(str(exc), exit_code=2) from None
        except AnotherAgent as exc:
            raise AgentError(str(exc)) from None

    # --- reloads

    async def _reload(self) -> bool:
        config = self.config
        if self.config_source is not None:
            try:  # reads and parses a file: off the loop
                config = await anyio.to_thread.run_sync(self.config_source.load)
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
            resources = _plan(inventory, config)
            # Before the swap: a spec that cannot be written keeps the running configuration.
            await self._write_cdi_spec(inventory, resources, config)
        except Exception as exc:
            log.error("reload: keeping the running configuration: %s", exc)
            return False
        self.config = config
        self.state.replace(inventory, resources)
        log.info("reload: %d resource(s): %s", len(resources), ", ".join(r.name for r in resources))
        if self.kubelet is not None:
            self.kubelet.use_config(config)
            self.kubelet.request_restart("configuration reloaded")
        return True

    async def _serve_reloads(self) -> None:
        assert self._reload_wanted is not None
        while True:
            await self._reload_wanted.wait()
            # Requests arriving in the next moments join this one: a burst of SIGHUPs (a script,
            # a config-manager sidecar) is one reload, not one re-registration per signal.
            await anyio.sleep(RELOAD_SETTLE)
            self._reload_wanted = anyio.Event()  # what arrives during this reload asks for one more
            log.info("reloading: %s", self._reload_why)
            await self.reload()

    # --- signals

    async def _serve_signals(self) -> None:
        assert self._signals is not None
        async for signum in self._signals:
            if signum == signal.SIGHUP:
                self.request_reload("SIGHUP")
            else:
                log.info("%s: shutting down", signal.Signals(signum).name)
                self.stop()
                return

    # --- probes

    def liveness(self) -> tuple[bool, str]:
        if self._tg is None:
            return False, "the agent's task group is not running"
        return True, f"event loop answering; generation {self.generation}"

    def readiness(self) -> tuple[bool, str]:
        if self.kubelet is None:
            return False, "starting"
        return self.kubelet.readiness()


# --- task bodies that need more than one call


async def _serve_metrics(agent: Agent) -> None:
    assert agent.kubelet is not None and agent.config.metrics_address is not None
    # Off the start -> Register path, like the watcher; but serve probes even if Register hangs.
    with anyio.move_on_after(5.0):
        await agent.kubelet.first_attempt.wait()
    from nvplugin.metrics_server import MetricsServer

    server = MetricsServer(
        agent.config.metrics_address, agent.metrics, liveness=agent.liveness, readiness=agent.readiness
    )
    agent.metrics_server = server
    try:
        await server.serve()
    except OSError as exc:
        # A taken or bad port: say so, keep serving the kubelet, try again later.
        raise TaskFailed(f"{exc}; metrics and probes are unavailable until it can bind") from None


async def _serve_fake_control(agent: Agent) -> None:
    from nvplugin.nvml.fake import FakeNvml
    from nvplugin.nvml.fakecontrol import ControlError, default_control_path, serve_fake_control

    assert isinstance(agent.nvml, FakeNvml)
    path = agent.fake_control or default_control_path()
    try:
        await serve_fake_control(agent.nvml, path, forbidden_dir=agent.config.plugin_dir)
    except ControlError as exc:
        # Another agent serves that socket, or the path is unusable: fault injection is off
        # for this agent; it still serves the kubelet.
        log.warning("fake-GPU fault injection is off: %s", exc)


async def _serve_node_labels(agent: Agent) -> None:
    from nvplugin.nodelabels import run_node_labels

    assert agent.kubelet is not None
    await agent.kubelet.registered_once.wait()  # the Kubernetes client's imports wait for Register
    await run_node_labels(agent)


def _wants_mps(agent: Agent) -> bool:
    # An MPS root set, or a resource shared with MPS: without either, MPS's modules are not
    # imported at all.
    if agent.config.mps_root is None and not agent.config.sharing.mps:
        return False
    from nvplugin.mps import wants_mps_daemons

    return wants_mps_daemons(agent)


async def _serve_mps(agent: Agent) -> None:
    from nvplugin.mps import run_mps_daemons

    await run_mps_daemons(agent)


def _kubelet(agent: Agent) -> KubeletSide:
    assert agent.kubelet is not None
    return agent.kubelet


async def _serve_health(agent: Agent) -> None:
    """One watcher for the agent's life (its faults survive its restarts), made once the first
    registration is under way: health checks begin right after GPUs are advertised, and their
    imports stay off the start -> Register path."""
    if agent.health is None:
        assert agent.kubelet is not None
        await agent.kubelet.first_attempt.wait()
        from nvplugin.health import HealthWatcher

        agent.health = HealthWatcher(agent.nvml, agent.state, agent.health_policy, metrics=agent.metrics)
    await agent.health.run()


# Every task of the agent, in start order (see the module docstring).
TASKS: tuple[TaskSpec[Agent], ...] = (
    TaskSpec(
        "signals",
        Agent._serve_signals,
        enabled=lambda a: a._signals is not None,
        may_finish=True,
        restart=None,
    ),
    TaskSpec("kubelet-side", lambda a: _kubelet(a).serve()),
    TaskSpec("kubelet-watcher", lambda a: _kubelet(a).watch_directory()),
    TaskSpec("reloads", Agent._serve_reloads),
    TaskSpec(
        "health",
        _serve_health,
        enabled=lambda a: a.nvml_ready and a.health_policy.watching,
        restart=Backoff(initial=0.5, cap=30.0, healthy_after=60.0),
    ),
    TaskSpec("mps-daemons", _serve_mps, enabled=_wants_mps),
    TaskSpec("fake-control", _serve_fake_control, enabled=lambda a: a.simulated, may_finish=True),
    TaskSpec(
        "device-metrics",
        lambda a: track_devices(a.state, a.metrics),
        enabled=lambda a: a.metrics is not NULL_METRICS,
    ),
    TaskSpec(
        "metrics-server",
        _serve_metrics,
        enabled=lambda a: a.config.metrics_address is not None,
        restart=Backoff(initial=60.0, cap=60.0),
    ),
    TaskSpec(
        "node-labels",
        _serve_node_labels,
        enabled=lambda a: a.config.labels or a.config.gfd_output_file is not None,
    ),
)


def _plan(inventory: Inventory, config: Config) -> tuple[Resource, ...]:
    plan = plan_resources(inventory, config)
    for warning in plan.warnings:
        log.warning("%s", warning)
    return plan.resources


def _quiet_shutdown(nvml: Nvml) -> None:
    try:
        nvml.shutdown()
    except NvmlError as exc:
        log.warning("NVML shutdown: %s", exc)


def _hint(exc: NvmlError) -> str:
    return "" if LIBRARY_HINT in str(exc) else f"Hint: {LIBRARY_HINT}."
