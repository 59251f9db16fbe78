"""Kubelet restarts under load: several grpcio clients call Allocate and GetPreferredAllocation
without pause while the kubelet simulator restarts again and again.

A restart window opens when the restart begins and closes when the kubelet has the agent
registered again (on its fresh socket) with its device list; calls that overlap a window may
fail (their socket is gone), no other call may. Every restart must end registered again.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import grpc
import pytest

from nvplugin.api import v1beta1 as api
from nvplugin.core.config import Config
from nvplugin.core.resources import GPU_RESOURCE
from nvplugin.simulate.kubelet import KubeletSimulator
from tests.conftest import fake_nvml, running_agent
from tests.reliability.clients import unary
from tests.reliability.conftest import Figures, scaled

pytestmark = pytest.mark.anyio

GPUS = 8
CLIENTS = 3
# Calls each client completes between restarts (counted, not timed).
CALLS_BETWEEN_RESTARTS = 10


@dataclass
class Schedule:
    """Where the plugin listens now, and whether a restart is under way. `epoch` goes up by
    one when a restart window opens and by one when it closes: odd means inside a window."""

    endpoint: str
    epoch: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def now(self) -> tuple[int, str]:
        with self.lock:
            return self.epoch, self.endpoint

    def open_window(self) -> None:
        with self.lock:
            self.epoch += 1

    def close_window(self, endpoint: str) -> None:
        with self.lock:
            self.endpoint = endpoint
            self.epoch += 1


@dataclass
class Client:
    number: int
    ids: list[str]
    outcomes: Counter[str] = field(default_factory=Counter)
    failures_outside_windows: list[str] = field(default_factory=list)
    calls: int = 0

    def run(self, schedule: Schedule) -> None:
        channel: grpc.Channel | None = None
        endpoint = None
        allocate = bytes(
            api.AllocateRequest(container_requests=[api.ContainerAllocateRequest(devices_ids=self.ids[:2])])
        )
        preferred = bytes(
            api.PreferredAllocationRequest(
                container_requests=[
                    api.ContainerPreferredAllocationRequest(available_deviceIDs=self.ids, allocation_size=2)
                ]
            )
        )
        try:
            while not schedule.stop.is_set():
                epoch, now_endpoint = schedule.now()
                if now_endpoint != endpoint:
                    if channel is not None:
                        channel.close()
                    channel = grpc.insecure_channel(f"unix://{now_endpoint}")
                    endpoint = now_endpoint
                assert channel is not None
                method, body = (
                    ("Allocate", allocate) if self.calls % 2 else ("GetPreferredAllocation", preferred)
                )
                outcome = unary(channel, method, body, timeout=10)
                self.calls += 1
                in_window = epoch % 2 == 1 or schedule.now()[0] != epoch
                self.outcomes[
                    f"{method}: {outcome.code.name}{' (in a restart window)' if in_window else ''}"
                ] += 1
                if outcome.code != grpc.StatusCode.OK and not in_window:
                    self.failures_outside_windows.append(f"{method}: {outcome.code.name}: {outcome.details}")
        finally:
            if channel is not None:
                channel.close()


async def test_restarts_under_load_fail_no_call_outside_restart_windows(
    kubelet: KubeletSimulator, config: Config, plugin_dir: Path, figures: Figures
) -> None:
    restarts = scaled(200, minimum=5)
    async with running_agent(config, fake_nvml(GPUS)):
        plugin = await kubelet.wait_registered(GPU_RESOURCE)
        ids = list(plugin.devices)
        schedule = Schedule(str(plugin_dir / plugin.endpoint))
        clients = [Client(n, ids) for n in range(CLIENTS)]

        async def calls_made(target: int) -> None:
            with anyio.fail_after(60):
                while min(c.calls for c in clients) < target:  # noqa: ASYNC110 - counters in threads
                    await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(anyio.to_thread.run_sync, client.run, schedule)
            try:
                for restart in range(1, restarts + 1):
                    await calls_made(min(c.calls for c in clients) + CALLS_BETWEEN_RESTARTS)
                    schedule.open_window()
                    await kubelet.restart()
                    plugin = await kubelet.wait_registered(GPU_RESOURCE, count=restart + 1, timeout=10)
                    assert plugin.allocatable == GPUS
                    schedule.close_window(str(plugin_dir / plugin.endpoint))
                await calls_made(min(c.calls for c in clients) + CALLS_BETWEEN_RESTARTS)
            finally:
                schedule.stop.set()
        # Registered after the last restart, streaming its devices.
        assert kubelet.restarts == restarts
        assert not kubelet.plugins[GPU_RESOURCE].stream_ended
        await kubelet.allocate(GPU_RESOURCE, ids[:1])

    outcomes: Counter[str] = sum((c.outcomes for c in clients), Counter())
    name = f"kubelet restarts under load ({CLIENTS} grpcio clients, {GPUS} fake GPUs)"
    figures.record(name, "restarts (each ended registered again)", restarts)
    figures.record(name, "calls", sum(outcomes.values()))
    figures.record(name, "outcomes", dict(sorted(outcomes.items())))
    failures = [f for c in clients for f in c.failures_outside_windows]
    assert failures == [], f"{len(failures)} calls failed outside restart windows: {failures[:5]}"
