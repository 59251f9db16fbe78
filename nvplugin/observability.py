"""Metrics and probes: what the agent counts, and the HTTP endpoint that shows it.

`Metrics` is the facade every component calls (`metrics.allocation(...)`, `metrics.xid(...)`).
It records into plain Python counters from the first moment of start-up, so nothing that
happens before the HTTP server starts (the first Register, above all) is lost, and it needs
no third-party import: prometheus-client is imported only when the server starts, off the
path to Register.
At scrape time a collector turns the recorded values into Prometheus metric families.
`NULL_METRICS` has the same methods and does nothing (metrics switched off, tests, tools), so
callers never check for None.

`track_devices` keeps the device gauges and health-transition counters in step with the
agent's state. The HTTP endpoint that shows all this is nvplugin.metrics_server (imported only
when it starts): this module stays cheap to import at start-up.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from nvplugin.core.resources import HEALTHY as KUBELET_HEALTHY
from nvplugin.core.resources import Resource, device_health

# Allocate answers in well under a millisecond on the fast path; the buckets resolve that
# region and still catch the slow tail (NVIDIA's topology look-ups took ~0.6 s per GPU pair).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5)

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"


# --------------------------------------------------------------------------- the facade

# Exposed names (with the nvplugin_ prefix), help texts and label names.
COUNTER_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "xid_events": ("XID events received from NVML, by XID code", ("code",)),
    "health_transitions": ("Device health changes, by resource and new state", ("resource", "to")),
    "allocations": ("Allocate calls answered, by resource and result", ("resource", "result")),
    "preferred_allocations": (
        "GetPreferredAllocation calls answered, by resource and result",
        ("resource", "result"),
    ),
    "registrations": ("Register calls made to the kubelet, by resource and result", ("resource", "result")),
    "kubelet_restarts": ("Kubelet restarts seen (kubelet.sock re-created)", ()),
    "label_writes": ("Successful writes of the node's labels", ()),
    "event_writes": ("Kubernetes Events created or updated", ()),
    "api_errors": ("Failed Kubernetes API calls, by call", ("kind",)),
    "api_retries": (
        "Kubernetes API calls retried after a backoff delay, by call and reason "
        "(conflict, expired, throttled, server_error, timeout, connection, watch_ended, ...)",
        ("call", "reason"),
    ),
}
HISTOGRAM_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "allocation_seconds": ("Time to answer Allocate, by resource", ("resource",)),
    "preferred_allocation_seconds": ("Time to answer GetPreferredAllocation, by resource", ("resource",)),
}


@dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; last = +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "less or equal").
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip((*map(_float_label, self.buckets), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class Metrics:
    """Records what the agent does. Cheap (a lock and a dict update), thread-safe, and free of
    third-party imports.

    Label values come from a small set (resource names, XID codes, API call kinds), so the
    number of series stays bounded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._devices: dict[tuple[str, str], int] = {}
        self._counters: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in COUNTER_FAMILIES}
        self._histograms: dict[str, dict[tuple[str, ...], _Histogram]] = {
            name: {} for name in HISTOGRAM_FAMILIES
        }

    # --- what components call

    def devices(self, resource: str, healthy: int, unhealthy: int) -> None:
        """The resource's current device count by health (after every ListAndWatch change)."""
        with self._lock:
            self._devices[(resource, HEALTHY)] = healthy
            self._devices[(resource, UNHEALTHY)] = unhealthy

    def forget_resource(self, resource: str) -> None:
        """The resource is no longer advertised (reload): drop its device gauges."""
        with self._lock:
            self._devices.pop((resource, HEALTHY), None)
            self._devices.pop((resource, UNHEALTHY), None)

    def xid(self, code: int) -> None:
        """An XID event arrived from NVML (whether or not it changed any device's health)."""
        self._count("xid_events", (str(code),))

    def health_transition(self, resource: str, to_state: str) -> None:
        """A device of `resource` went healthy -> unhealthy or back; `to_state` is the new state,
        "Healthy"/"healthy" or anything else for unhealthy (the kubelet's own rule)."""
        state = HEALTHY if to_state.lower() == HEALTHY else UNHEALTHY
        self._count("health_transitions", (resource, state))

    def allocation(self, resource: str, seconds: float, ok: bool) -> None:
        """One Allocate call: how long it took and whether it succeeded."""
        self._count("allocations", (resource, _result(ok)))
        self._observe("allocation_seconds", (resource,), seconds)

    def preferred_allocation(self, resource: str, seconds: float, ok: bool) -> None:
        """One GetPreferredAllocation call."""
        self._count("preferred_allocations", (resource, _result(ok)))
        self._observe("preferred_allocation_seconds", (resource,), seconds)

    def registered(self, resource: str, ok: bool = True) -> None:
        """One Register call to the kubelet for `resource` (ok=False: it was refused or failed)."""
        self._count("registrations", (resource, _result(ok)))

    def kubelet_restart(self) -> None:
        """The kubelet restarted (kubelet.sock re-created): the plugin servers start over."""
        self._count("kubelet_restarts", ())

    def label_write(self) -> None:
        """Node labels were written (one successful patch of the Node)."""
        self._count("label_writes", ())

    def event_write(self) -> None:
        """A Kubernetes Event was created or updated."""
        self._count("event_writes", ())

    def api_error(self, kind: str) -> None:
        """A Kubernetes API call failed; `kind` names the call: list_node, watch_node,
        patch_node, create_event, patch_event, load_config."""
        self._count("api_errors", (kind,))

    def api_retry(self, call: str, reason: str) -> None:
        """A Kubernetes API call will be retried after a backoff delay (nvplugin.k8s.retry
        names the reasons)."""
        self._count("api_retries", (call, reason))

    # --- reading back (tests, the collector)

    def value(self, name: str, *labels: str) -> float:
        """A counter's value or a device gauge ('devices'); 0 when never recorded."""
        with self._lock:
            if name == "devices":
                return float(self._devices.get((labels[0], labels[1]), 0))
            return self._counters[name].get(tuple(labels), 0.0)

    def _count(self, name: str, labels: tuple[str, ...]) -> None:
        with self._lock:
            series = self._counters[name]
            series[labels] = series.get(labels, 0.0) + 1

    def _observe(self, name: str, labels: tuple[str, ...], seconds: float) -> None:
        with self._lock:
            series = self._histograms[name]
            histogram = series.get(labels)
            if histogram is None:
                histogram = series[labels] = _Histogram(LATENCY_BUCKETS)
            histogram.observe(max(0.0, seconds))

    def snapshot(
        self,
    ) -> tuple[dict[tuple[str, str], int], dict[str, dict[tuple[str, ...], float]], dict[str, Any]]:
        """A consistent copy for one scrape."""
        with self._lock:
            histograms = {
                name: {labels: (h.cumulative(), h.total) for labels, h in series.items()}
                for name, series in self._histograms.items()
            }
            return (
                dict(self._devices),
                {name: dict(series) for name, series in self._counters.items()},
                histograms,
            )


class NullMetrics(Metrics):
    """Same methods, records nothing: for when metrics are switched off."""

    def _count(self, name: str, labels: tuple[str, ...]) -> None:
        return  # metrics are off: the null object records nothing, by design

    def _observe(self, name: str, labels: tuple[str, ...], seconds: float) -> None:
        return  # metrics are off

    def devices(self, resource: str, healthy: int, unhealthy: int) -> None:
        return  # metrics are off


NULL_METRICS = NullMetrics()


def _result(ok: bool) -> str:
    return "ok" if ok else "error"


def _float_label(value: float) -> str:
    return repr(float(value))


# --------------------------------------------------------------------------- device gauges


class StateView(Protocol):
    """What track_devices reads of the agent's NodeState."""

    @property
    def version(self) -> int: ...

    @property
    def resources(self) -> tuple[Resource, ...]: ...

    @property
    def unhealthy(self) -> Mapping[str, str]: ...

    async def wait_changed(self, seen_version: int) -> int: ...


DeviceHealth = dict[str, dict[str, str]]  # resource name -> advertised device ID -> health


def device_health_map(resources: tuple[Resource, ...], unhealthy: Mapping[str, str]) -> DeviceHealth:
    """What the kubelet is told, per resource and device (the same rule as ListAndWatch)."""
    return {r.name: {d.id: device_health(d, unhealthy) for d in r.devices} for r in resources}


def record_device_changes(metrics: Metrics, previous: DeviceHealth, current: DeviceHealth) -> None:
    """Set the device gauges from `current`; count a transition for every advertised device
    whose health differs from `previous` (devices that appear or vanish on reload are not
    transitions); drop the gauges of resources that are gone."""
    for name, devices in current.items():
        healthy = sum(1 for health in devices.values() if health == KUBELET_HEALTHY)
        metrics.devices(name, healthy, len(devices) - healthy)
        before = previous.get(name, {})
        for device_id, health in devices.items():
            if device_id in before and before[device_id] != health:
                metrics.health_transition(name, health)
    for name in previous.keys() - current.keys():
        metrics.forget_resource(name)


async def track_devices(state: StateView, metrics: Metrics) -> None:
    """Keep nvplugin_devices and nvplugin_health_transitions_total in step with the state:
    wakes on every state change (no polling), runs until cancelled."""
    previous: DeviceHealth = {}
    seen = -1
    while True:
        if state.version != seen:
            seen = state.version
            current = device_health_map(state.resources, state.unhealthy)
            record_device_changes(metrics, previous, current)
            previous = current
        await state.wait_changed(seen)
