"""What the API server says about this node: capacity, allocatable, labels, RuntimeClass nvidia."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nvplugin.core.config import Config
from nvplugin.core.inventory import Inventory
from nvplugin.core.labels import PRESENT_LABEL, NodeFacts, node_labels
from nvplugin.core.resources import GPU_RESOURCE, ResourcePlan
from nvplugin.doctor.result import FAIL, PASS, SKIP, WARN, CheckResult
from nvplugin.doctor.runtime import NVIDIA_RUNTIME, RuntimeFacts

ENABLE_API = (
    "run it in the agent's pod (kubectl -n kube-system exec <nvidia-device-plugin-ds pod> -- nvplugin "
    "doctor), or pass --kubeconfig FILE (or set KUBECONFIG) and --node-name NAME (or NODE_NAME)"
)
RUNTIME_CLASS = "nvidia"


@dataclass(frozen=True, slots=True)
class ClusterFacts:
    # False: no in-cluster service account and no kubeconfig (`problem` says where it looked).
    configured: bool
    problem: str | None = None
    node_name: str | None = None
    node: Mapping[str, Any] | None = None
    node_error: str | None = None
    runtime_class: Mapping[str, Any] | None = None
    runtime_class_error: str | None = None
    # HTTP status of a failed RuntimeClass read (403: not allowed).
    runtime_class_status: int = 0


async def read_cluster(config: Config, timeout: float) -> ClusterFacts:
    from nvplugin.k8s.client import ApiError, NodeApi

    try:
        api = await NodeApi.connect(config.kubeconfig, pool_size=1, request_timeout=timeout)
    except ApiError as exc:
        return ClusterFacts(configured=False, problem=exc.message, node_name=config.node_name)
    try:
        node, node_error = None, None
        if config.node_name:
            try:
                node, _ = await api.list_node(config.node_name)
                if node is None:
                    node_error = f'node "{config.node_name}" does not exist'
            except ApiError as exc:
                node_error = str(exc)
        try:
            runtime_class = await api.get_runtime_class(RUNTIME_CLASS)
            return ClusterFacts(
                True,
                node_name=config.node_name,
                node=node,
                node_error=node_error,
                runtime_class=runtime_class,
            )
        except ApiError as exc:
            return ClusterFacts(
                True,
                node_name=config.node_name,
                node=node,
                node_error=node_error,
                runtime_class_error=str(exc),
                runtime_class_status=exc.status,
            )
    finally:
        await api.close()


@dataclass(frozen=True, slots=True)
class Expected:
    """What the node should show when the agent runs with this config on these GPUs."""

    # Resource name -> device count (None: the GPUs are unknown).
    counts: Mapping[str, int] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def expected(inventory: Inventory | None, plan: ResourcePlan | None, config: Config) -> Expected:
    if inventory is None or plan is None:
        return Expected()
    labels = node_labels(inventory, plan.resources, config, NodeFacts())
    return Expected({r.name: len(r.devices) for r in plan.resources}, labels)


def _quantity(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def check_node(facts: ClusterFacts, want: Expected, config: Config) -> CheckResult:
    name = "node"
    if not facts.configured:
        return CheckResult(
            name, SKIP, "no Kubernetes API access configured", (facts.problem or "",), ENABLE_API
        )
    if not facts.node_name:
        return CheckResult(
            name, SKIP, "the node's name is unknown", fix="pass --node-name NAME or set NODE_NAME"
        )
    if facts.node is None:
        return CheckResult(
            name,
            FAIL,
            f"cannot read node {facts.node_name}: {facts.node_error}",
            fix="check --node-name/NODE_NAME (kubectl get nodes) and that the credentials may get nodes",
        )
    status = facts.node.get("status") or {}
    capacity, allocatable = status.get("capacity") or {}, status.get("allocatable") or {}
    labels = (facts.node.get("metadata") or {}).get("labels") or {}
    ours = sorted(k for k in capacity if k.startswith("nvidia.com/"))
    details = [f"{k}: capacity {capacity[k]}, allocatable {allocatable.get(k, '0')}" for k in ours]
    details += [
        f"label {k}={v}"
        for k, v in sorted(labels.items())
        if k in (PRESENT_LABEL, f"{GPU_RESOURCE}.product", f"{GPU_RESOURCE}.count")
    ]
    fails, warns = [], []
    if want.counts is None:
        if not _quantity(capacity.get(GPU_RESOURCE)) and not any(_quantity(capacity[k]) for k in ours):
            fails.append("the node has no nvidia.com/* capacity")
        else:
            warns.append("the GPUs are unknown here (see nvml), so the capacity cannot be compared")
    else:
        for resource, count in want.counts.items():
            have = _quantity(capacity.get(resource))
            free = _quantity(allocatable.get(resource))
            if have is None:
                fails.append(f"{resource}: not in the node's capacity (the agent would advertise {count})")
            elif have != count:
                fails.append(f"{resource}: capacity {have}, but the agent would advertise {count}")
            elif free is not None and free < have:
                warns.append(f"{resource}: {have - free} of {have} device(s) unhealthy (allocatable {free})")
        stale = [k for k in ours if k not in want.counts and _quantity(capacity[k])]
        warns += [f"{k}: capacity {capacity[k]} from an earlier configuration" for k in stale]
        for key in (PRESENT_LABEL, f"{GPU_RESOURCE}.product"):
            if key in want.labels and labels.get(key) != want.labels[key]:
                warns.append(f"label {key} is {labels.get(key, 'missing')!r}, expected {want.labels[key]!r}")
    if fails:
        return CheckResult(
            name,
            FAIL,
            "; ".join(fails),
            tuple(details + warns),
            "the kubelet takes capacity from the registered plugin: see plugin-registration and the "
            "agent's log; after a config change, restart the agent (kubectl -n kube-system rollout restart "
            "daemonset/nvidia-device-plugin-daemonset)",
        )
    if warns:
        labels_off = (
            "" if config.labels else " Node labels are written only with --labels / NVPLUGIN_LABELS=true."
        )
        return CheckResult(
            name,
            WARN,
            "; ".join(warns),
            tuple(details),
            "unhealthy devices: see the Node's Events (kubectl describe node) and docs/xid.md; stale "
            "resources drop to 0 when the kubelet restarts; labels are rewritten within a minute by a "
            f"running agent.{labels_off}",
        )
    counted = ", ".join(f"{k} {v}" for k, v in (want.counts or {}).items())
    return CheckResult(
        name,
        PASS,
        f"{facts.node_name}: capacity matches the GPUs ({counted}), labels present",
        tuple(details),
    )


def runtime_class_needed(engines: Sequence[RuntimeFacts], talos: bool) -> bool:
    """Talos always runs NVIDIA containers through the `nvidia` handler; elsewhere it is needed
    when the nvidia runtime is configured but not the default."""
    if talos:
        return True
    return any(e.nvidia_runtimes for e in engines) and not any(e.nvidia_is_default for e in engines)


def check_runtime_class(facts: ClusterFacts, engines: Sequence[RuntimeFacts], talos: bool) -> CheckResult:
    name = "runtime-class"
    needed = runtime_class_needed(engines, talos)
    why = "Talos runs NVIDIA containers through it" if talos else "nvidia is not the default runtime"
    if not facts.configured:
        return CheckResult(
            name,
            SKIP,
            "no Kubernetes API access configured" + (f" (needed: {why})" if needed else ""),
            (facts.problem or "",),
            f"{ENABLE_API}; or check by hand: kubectl get runtimeclass {RUNTIME_CLASS}",
        )
    if facts.runtime_class_error is not None:
        if facts.runtime_class_status == 403:
            return CheckResult(
                name,
                SKIP,
                "these credentials may not read RuntimeClasses (the agent's service account may not)",
                (facts.runtime_class_error,),
                f"check by hand: kubectl get runtimeclass {RUNTIME_CLASS}",
            )
        return CheckResult(name, WARN, "cannot read the RuntimeClass", (facts.runtime_class_error,))
    create = (
        "kubectl apply -k manifests/overlays/talos/ (adds RuntimeClass nvidia, handler nvidia, and runs the "
        "agent with it)"
    )
    if facts.runtime_class is None:
        if needed:
            return CheckResult(name, FAIL, f"RuntimeClass {RUNTIME_CLASS} is missing, and {why}", fix=create)
        return CheckResult(
            name, SKIP, f"no RuntimeClass {RUNTIME_CLASS}; not needed (nvidia is the default runtime)"
        )
    handler = str(facts.runtime_class.get("handler", ""))
    handlers = {h for e in engines for h in e.runtimes}
    if engines and handler not in handlers:
        return CheckResult(
            name,
            FAIL,
            f"RuntimeClass {RUNTIME_CLASS} names handler {handler!r}, which the container runtime does not have",
            (f"runtime handlers here: {', '.join(sorted(handlers)) or 'none'}",),
            f"set handler: {NVIDIA_RUNTIME} in the RuntimeClass, or configure that runtime (see container-runtime)",
        )
    return CheckResult(name, PASS, f"RuntimeClass {RUNTIME_CLASS} exists (handler {handler})")
