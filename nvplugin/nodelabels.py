"""Node labels: one pipeline from a snapshot of the node to its labels.

    snapshot = read_snapshot(nvml, inventory, resources, config)   # blocking: sysfs and NVML
    labels = snapshot_labels(snapshot)                              # pure (core.labels)

The agent (`run_node_labels`, task node-labels) and `nvplugin labels` both go through it with
the same config (flags, environment and config file), so the command prints what the agent
writes. The agent's side also publishes health Events: it subscribes to NodeState's health
transitions. Its Kubernetes client (kubernetes_asyncio, ~0.4 s and 50 MiB) is imported in a
worker thread after the kubelet registration, so it never delays GPU advertisement.
"""

from __future__ import annotations

import functools
import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from nvplugin.core.config import Config
from nvplugin.core.inventory import Inventory
from nvplugin.core.labels import DesiredLabels, Labels, NodeFacts, desired_labels, node_labels
from nvplugin.core.resources import Resource
from nvplugin.nodefacts import read_node_facts
from nvplugin.nvml.base import Nvml
from nvplugin.state import HealthTransition

if TYPE_CHECKING:
    from nvplugin.agent import Agent

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


# --- the agent's task


# Heavy: imported in a worker thread so the loop keeps serving meanwhile.
_CLIENT_MODULES = ("aiohttp", "kubernetes_asyncio.client", "kubernetes_asyncio.config")


async def run_node_labels(agent: Agent) -> None:
    """Keep the node's labels equal to the snapshot's, and publish health Events, until cancelled."""
    for module in _CLIENT_MODULES:
        await anyio.to_thread.run_sync(importlib.import_module, module)
    from nvplugin.k8s.integration import NodeIntegration, resolve_node_name

    config = agent.config
    try:
        node_name = resolve_node_name(config.node_name)
    except ValueError as exc:
        from nvplugin.tasks import TaskFailed

        raise TaskFailed(f"node labels are off: {exc}") from None

    def switch_config(name: str | None, path: Path | None) -> None:
        assert agent.config_source is not None
        agent.config_source.select_file(str(path) if path is not None else None)
        agent.request_reload(f"node label selected config {name or '(empty)'}")

    node = NodeIntegration(
        node_name,
        kubeconfig=config.kubeconfig,
        timestamp=not config.gfd_no_timestamp,
        config_dir=config.config_dir,
        on_config_change=switch_config if config.config_dir and agent.config_source else None,
        default_config=config.default_config,
        # the CLI chose the start-up config (NodeConfigSwitcher.initial()) and loaded that file
        initial_config=Path(config.config_file).name if config.config_file else None,
        metrics=agent.metrics,
    )

    def publish(transition: HealthTransition) -> None:
        node.publish_health_event(transition.uuid, transition.xid, transition.reason, transition.healthy)

    unsubscribe = agent.state.subscribe(publish)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(node.run, name="node-integration")
            await _follow_state(agent, node.set_desired)
    finally:
        unsubscribe()


async def _follow_state(agent: Agent, set_desired: Callable[[DesiredLabels], None]) -> None:
    snapshot: NodeSnapshot | None = None
    while True:
        seen = agent.state.version
        inventory, resources, config = agent.state.inventory, agent.state.resources, agent.config
        if snapshot is None or snapshot.inventory is not inventory:
            # Node facts read sysfs and NVML: once per discovery.
            snapshot = await anyio.to_thread.run_sync(
                functools.partial(read_snapshot, agent.nvml, inventory, resources, config)
            )
        elif snapshot.resources is not resources or snapshot.config is not config:
            snapshot = NodeSnapshot(inventory, resources, config, snapshot.facts)
        set_desired(snapshot_desired(snapshot, agent.nvml_ready))
        await agent.state.wait_changed(seen)
