"""The GPU health watcher: NVML events in, health marks on NodeState out.

The blocking NVML wait runs in a worker thread with a short timeout and is abandoned on
cancellation, so the agent shuts down within one wait (well under a second). Each event comes
back to the loop, where the XID policy (nvplugin.core.xid) decides and NodeState is changed at
once: every ListAndWatch stream wakes on that change, and NodeState hands the transition to
its subscribers (Node Events). No polling while all devices are healthy; faulted devices are
probed every `probe_interval` until they recover (or never, for reboot-class faults).
`run()` raises when the watch breaks; the agent's task guard logs that and starts it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream

from nvplugin.core.inventory import Gpu
from nvplugin.core.resources import Resource
from nvplugin.core.xid import (
    DEFAULT_POLICY,
    Action,
    Fault,
    HealthPolicy,
    ProbeResult,
    after_probe,
    merge_fault,
    new_fault,
    recovery_hint,
)
from nvplugin.nvml.base import (
    EVENT_DOUBLE_BIT_ECC,
    EVENT_XID_CRITICAL,
    HEALTH_EVENTS,
    Nvml,
    NvmlError,
    NvmlEvent,
    NvmlGpuLost,
    NvmlNotSupported,
    NvmlTimeout,
)
from nvplugin.observability import NULL_METRICS, Metrics
from nvplugin.state import NodeState

log = logging.getLogger(__name__)

# GPU or MIG UUID -> (GPU instance, compute instance) for MIG devices.
Placements = Mapping[str, tuple[int, int]]
# What the wait thread hands the loop: an event (with the probe read as it arrived, for
# reset-class XIDs), or the error a wait failed with.
_Item = tuple[NvmlEvent, ProbeResult | None] | NvmlError


@dataclass(slots=True)
class WatcherStats:
    registered: int = 0
    unsupported: int = 0
    waits: int = 0
    timeouts: int = 0
    events: int = 0
    ecc_events: int = 0
    ignored_xids: int = 0
    wait_errors: int = 0
    probes: int = 0
    unhealthy_marks: int = 0
    recoveries: int = 0
    # Event sets registered (the first run, inventory changes and restarts after a failure).
    registrations: int = 0
    # Times run() registered the events again (inventory changed, or after a failure).
    restarts: int = 0
    registered_gpus: dict[int, int] = field(default_factory=dict)


class _EventSetHandle:
    """Makes an abandoned wait safe: NVML must not free an event set a thread still waits on,
    so whoever finishes last (the waiting thread or close()) frees it."""

    def __init__(self, nvml: Nvml, event_set: object) -> None:
        self._nvml = nvml
        self._event_set = event_set
        self._lock = threading.Lock()
        self._waiting = False
        self._closing = False
        self._freed = False

    def wait(self, timeout_ms: int) -> NvmlEvent:
        with self._lock:
            if self._closing:
                raise NvmlTimeout("nvmlEventSetWait", "event set closed")
            self._waiting = True
        try:
            return self._nvml.event_set_wait(self._event_set, timeout_ms)
        finally:
            with self._lock:
                self._waiting = False
                free_now = self._closing and not self._freed
                self._freed = self._freed or free_now
            if free_now:
                self._free()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            if self._waiting or self._freed:
                return
            self._freed = True
        self._free()

    def _free(self) -> None:
        try:
            self._nvml.event_set_free(self._event_set)
        except NvmlError as exc:
            log.warning("could not free the NVML event set: %s", exc)


def placements_from_state(state: NodeState) -> dict[str, tuple[int, int]]:
    """MIG UUID -> (GPU instance, compute instance), from the inventory's MIG devices and from
    the legacy MIG UUID form MIG-GPU-<uuid>/<gi>/<ci> of advertised devices."""
    placements: dict[str, tuple[int, int]] = {}
    for gpu in state.inventory.gpus:
        for mig in gpu.mig_devices:
            placements[mig.uuid] = (mig.gi_id, mig.ci_id)
    for resource in state.resources:
        for device in resource.devices:
            parsed = _legacy_mig_placement(device.uuid)
            if parsed is not None:
                placements.setdefault(device.uuid, parsed)
    return placements


def _legacy_mig_placement(uuid: str) -> tuple[int, int] | None:
    if not uuid.startswith("MIG-GPU-"):
        return None
    parts = uuid.removeprefix("MIG-").split("/")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return int(parts[1]), int(parts[2])


def event_targets(
    resources: tuple[Resource, ...],
    placements: Placements,
    gpu_uuid: str,
    gpu_instance: int | None,
    compute_instance: int | None,
) -> list[str]:
    """The UUIDs to mark for an event on `gpu_uuid`. A parent-level event (no GPU instance)
    marks the GPU, which makes every device on it Unhealthy (replicas and MIG devices too).
    A MIG event marks the MIG devices in that GPU instance (and compute instance, when
    given); if none is advertised separately (MIG strategy none), the whole GPU."""
    if gpu_instance is None:
        return [gpu_uuid]
    matches = set()
    for resource in resources:
        for device in resource.devices:
            if device.gpu_uuid != gpu_uuid or device.uuid == gpu_uuid:
                continue
            placement = placements.get(device.uuid)
            if placement is None or placement[0] != gpu_instance:
                continue
            if compute_instance is None or placement[1] == compute_instance:
                matches.add(device.uuid)
    return sorted(matches) or [gpu_uuid]


class HealthWatcher:
    """Run `await watcher.run()` in a task; cancel it to stop. One watcher for the agent's life:
    its faults (and their recovery) survive kubelet restarts, reloads and its own restarts."""

    def __init__(
        self,
        nvml: Nvml,
        state: NodeState,
        policy: HealthPolicy = DEFAULT_POLICY,
        *,
        metrics: Metrics = NULL_METRICS,
        wait_timeout_ms: int = 500,
        placements: Callable[[], Placements] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml = nvml
        self._state = state
        self._policy = policy
        self._metrics = metrics
        self._timeout_ms = wait_timeout_ms
        self._placements = placements or (lambda: placements_from_state(state))
        self._clock = clock
        self._faults: dict[str, Fault] = {}
        self._reported: set[str] = set()
        self._wake_recovery = anyio.Event()
        self.stats = WatcherStats()
        self.ready = anyio.Event()  # set once events are registered (tests, benchmarks)
        self._runs = 0
        # NVML wait threads still running (an abandoned one may overlap its successor briefly).
        self._pumps = 0
        self._pumps_changed = threading.Condition()

    @property
    def faults(self) -> Mapping[str, Fault]:
        return dict(self._faults)

    def wait_stopped(self, timeout_s: float = 1.0) -> bool:
        """Block until the abandoned NVML wait thread has left (at most one wait timeout after
        cancellation). Call it after the TaskGroup exits and before nvml.shutdown()."""
        with self._pumps_changed:
            return self._pumps_changed.wait_for(lambda: self._pumps == 0, timeout_s)

    # --- the task

    @property
    def watching(self) -> bool:
        """Whether the policy asks for any XID checks at all (else the task is not started)."""
        return self._policy.watching

    async def run(self) -> None:
        """Watch until cancelled; re-registers at once when the inventory changes. Raises when
        the watch breaks (the agent's guard restarts it with backoff). Cancellation abandons the
        NVML wait thread, which leaves within one wait timeout: call wait_stopped() before
        shutting NVML down."""
        self._runs += 1
        if self._runs == 1:
            log.info("%s", self._policy.describe())
        else:
            self.stats.restarts += 1
        while True:
            await self._watch()
            # _watch returns only when the inventory changed: register again at once.
            log.info("GPU inventory changed: registering health events again")
            self.stats.restarts += 1

    async def _watch(self) -> None:
        gpus = self._state.inventory.gpus
        handle, problems = await anyio.to_thread.run_sync(self._register, gpus)
        try:
            for index, problem in problems:
                # A GPU that cannot even be registered may be gone: only a failed probe marks it.
                log.warning("GPU %d: %s; probing it", index, problem)
            if problems:
                await self._probe_gpus([i for i, _ in problems], "event registration failed")
            self.ready.set()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._recovery_loop)
                tg.start_soon(self._follow_inventory, gpus, tg.cancel_scope)
                await self._event_loop(handle)
        finally:
            handle.close()

    def _register(self, gpus: tuple[Gpu, ...]) -> tuple[_EventSetHandle, list[tuple[int, str]]]:
        event_set = self._nvml.event_set_create()
        handle = _EventSetHandle(self._nvml, event_set)
        problems: list[tuple[int, str]] = []
        self.stats.registered_gpus = {}
        try:
            for gpu in gpus:
                try:
                    mask = self._nvml.device_supported_events(gpu.index) & HEALTH_EVENTS
                    if mask:
                        self._nvml.device_register_events(gpu.index, mask, event_set)
                        self.stats.registered_gpus[gpu.index] = mask
                        continue
                    why = "supports none of the XID and ECC events"
                except NvmlNotSupported as exc:
                    why = f"cannot register health events ({exc})"
                except NvmlError as exc:
                    problems.append((gpu.index, f"cannot register health events: {exc}"))
                    continue
                self.stats.unsupported += 1
                if gpu.uuid not in self._reported:
                    self._reported.add(gpu.uuid)
                    log.warning("GPU %d (%s) %s: it gets no XID health checks", gpu.index, gpu.uuid, why)
        except BaseException:
            handle.close()
            raise
        self.stats.registered = len(self.stats.registered_gpus)
        self.stats.registrations += 1
        log.info("health events registered on %d of %d GPU(s)", len(self.stats.registered_gpus), len(gpus))
        return handle, problems

    async def _follow_inventory(self, gpus: tuple[Gpu, ...], scope: anyio.CancelScope) -> None:
        seen = self._state.version
        known = {(g.index, g.uuid) for g in gpus}
        while True:
            seen = await self._state.wait_changed(seen)
            if {(g.index, g.uuid) for g in self._state.inventory.gpus} != known:
                scope.cancel()  # _watch returns; run() registers the new inventory
                return

    # --- events

    async def _event_loop(self, handle: _EventSetHandle) -> None:
        """One long-lived worker thread waits on NVML and hands only events and errors to the
        loop: timeouts never wake the loop, so an idle watcher costs the loop nothing."""
        send, receive = anyio.create_memory_object_stream[_Item](max_buffer_size=1024)
        stop = threading.Event()

        async def pump() -> None:
            try:
                await anyio.to_thread.run_sync(self._pump, handle, stop, send, abandon_on_cancel=True)
            finally:
                stop.set()  # an abandoned pump leaves within one wait timeout
                send.close()  # ends the loop below: a pump that stopped must not go unnoticed

        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(pump)
            async for item in receive:
                if isinstance(item, NvmlError):
                    self.stats.wait_errors += 1
                    log.warning("NVML event wait failed: %s; probing every GPU", item)
                    await self._probe_gpus([g.index for g in self._state.inventory.gpus], f"after {item}")
                else:
                    await self._on_event(*item)
        await anyio.lowlevel.checkpoint()  # if we are being cancelled, that ends us here
        # Not cancelled, yet the pump is gone (its queue overflowed): the guard restarts us.
        raise RuntimeError("the NVML event pump stopped")

    def _pump(
        self,
        handle: _EventSetHandle,
        stop: threading.Event,
        send: MemoryObjectSendStream[_Item],
    ) -> None:
        """Runs in the worker thread until `stop`. Raises (a crash the guard restarts) on a
        bug, or when waits keep failing: a fresh event set may cure that."""
        with self._pumps_changed:
            self._pumps += 1
        try:
            self._pump_until(handle, stop, send)
        finally:
            with self._pumps_changed:
                self._pumps -= 1
                self._pumps_changed.notify_all()

    def _pump_until(
        self,
        handle: _EventSetHandle,
        stop: threading.Event,
        send: MemoryObjectSendStream[_Item],
    ) -> None:
        errors_in_row = 0
        while not stop.is_set():
            self.stats.waits += 1
            try:
                event = handle.wait(self._timeout_ms)
                item: _Item = (event, self._probe_if_reset_class(event))
                errors_in_row = 0
            except NvmlTimeout:
                self.stats.timeouts += 1
                errors_in_row = 0
                continue
            except NvmlError as exc:
                errors_in_row += 1
                if errors_in_row > 5:
                    raise RuntimeError(
                        f"NVML event wait failed {errors_in_row} times in a row: {exc}"
                    ) from exc
                item = exc
            if stop.is_set():
                return
            try:
                anyio.from_thread.run_sync(send.send_nowait, item)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError, RuntimeError):
                return  # the loop side is gone or stuck: the guard starts over
            if errors_in_row:
                stop.wait(min(0.1 * 2**errors_in_row, 5.0))  # no hot loop on a broken event set

    def _probe_if_reset_class(self, event: NvmlEvent) -> ProbeResult | None:
        """In the wait thread, as the event is read: the driver's recovery action for a
        reset-class XID, before anyone can reset the GPU. A reset that follows at once (the
        order docs/xid.md gives) then still counts as the reset the driver asked for."""
        if event.event_type != EVENT_XID_CRITICAL or event.gpu_index is None:
            return None
        if self._policy.is_ignored(event.data) or self._policy.action(event.data) is not Action.RESET_GPU:
            return None
        return self._probe_now(event.gpu_index)

    async def _on_event(self, event: NvmlEvent, probe: ProbeResult | None = None) -> None:
        self.stats.events += 1
        gpu = self._gpu_of(event)
        where = f"GPU {gpu.index} ({gpu.uuid})" if gpu else f"GPU {event.gpu_index} / {event.uuid}"
        if event.event_type != EVENT_XID_CRITICAL:
            # NVIDIA acts on XIDs only: a DBE also raises XID 48 (or 94/95), which carries the action.
            self.stats.ecc_events += 1
            kind = "double-bit" if event.event_type & EVENT_DOUBLE_BIT_ECC else "single-bit"
            log.info("%s ECC event on %s (data %d): counted, not acted on", kind, where, event.data)
            return
        xid = event.data
        self._metrics.xid(xid)
        if self._policy.is_ignored(xid):
            self.stats.ignored_xids += 1
            log.info("XID %d on %s ignored by the health policy", xid, where)
            return
        if gpu is None:
            if event.gpu_index is None and event.uuid is None:
                log.warning("XID %d on a GPU NVML could not name; probing every GPU", xid)
                await self._probe_gpus([g.index for g in self._state.inventory.gpus], f"XID {xid}")
            else:
                log.warning("XID %d on %s, which this agent does not advertise: ignored", xid, where)
            return
        action = self._policy.action(xid)
        instance = ""
        if event.gpu_instance is not None:
            instance = f" (GPU instance {event.gpu_instance}, compute instance {event.compute_instance})"
        reason = f"XID {xid} on GPU {gpu.index}{instance}, needs {action.value}"
        targets = event_targets(
            self._state.resources, self._placements(), gpu.uuid, event.gpu_instance, event.compute_instance
        )
        for uuid in targets:
            self._fault(uuid, action, reason, xid)
            if probe is not None:
                self._after_probe(uuid, probe)

    def _gpu_of(self, event: NvmlEvent) -> Gpu | None:
        for gpu in self._state.inventory.gpus:
            if event.gpu_index is not None and gpu.index == event.gpu_index:
                return gpu
            if event.gpu_index is None and event.uuid is not None and gpu.uuid == event.uuid:
                return gpu
        return None

    def _fault(self, uuid: str, action: Action, reason: str, xid: int | None) -> None:
        now = self._clock()
        old = self._faults.get(uuid)
        if old is not None:
            fault = merge_fault(old, action, reason, xid, now)
            if fault.action is not old.action:
                log.warning("device %s: %s; now %s", uuid, reason, recovery_hint(fault))
            self._faults[uuid] = fault
            return
        fault = new_fault(action, reason, xid, now)
        self._faults[uuid] = fault
        full_reason = f"{reason}; {recovery_hint(fault)}"
        if self._state.mark_unhealthy(uuid, full_reason, xid):
            self.stats.unhealthy_marks += 1
            log.warning("health: device %s Unhealthy (XID %s): %s", uuid, xid, full_reason)
        self._wake_recovery.set()

    # --- probing and recovery

    async def _probe(self, index: int) -> ProbeResult:
        return await anyio.to_thread.run_sync(self._probe_now, index, abandon_on_cancel=True)

    def _probe_now(self, index: int) -> ProbeResult:
        """Blocking: in a worker thread."""
        self.stats.probes += 1
        try:
            probe = self._nvml.device_probe(index)
        except NvmlGpuLost as exc:
            return ProbeResult(ok=False, lost=True, error=str(exc))
        except NvmlError as exc:
            return ProbeResult(ok=False, error=str(exc))
        return ProbeResult(ok=True, recovery_action=probe.recovery_action)

    async def _probe_gpus(self, indexes: list[int], context: str) -> None:
        """Probe each GPU; only those that fail are marked (NVIDIA marks every device)."""
        by_index = {g.index: g for g in self._state.inventory.gpus}
        for index in indexes:
            gpu = by_index.get(index)
            if gpu is None:
                continue
            result = await self._probe(index)
            if result.ok:
                self._after_probe(gpu.uuid, result)
                continue
            action = Action.REBOOT if result.lost else Action.RESTART_APP
            what = "lost (fallen off the bus?)" if result.lost else "not answering"
            self._fault(gpu.uuid, action, f"GPU {index} {what} {context}: {result.error}", None)

    async def _recovery_loop(self) -> None:
        interval = self._policy.recovery.probe_interval_s
        while True:
            if not any(f.action is not Action.REBOOT for f in self._faults.values()):
                self._wake_recovery = anyio.Event()
                await self._wake_recovery.wait()
            await anyio.sleep(interval)
            await self._check_recovery()

    async def _check_recovery(self) -> None:
        gpu_of = {}
        for resource in self._state.resources:
            for device in resource.devices:
                gpu_of[device.uuid] = device.gpu_uuid
        by_uuid = {g.uuid: g for g in self._state.inventory.gpus}
        gpus = {gpu_of.get(u, u) for u, f in self._faults.items() if f.action is not Action.REBOOT}
        for gpu_uuid in sorted(gpus):
            gpu = by_uuid.get(gpu_uuid)
            if gpu is None:
                continue
            result = await self._probe(gpu.index)
            for uuid in [u for u in self._faults if gpu_of.get(u, u) == gpu_uuid]:
                self._after_probe(uuid, result)

    def _after_probe(self, uuid: str, result: ProbeResult) -> None:
        """Apply one probe of the GPU that `uuid` (the GPU or a MIG device on it) lives on."""
        fault = self._faults.get(uuid)
        if fault is None:
            return
        updated = after_probe(fault, result, self._clock(), self._policy.recovery)
        if updated is None:
            del self._faults[uuid]
            if self._state.mark_healthy(uuid):
                self.stats.recoveries += 1
                log.warning("health: device %s Healthy again (was: %s)", uuid, fault.reason)
        elif updated != fault:
            if updated.action is not fault.action:
                log.warning("health: device %s: %s; %s", uuid, updated.reason, recovery_hint(updated))
            self._faults[uuid] = updated
