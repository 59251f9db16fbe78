"""Everything the agent does with the Kubernetes API, behind one object.

    node = NodeIntegration(resolve_node_name(flag), kubeconfig=..., config_dir=..., on_config_change=reload)
    task_group.start_soon(node.run)          # after the kubelet registration
    node.set_desired(labels)                  # whenever inventory, health or config change
    node.publish_health_event(uuid, xid, reason, healthy=False)

One client, one watch on the Node: the label reconciler's watch also feeds the per-node config
switch, and the Event publisher uses the reconciler's connection. Importing this module does not
import kubernetes_asyncio; `run()` does, when it connects.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence

from nvplugin.k8s.events import NodeEventPublisher
from nvplugin.k8s.nodeconfig import DEFAULT_FALLBACKS, NodeConfigSwitcher, ReloadCallback
from nvplugin.k8s.reconciler import NodeLabelReconciler

NODE_NAME_ENV = "NODE_NAME"


def resolve_node_name(flag: str | None, env: Mapping[str, str] = os.environ) -> str:
    """--node-name, else $NODE_NAME; a clear error when neither is set."""
    name = (flag or env.get(NODE_NAME_ENV, "")).strip()
    if not name:
        raise ValueError(
            "node labels need the node's name: set NODE_NAME from the downward API "
            "(env: valueFrom: fieldRef: fieldPath: spec.nodeName) or pass --node-name"
        )
    return name


class NodeIntegration:
    def __init__(
        self,
        node_name: str,
        *,
        kubeconfig: str | None = None,
        timestamp: bool = True,
        config_dir: str | None = None,
        on_config_change: ReloadCallback | None = None,
        default_config: str | None = None,
        fallbacks: Sequence[str] = DEFAULT_FALLBACKS,
        events_namespace: str = "default",
    ) -> None:
        self.config_switcher: NodeConfigSwitcher | None = None
        if config_dir is not None:
            if on_config_change is None:
                raise ValueError("a config directory needs an on_config_change callback")
            self.config_switcher = NodeConfigSwitcher(
                config_dir, on_config_change, default_config=default_config, fallbacks=fallbacks
            )
        self.labels = NodeLabelReconciler(
            node_name,
            kubeconfig=kubeconfig,
            timestamp=timestamp,
            on_node_labels=self.config_switcher.observe if self.config_switcher else None,
        )
        self.events = NodeEventPublisher(
            node_name,
            lambda: self.labels.api,
            node_uid=lambda: self.labels.node_uid,
            namespace=events_namespace,
        )

    def set_desired(self, labels: Mapping[str, str]) -> None:
        self.labels.set_desired(labels)

    def publish_health_event(self, uuid: str, xid: int | None, reason: str, healthy: bool) -> None:
        self.events.publish_health_event(uuid, xid, reason, healthy)

    async def run(self) -> None:
        """Until cancelled; never raises anything else (each part retries on its own)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.labels.run(), name="node-labels")
            tg.create_task(self.events.run(), name="node-events")
