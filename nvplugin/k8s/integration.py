"""Everything the agent does with the Kubernetes API, behind one object.

    node = NodeIntegration(resolve_node_name(flag), kubeconfig=..., metrics=agent.metrics,
                           config_dir=..., on_config_change=reload, initial_config=started_on)
    task_group.start_soon(node.run)          # after the kubelet registration
    node.set_desired(desired)                 # core.labels.DesiredLabels, on every state change
    node.publish_health_event(uuid, xid, reason, healthy=False)

One client, one watch on the Node: the label reconciler's watch also feeds the per-node config
switch, and the Event publisher uses the reconciler's connection. Importing this module does not
import kubernetes_asyncio; `run()` does, when it connects.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from typing import Literal

import anyio

from nvplugin.core.labels import DesiredLabels
from nvplugin.k8s.client import RateLimit
from nvplugin.k8s.events import NodeEventPublisher
from nvplugin.k8s.nodeconfig import DEFAULT_FALLBACKS, NodeConfigSwitcher, ReloadCallback
from nvplugin.k8s.reconciler import NodeLabelReconciler
from nvplugin.k8s.retry import DEFAULT_RETRY, RetryPolicy
from nvplugin.observability import NULL_METRICS, Metrics

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


class _Unset(enum.Enum):
    UNSET = "unset"


class NodeIntegration:
    """With `config_dir`, `initial_config` is required: the name of the config the agent
    started on (None: the empty config), as the wiring's one `NodeConfigSwitcher.initial()`
    chose it before the agent existed; it is not chosen a second time here."""

    def __init__(
        self,
        node_name: str,
        *,
        kubeconfig: str | None = None,
        timestamp: bool = True,
        config_dir: str | None = None,
        on_config_change: ReloadCallback | None = None,
        default_config: str | None = None,
        initial_config: str | Literal[_Unset.UNSET] | None = _Unset.UNSET,
        fallbacks: Sequence[str] = DEFAULT_FALLBACKS,
        events_namespace: str = "default",
        metrics: Metrics = NULL_METRICS,
        request_timeout: float = 30.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self.config_switcher: NodeConfigSwitcher | None = None
        if config_dir is not None:
            if on_config_change is None:
                raise ValueError("a config directory needs an on_config_change callback")
            if initial_config is _Unset.UNSET:
                raise ValueError(
                    "a config directory needs initial_config: the config name the agent started on "
                    "(NodeConfigSwitcher.initial(), None for the empty config)"
                )
            self.config_switcher = NodeConfigSwitcher(
                config_dir, on_config_change, default_config=default_config, fallbacks=fallbacks
            )
            self.config_switcher.started_with(initial_config)
        self.labels = NodeLabelReconciler(
            node_name,
            kubeconfig=kubeconfig,
            request_timeout=request_timeout,
            rate_limit=rate_limit,
            timestamp=timestamp,
            on_node_labels=self.config_switcher.observe if self.config_switcher else None,
            metrics=metrics,
            retry=retry,
        )
        self.events = NodeEventPublisher(
            node_name,
            self.labels.connected,
            node_uid=lambda: self.labels.node_uid,
            namespace=events_namespace,
            metrics=metrics,
        )

    def set_desired(self, desired: DesiredLabels) -> None:
        """The labels to set, and the keys to leave as the Node has them (their true value is
        unknown right now, e.g. nvidia.com/gpu.present while NVML fails)."""
        self.labels.set_desired(desired.labels, desired.keep)

    def refresh_timestamp(self) -> None:
        self.labels.refresh_timestamp()

    def publish_health_event(self, uuid: str, xid: int | None, reason: str, healthy: bool) -> None:
        self.events.publish_health_event(uuid, xid, reason, healthy)

    async def run(self) -> None:
        """Until cancelled; never raises anything else (each part retries on its own)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.labels.run, name="node-labels")
            tg.start_soon(self.events.run, name="node-events")
