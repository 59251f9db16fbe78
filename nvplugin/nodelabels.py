"""Node labels: one pipeline from a snapshot of the node to its labels.

    snapshot = read_snapshot(nvml, inventory, resources, config)   # blocking: sysfs and NVML
    labels = snapshot_labels(snapshot)                              # pure (core.labels)

The agent (`run_node_labels`, task node-labels), `nvplugin run --oneshot` and `nvplugin labels`
all go through it with the same configuration (flags, environment and config file), so the
command prints what the agent writes. The labels go to the Node through the Kubernetes API
(--labels) and/or to an NFD features file (--output-file), as GFD writes them: again whenever
the GPUs, their health or the configuration change, and every relabel period
(--sleep-interval, node facts re-read, timestamp refreshed). The agent's side also publishes
health Events: it subscribes to NodeState's health transitions. Its Kubernetes client
(kubernetes_asyncio, ~0.4 s and 50 MiB) is imported in a worker thread after the kubelet
registration, so it never delays GPU advertisement.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import anyio

from nvplugin.core.config import Config, ConfigError
from nvplugin.core.inventory import Inventory
from nvplugin.core.labels import (
    PRESENT_LABEL,
    TIMESTAMP_LABEL,
    DesiredLabels,
    Labels,
    NodeFacts,
    desired_labels,
    feature_file,
    node_labels,
    valid_only,
)
from nvplugin.core.resources import Resource, plan_resources
from nvplugin.nodefacts import read_node_facts
from nvplugin.nvml.base import Nvml, NvmlError
from nvplugin.nvml.early import EarlyStart
from nvplugin.state import HealthTransition

if TYPE_CHECKING:
    from nvplugin.agent import Agent
    from nvplugin.k8s.integration import NodeIntegration

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """Everything the labels are computed from."""

    inventory: Inventory
    resources: tuple[Resource, ...]
    config: Config
    facts: NodeFacts


def read_snapshot(
    nvml: Nvml,
    inventory: Inventory,
    resources: tuple[Resource, ...],
    config: Config,
    *,
    timestamp: bool = False,
    clock: Callable[[], float] = time.time,
) -> NodeSnapshot:
    """Blocking (sysfs, NVML): call it in a worker thread from the loop."""
    facts = read_node_facts(
        nvml, inventory, machine_type_file=config.machine_type_file, timestamp=timestamp, clock=clock
    )
    return NodeSnapshot(inventory, resources, config, facts)


def snapshot_labels(snapshot: NodeSnapshot) -> Labels:
    return node_labels(snapshot.inventory, snapshot.resources, snapshot.config, snapshot.facts)


def snapshot_desired(snapshot: NodeSnapshot, nvml_ready: bool = True) -> DesiredLabels:
    """What the agent reconciles the node to: the snapshot's labels, or, when NVML could not be
    read, the node's GPU labels left as they are (a transient failure never deletes
    nvidia.com/gpu.present)."""
    inventory = snapshot.inventory if nvml_ready else None
    return desired_labels(inventory, snapshot.resources, snapshot.config, snapshot.facts)


def labels_once(
    config: Config,
    *,
    timestamp: bool = True,
    clock: Callable[[], float] = time.time,
    warn: TextIO,
    early: EarlyStart | None = None,
) -> Labels:
    """The labels for this node, read now: NVML (or the fake backend), discovery, the resources
    the agent would advertise and the node facts. Blocking. `early`: NVML's start-up already
    under way (without the topology: labels do not use it). Raises ConfigError, NvmlError (and the fake backend's
    LayoutError)."""
    if early is None:
        from nvplugin.nvml import open_backend

        early = EarlyStart(open_backend(config), topology=False)
    nvml = early.nvml
    try:
        inventory = early.inventory()
        try:
            plan = plan_resources(inventory, config)
            resources = plan.resources
            for warning in plan.warnings:
                print(f"warning: {warning}", file=warn)
        except ConfigError as exc:
            # The device plugin refuses this layout; GFD still labels it (MIG-INVALID), so do we.
            print(f"warning: {exc}", file=warn)
            resources = ()
        snapshot = read_snapshot(
            nvml,
            inventory,
            resources,
            config,
            timestamp=timestamp and not config.gfd_no_timestamp,
            clock=clock,
        )
    finally:
        if early.initialised_ok():
            try:
                nvml.shutdown()
            except NvmlError as exc:
                print(f"warning: NVML shutdown failed: {exc}", file=warn)
    for problem in inventory.problems:
        print(f"warning: {problem}", file=warn)
    good, bad = valid_only(snapshot_labels(snapshot))
    for item in bad:
        print(f"warning: left out {item}: not a valid Kubernetes label value", file=warn)
    return good


def write_feature_file(path: str, labels: Mapping[str, str]) -> None:
    """NFD's features.d format, through a temporary file and a rename, so NFD never reads half
    a file (GFD writes it the same way). Blocking. OSError when it cannot be written."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(feature_file(labels))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the agent's task


# Heavy: imported in a worker thread so the loop keeps serving meanwhile.
_CLIENT_MODULES = ("aiohttp", "kubernetes_asyncio.client", "kubernetes_asyncio.config")


async def connect_node(config: Config, agent: Agent | None = None) -> NodeIntegration:
    """The Kubernetes side for this node (its client imported in a worker thread)."""
    for module in _CLIENT_MODULES:
        await anyio.to_thread.run_sync(importlib.import_module, module)
    from nvplugin.k8s.client import RateLimit
    from nvplugin.k8s.integration import NodeIntegration, resolve_node_name
    from nvplugin.observability import NULL_METRICS
    from nvplugin.tasks import TaskFailed

    try:
        node_name = resolve_node_name(config.node_name)
    except ValueError as exc:
        raise TaskFailed(f"node labels are off: {exc}") from None

    def switch_config(name: str | None, path: Path | None) -> None:
        assert agent is not None and agent.config_source is not None
        agent.config_source.select_file(str(path) if path is not None else None)
        agent.request_reload(f"node label selected config {name or '(empty)'}")

    switching = config.config_dir is not None and agent is not None and agent.config_source is not None
    return NodeIntegration(
        node_name,
        kubeconfig=config.kubeconfig,
        timestamp=not config.gfd_no_timestamp,
        config_dir=config.config_dir if switching else None,
        on_config_change=switch_config if switching else None,
        default_config=config.default_config,
        # the CLI chose the start-up config (NodeConfigSwitcher.initial()) and loaded that file
        initial_config=Path(config.config_file).name if config.config_file else None,
        metrics=agent.metrics if agent is not None else NULL_METRICS,
        rate_limit=RateLimit(config.kube_api_qps, config.kube_api_burst),
    )


async def run_node_labels(agent: Agent) -> None:
    """Keep the node's labels (on the Node and/or in the features file) equal to the
    snapshot's, and publish health Events, until cancelled."""
    node = await connect_node(agent.config, agent) if agent.config.labels else None
    if node is None:
        await _follow_state(agent, None)
        return

    def publish(transition: HealthTransition) -> None:
        node.publish_health_event(transition.uuid, transition.xid, transition.reason, transition.healthy)

    unsubscribe = agent.state.subscribe(publish)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(node.run, name="node-integration")
            await _follow_state(agent, node)
    finally:
        unsubscribe()


async def _follow_state(agent: Agent, node: NodeIntegration | None) -> None:
    snapshot: NodeSnapshot | None = None
    relabel = False
    while True:
        seen = agent.state.version
        inventory, resources, config = agent.state.inventory, agent.state.resources, agent.config
        if snapshot is None or snapshot.inventory is not inventory or relabel:
            # Node facts read sysfs and NVML: once per discovery, and once per relabel period.
            snapshot = await anyio.to_thread.run_sync(
                functools.partial(read_snapshot, agent.nvml, inventory, resources, config)
            )
        elif snapshot.resources is not resources or snapshot.config is not config:
            snapshot = NodeSnapshot(inventory, resources, config, snapshot.facts)
        desired = snapshot_desired(snapshot, agent.nvml_ready)
        if node is not None:
            node.set_desired(desired)
            if relabel:
                node.refresh_timestamp()
        if config.gfd_output_file is not None:
            await _write_features(config, desired)
        period = config.gfd_sleep_interval_s
        relabel = False
        with anyio.move_on_after(period if math.isfinite(period) else math.inf) as waiting:
            await agent.state.wait_changed(seen)
        relabel = waiting.cancelled_caught


async def _write_features(config: Config, desired: DesiredLabels) -> None:
    assert config.gfd_output_file is not None
    if desired.keep(PRESENT_LABEL):
        # NVML cannot be read: the file keeps what it says (NFD would delete the node's labels).
        log.warning("NVML cannot be read: %s keeps its labels until it can", config.gfd_output_file)
        return
    labels = dict(desired.labels)
    if not config.gfd_no_timestamp:
        labels[TIMESTAMP_LABEL] = str(int(time.time()))
    try:
        await anyio.to_thread.run_sync(write_feature_file, config.gfd_output_file, labels)
    except OSError as exc:
        log.error("cannot write the labels to %s: %s", config.gfd_output_file, exc.strerror or exc)


async def label_node_once(config: Config, labels: Labels, within: float = 60.0) -> bool:
    """`nvplugin run --oneshot` with --labels: write `labels` to the Node once; whether the Node
    carried them within `within` seconds."""
    node = await connect_node(config)
    node.set_desired(DesiredLabels(labels))
    async with anyio.create_task_group() as tg:
        tg.start_soon(node.run, name="node-integration")
        with anyio.move_on_after(within) as waiting:
            await node.labels.wait_synced()
        tg.cancel_scope.cancel()
    return not waiting.cancelled_caught
