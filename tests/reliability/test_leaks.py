"""Nothing accumulates: kubelet restart cycles and Allocate calls leave file descriptors,
threads, asyncio tasks, Python objects and resident memory where they were after a warm-up.

Full size: 1,000 restart cycles and 100,000 Allocates. The default (NVPLUGIN_RELIABILITY_SCALE=1,
sized for the CI budget) runs 1,000 cycles and 50,000 Allocates, about 35 s on 2 cores; 2
runs 2,000 and the full 100,000. A tenth of each run warms up (caches, pools, first-use
imports) before the baseline is taken.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Usage:
    fds: int
    threads: int
    tasks: int
    objects: int  # tracked by the garbage collector
    blocks: int  # every object and buffer the interpreter allocated
    rss_mib: float

    @staticmethod
    def now() -> Usage:
        gc.collect()
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])
        return Usage(
            fds=len(os.listdir("/proc/self/fd")),
            threads=threading.active_count(),
            tasks=len(asyncio.all_tasks()),
            objects=len(gc.get_objects()),
            blocks=sys.getallocatedblocks(),
            rss_mib=round(resident_pages * PAGE / 2**20, 1),
        )


# Growth allowed after the warm-up: slack for what comes and goes (a worker thread that
# idles out, a socket being closed, the directory watcher's batch of file events not yet
# handed over, the allocator's high-water mark); a leak of a few objects or a few kilobytes
# per cycle over the run exceeds it.
TOLERANCE = Usage(fds=4, threads=2, tasks=2, objects=3000, blocks=10_000, rss_mib=8.0)


SETTLE = 10.0


@contextmanager
def quiet_agent_logs() -> Iterator[None]:
    """pytest keeps every captured log record until the test ends: they would count as growth."""
    logger = logging.getLogger("nvplugin")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


async def measure(total: int, step: Callable[[int], Awaitable[None]]) -> Usage:
    """Usage after a tenth of the steps; then the rest run."""
    warm_up = max(1, total // 10)
    for i in range(warm_up):
        await step(i)
    before = Usage.now()
    for i in range(warm_up, total):
        await step(i)
    return before


def grown(before: Usage, after: Usage) -> dict[str, tuple[float, float]]:
    return {
        field: (getattr(before, field), getattr(after, field))
        for field in ("fds", "threads", "tasks", "objects", "blocks", "rss_mib")
        if getattr(after, field) > getattr(before, field) + getattr(TOLERANCE, field)
    }


async def check(figures: Figures, name: str, runs: int, before: Usage) -> None:
    """Usage back within the tolerance of `before`; given a few seconds, as what was in
    flight at the end (a connection closing, a batch of file events) settles."""
    after = Usage.now()
    with anyio.move_on_after(SETTLE):
        while grown(before, after):
            await anyio.sleep(0.05)
            after = Usage.now()
    figures.record(name, "runs", runs)
    figures.record(name, "after warm-up", before)
    figures.record(name, "at the end", after)
    assert grown(before, after) == {}, f"{name}: grew past the tolerance {TOLERANCE}: {grown(before, after)}"


async def test_kubelet_restart_cycles_leak_nothing(
    kubelet: KubeletSimulator, config: Config, figures: Figures
) -> None:
    cycles = scaled(1000, minimum=20)
    with quiet_agent_logs():
        async with running_agent(config, fake_nvml(GPUS)):
            await kubelet.wait_registered(GPU_RESOURCE)

            async def restart(i: int) -> None:
                # The simulator keeps every registration it saw: forget them, or they count.
                kubelet.registrations.clear()
                await kubelet.restart()
                plugin = await kubelet.wait_registered(GPU_RESOURCE, timeout=10)
                assert plugin.allocatable == GPUS

            before = await measure(cycles, restart)
            await check(figures, "kubelet restart cycles", cycles, before)


def allocate_many(socket_path: str, ids: list[str], numbers: range) -> None:
    """Allocate calls from grpcio (whose C core keeps its memory out of the Python heap)."""
    allocate = bytes(
        api.AllocateRequest(container_requests=[api.ContainerAllocateRequest(devices_ids=ids[:2])])
    )
    refused = bytes(
        api.AllocateRequest(container_requests=[api.ContainerAllocateRequest(devices_ids=["GPU-x"])])
    )
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        for i in numbers:
            # Now and then a refused one: the error path must not leak either.
            outcome = unary(channel, "Allocate", refused if i % 10 == 0 else allocate, timeout=10)
            assert outcome.code == (
                grpc.StatusCode.INVALID_ARGUMENT if i % 10 == 0 else grpc.StatusCode.OK
            ), outcome


async def test_allocates_leak_nothing(
    kubelet: KubeletSimulator, config: Config, plugin_dir: Path, figures: Figures
) -> None:
    calls = scaled(50_000, minimum=1000)
    warm_up = calls // 10
    with quiet_agent_logs():
        async with running_agent(config, fake_nvml(GPUS)):
            plugin = await kubelet.wait_registered(GPU_RESOURCE)
            socket_path, ids = str(plugin_dir / plugin.endpoint), list(plugin.devices)
            await anyio.to_thread.run_sync(allocate_many, socket_path, ids, range(warm_up))
            before = Usage.now()
            await anyio.to_thread.run_sync(allocate_many, socket_path, ids, range(warm_up, calls))
            await check(figures, "Allocate calls from grpcio (1 in 10 refused)", calls, before)
