"""The agent's Kubernetes side: node labels, health Events and per-node config, as one task.

Started only with --labels, and its imports (kubernetes_asyncio above all) happen only after the
kubelet registration, so they never delay GPU advertisement. Desired labels are recomputed from
the NodeState whenever it changes; the reconciler writes only what differs from the Node.
"""

from __future__ import annotations

import functools
import importlib
import logging
from pathlib import Path

import anyio

from nvplugin.agent import Agent
from nvplugin.configload import ConfigSource

log = logging.getLogger(__name__)


# Heavy (about 0.4 s and 50 MiB): imported in a worker thread so the loop keeps serving meanwhile.
_CLIENT_MODULES = ("aiohttp", "kubernetes_asyncio.client", "kubernetes_asyncio.config")


async def run_node_integration(agent: Agent, source: ConfigSource) -> None:
    await agent.wait_ready()
    for module in _CLIENT_MODULES:
        await anyio.to_thread.run_sync(importlib.import_module, module)
    from nvplugin.core.labels import node_labels
    from nvplugin.k8s.integration import NodeIntegration, resolve_node_name
    from nvplugin.nodefacts import read_node_facts

    config = agent.config
    try:
        node_name = resolve_node_name(config.node_name)
    except ValueError as exc:
        log.error("node labels disabled: %s", exc)
        await anyio.sleep_forever()

    def switch_config(name: str | None, path: Path | None) -> None:
        source.select_file(str(path) if path is not None else None)
        agent.schedule_reload(f"node label selected config {name or '(empty)'}")

    node = NodeIntegration(
        node_name,
        kubeconfig=config.kubeconfig,
        timestamp=not config.gfd_no_timestamp,
        config_dir=config.config_dir,
        on_config_change=switch_config if config.config_dir else None,
        default_config=config.default_config,
    )
    if node.config_switcher is not None:
        node.config_switcher.initial()  # the CLI started with the same choice
    agent.node_events = node.publish_health_event
    node.labels.on_write = agent.metrics.label_write
    node.labels.on_api_error = lambda what: agent.metrics.api_error(what.replace(" ", "_"))
    node.events.on_write = agent.metrics.event_write

    async with anyio.create_task_group() as tg:
        tg.start_soon(node.run, name="node-integration")
        facts_for: object = None
        facts = None
        seen = -1
        while True:
            seen = agent.state.version
            inventory = agent.state.inventory
            if facts_for is not inventory:  # node facts read sysfs and NVML: only per discovery
                facts = await anyio.to_thread.run_sync(
                    functools.partial(
                        read_node_facts,
                        agent.nvml,
                        inventory,
                        machine_type_file=agent.config.machine_type_file,
                        timestamp=False,
                    )
                )
                facts_for = inventory
            assert facts is not None
            node.set_desired(node_labels(inventory, agent.state.resources, agent.config, facts))
            await agent.state.wait_changed(seen)
