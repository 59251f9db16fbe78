"""The node's current state, shared by every task on the loop.

One snapshot of the inventory and resources, plus the health marks. Every change bumps
`version` and wakes all waiters at once (ListAndWatch streams, metrics, labels): no polling.
Only the loop thread mutates it; worker threads hand their results to the loop first.

It is also the one place health transitions are published: a mark that changes a device's
health wakes the streams (through `version`) and is handed, as a HealthTransition, to every
subscriber (Node Events); the device metrics follow the version like the streams do. Marks are
kept per source (the XID watcher, each MPS daemon): a device is unhealthy while any source
marks it, and one source's recovery never clears another's mark.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import anyio

from nvplugin.core.inventory import Inventory
from nvplugin.core.resources import Resource

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HealthTransition:
    """A device (GPU or MIG UUID) turned Unhealthy (healthy=False) or Healthy again."""

    uuid: str
    healthy: bool
    reason: str
    xid: int | None = None


HealthSubscriber = Callable[[HealthTransition], None]


class NodeState:
    def __init__(self, inventory: Inventory, resources: tuple[Resource, ...]) -> None:
        self._inventory = inventory
        self._resources = resources
        self._by_name = {r.name: r for r in resources}
        # uuid -> source -> (reason, xid), in the order the marks were made; and the derived
        # uuid -> reason view that readers use.
        self._marks: dict[str, dict[str, tuple[str, int | None]]] = {}
        self._unhealthy: dict[str, str] = {}
        self._subscribers: list[HealthSubscriber] = []
        self._version = 0
        self._changed: anyio.Event | None = None

    # --- reading

    @property
    def version(self) -> int:
        return self._version

    @property
    def inventory(self) -> Inventory:
        return self._inventory

    @property
    def resources(self) -> tuple[Resource, ...]:
        return self._resources

    @property
    def unhealthy(self) -> Mapping[str, str]:
        """NVML UUID (GPU or MIG device) -> why it is unhealthy (each marking source's reason,
        joined by "; "). Read-only view."""
        return MappingProxyType(self._unhealthy)

    def resource(self, name: str) -> Resource | None:
        return self._by_name.get(name)

    # --- changing (loop thread only)

    def replace(self, inventory: Inventory, resources: tuple[Resource, ...]) -> None:
        """A new discovery or config: health marks of devices that still exist are kept."""
        self._inventory = inventory
        self._resources = resources
        self._by_name = {r.name: r for r in resources}
        self._bump()

    def mark_unhealthy(self, uuid: str, reason: str, xid: int | None = None, source: str = "xid") -> bool:
        """Mark a device unhealthy on behalf of `source` (the XID watcher, an MPS daemon, ...).

        A device is unhealthy while any source marks it; sources never clear each other's
        marks. Returns whether this source's mark is new (a second mark from the same source
        keeps the first reason). A transition is published only when the device turns
        Unhealthy, not when a second source agrees."""
        marks = self._marks.setdefault(uuid, {})
        if source in marks:
            return False
        was_healthy = len(marks) == 0
        marks[source] = (reason, xid)
        self._unhealthy[uuid] = _joined(marks)
        log.debug("device %s marked Unhealthy by %s: %s", uuid, source, reason)
        self._bump()
        if was_healthy:
            self._publish(HealthTransition(uuid, False, reason, xid))
        return True

    def mark_healthy(self, uuid: str, source: str = "xid") -> bool:
        """Clear `source`'s mark; the device is Healthy again once no source marks it.
        Returns whether that source had marked it."""
        marks = self._marks.get(uuid)
        if marks is None or source not in marks:
            return False
        reason, xid = marks.pop(source)
        if marks:
            self._unhealthy[uuid] = _joined(marks)
            log.debug(
                "device %s: %s cleared its mark, still Unhealthy: %s", uuid, source, self._unhealthy[uuid]
            )
            self._bump()
            return True
        del self._marks[uuid]
        del self._unhealthy[uuid]
        log.debug("device %s Healthy again (was: %s)", uuid, reason)
        self._bump()
        self._publish(HealthTransition(uuid, True, f"recovered from: {reason}", xid))
        return True

    def subscribe(self, subscriber: HealthSubscriber) -> Callable[[], None]:
        """Hand every health transition to `subscriber` (called on the loop, must not block);
        returns the function that ends the subscription."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def _publish(self, transition: HealthTransition) -> None:
        for subscriber in tuple(self._subscribers):
            try:
                subscriber(transition)
            except Exception:
                log.exception("health subscriber failed for %s", transition.uuid)

    def poke(self) -> None:
        """Wake every waiter without a change, so they re-check their own stop conditions."""
        event, self._changed = self._changed, None
        if event is not None:
            event.set()

    def _bump(self) -> None:
        self._version += 1
        self.poke()

    async def wait_changed(self, seen_version: int) -> int:
        """Return once the version differs from `seen_version` or someone pokes; the current version."""
        if self._version == seen_version:
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
        return self._version


def _joined(marks: Mapping[str, tuple[str, int | None]]) -> str:
    return "; ".join(reason for reason, _ in marks.values())
