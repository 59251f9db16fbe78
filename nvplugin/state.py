"""The node's current state, shared by every task on the loop.

One snapshot of the inventory and resources, plus the health marks. Every change bumps
`version` and wakes all waiters at once (ListAndWatch streams, metrics, labels): no polling.
Only the loop thread mutates it; worker threads hand their results to the loop first.

It is also the one place health transitions are published: a mark that changes a device's
health wakes the streams (through `version`) and is handed, as a HealthTransition, to every
subscriber (Node Events); the device metrics follow the version like the streams do.
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
        self._unhealthy: dict[str, str] = {}
        self._unhealthy_xid: dict[str, int | None] = {}
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
        """NVML UUID (GPU or MIG device) -> why it is unhealthy. Read-only view."""
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

    def mark_unhealthy(self, uuid: str, reason: str, xid: int | None = None) -> bool:
        """Returns whether anything changed (a second mark for the same device keeps the first reason)."""
        if uuid in self._unhealthy:
            return False
        self._unhealthy[uuid] = reason
        self._unhealthy_xid[uuid] = xid
        log.debug("device %s marked Unhealthy: %s", uuid, reason)
        self._bump()
        self._publish(HealthTransition(uuid, False, reason, xid))
        return True

    def mark_healthy(self, uuid: str) -> bool:
        reason = self._unhealthy.pop(uuid, None)
        if reason is None:
            return False
        xid = self._unhealthy_xid.pop(uuid, None)
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
