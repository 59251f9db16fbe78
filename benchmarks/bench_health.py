"""Health watcher benchmark: XID -> updated device list latency, and idle CPU.

    python benchmarks/bench_health.py [--events 1000] [--gpus 8] [--idle-seconds 60] [--socket]

Latency: an XID is injected into the fake backend (in-process, or with --socket through the
control socket exactly as `nvplugin inject-xid` does), the watcher's blocked NVML wait wakes in
its worker thread, the loop applies the mark to NodeState, and a ListAndWatch-like waiter
(woken by NodeState, building the full device list as a stream does) receives the list with
that GPU Unhealthy. Target: p99 <= 10 ms. The fault is restart-app class with a 20 ms quiet
period, so the GPU recovers between events (recovery is not on the measured path; with no
quiet period at all a mark and its recovery can land between two stream sends and be
coalesced, which is right for a stream but leaves nothing to time).

Idle CPU: the watcher (default 500 ms wait timeout) and the waiter on 8 fake GPUs, nothing
happening, process CPU time over the window. Target: <= 0.1 % of one core.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import percentile

from nvplugin.core.config import Config
from nvplugin.core.resources import UNHEALTHY, build_resources, device_health
from nvplugin.core.xid import DEFAULT_POLICY, HealthPolicy, RecoveryPolicy
from nvplugin.health import HealthWatcher
from nvplugin.nvml import fakecontrol
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.fake import FakeLayout, FakeNvml
from nvplugin.state import NodeState

SETTINGS = {"wait_ms": 500}  # the watcher's default NVML wait timeout; --wait-ms changes it


def build(gpus: int) -> tuple[FakeNvml, NodeState]:
    fake = FakeNvml(FakeLayout.of(gpus))
    fake.init()
    inventory = discover(fake)
    return fake, NodeState(inventory, build_resources(inventory, Config()))


class ListWatcher:
    """What a ListAndWatch stream does on each change: build the full list of (id, health)."""

    def __init__(self, state: NodeState) -> None:
        self.state = state
        self.lists = 0
        self.unhealthy: set[str] = set()
        self.received: dict[str, float] = {}
        self.changed = anyio.Event()

    async def run(self) -> None:
        seen = -1
        while True:
            seen = await self.state.wait_changed(seen)
            devices = [
                (d.id, device_health(d, self.state.unhealthy))
                for r in self.state.resources
                for d in r.devices
            ]
            now = time.perf_counter()
            self.lists += 1
            unhealthy = {i for i, h in devices if h == UNHEALTHY}
            for device_id in unhealthy - self.unhealthy:
                self.received[device_id] = now
            self.unhealthy = unhealthy
            self.changed.set()
            self.changed = anyio.Event()


async def latency(events: int, gpus: int, via_socket: bool) -> list[float]:
    fake, state = build(gpus)
    policy = replace(
        DEFAULT_POLICY, recovery=RecoveryPolicy(enabled=True, quiet_period_s=0.02, probe_interval_s=0.005)
    )
    watcher = HealthWatcher(fake, state, policy)
    lister = ListWatcher(state)
    samples: list[float] = []
    path = f"/tmp/nvplugin-bench-{time.monotonic_ns()}.sock"
    async with anyio.create_task_group() as tg:
        tg.start_soon(watcher.run)
        tg.start_soon(lister.run)
        if via_socket:
            await tg.start(fakecontrol.serve_fake_control, fake, path)
        await watcher.ready.wait()
        await anyio.sleep(0.05)  # the first wait is blocking in its thread
        for n in range(events):
            gpu = state.inventory.gpus[n % gpus]
            with anyio.fail_after(5):
                while gpu.uuid in lister.unhealthy:  # recovered from the previous round?
                    await lister.changed.wait()
            lister.received.pop(gpu.uuid, None)
            started = time.perf_counter()
            if via_socket:
                answer = await anyio.to_thread.run_sync(
                    fakecontrol.request, path, {"op": "inject-xid", "gpu": gpu.index, "xid": 8}
                )
                assert answer["ok"], answer
            else:
                fake.inject_xid(gpu.index, 8)
            with anyio.fail_after(5):
                while gpu.uuid not in lister.received:
                    await lister.changed.wait()
            samples.append(lister.received[gpu.uuid] - started)
        tg.cancel_scope.cancel()
    assert watcher.stats.unhealthy_marks == events, watcher.stats
    return samples


async def latency_e2e(events: int, gpus: int, via_socket: bool) -> list[float]:
    """Through the real agent and the kubelet simulator: the time from injection until the
    simulator's ListAndWatch stream delivers the list with that GPU Unhealthy."""
    import shutil
    import tempfile

    from nvplugin.agent import Agent
    from nvplugin.core.resources import GPU_RESOURCE
    from nvplugin.simulate.kubelet import KubeletSimulator

    plugin_dir = Path(tempfile.mkdtemp(prefix="nvp-bench-", dir="/tmp"))
    control = str(plugin_dir) + "-fake.sock"
    fake = FakeNvml(FakeLayout.of(gpus))
    policy = replace(
        DEFAULT_POLICY, recovery=RecoveryPolicy(enabled=True, quiet_period_s=0.02, probe_interval_s=0.005)
    )
    agent = Agent(
        Config(kubelet_socket=str(plugin_dir / "kubelet.sock")),
        fake,
        handle_signals=False,
        health_policy=policy,
        fake_control=control,
    )
    samples: list[float] = []
    try:
        async with KubeletSimulator(plugin_dir) as kubelet, anyio.create_task_group() as tg:
            tg.start_soon(agent.run)
            plugin = await kubelet.wait_registered(GPU_RESOURCE, timeout=10)
            await anyio.sleep(0.2)  # the watcher is registered and blocked in its wait
            for n in range(events):
                gpu = fake.layout.gpus[n % gpus]
                await kubelet.wait_devices(GPU_RESOURCE, lambda p, u=gpu.uuid: p.devices[u] == "Healthy")
                started = time.monotonic()
                if via_socket:
                    request = {"op": "inject-xid", "gpu": n % gpus, "xid": 8}
                    answer = await anyio.to_thread.run_sync(fakecontrol.request, control, request)
                    assert answer["ok"], answer
                else:
                    fake.inject_xid(n % gpus, 8)
                plugin = await kubelet.wait_devices(
                    GPU_RESOURCE, lambda p, u=gpu.uuid: p.devices[u] == "Unhealthy"
                )
                samples.append(plugin.last_update_at - started)
            tg.cancel_scope.cancel()
    finally:
        shutil.rmtree(plugin_dir, ignore_errors=True)
    assert agent.health is not None and agent.health.stats.unhealthy_marks == events
    return samples


async def idle(seconds: float, gpus: int) -> tuple[float, HealthWatcher, int]:
    fake, state = build(gpus)
    watcher = HealthWatcher(fake, state, wait_timeout_ms=SETTINGS["wait_ms"])
    lister = ListWatcher(state)
    async with anyio.create_task_group() as tg:
        tg.start_soon(watcher.run)
        tg.start_soon(lister.run)
        await watcher.ready.wait()
        await anyio.sleep(1.0)  # settle: imports, thread pool start
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await anyio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        tg.cancel_scope.cancel()
    return 100.0 * cpu / wall, watcher, lister.lists


async def idle_e2e(seconds: float, gpus: int, with_watcher: bool = True) -> tuple[float, HealthWatcher, int]:
    """The whole agent (plugin server, kubelet watcher, health watcher) idle, with the kubelet
    simulator in the same process holding its ListAndWatch stream open."""
    import shutil
    import tempfile

    from nvplugin.agent import Agent
    from nvplugin.core.resources import GPU_RESOURCE
    from nvplugin.simulate.kubelet import KubeletSimulator

    plugin_dir = Path(tempfile.mkdtemp(prefix="nvp-bench-", dir="/tmp"))
    fake = FakeNvml(FakeLayout.of(gpus))
    agent = Agent(
        Config(kubelet_socket=str(plugin_dir / "kubelet.sock")),
        fake,
        handle_signals=False,
        health_policy=DEFAULT_POLICY if with_watcher else HealthPolicy(all_disabled=True),
        fake_control=str(plugin_dir) + "-fake.sock",
    )
    try:
        async with KubeletSimulator(plugin_dir) as kubelet, anyio.create_task_group() as tg:
            tg.start_soon(agent.run)
            plugin = await kubelet.wait_registered(GPU_RESOURCE, timeout=10)
            await anyio.sleep(2.0)  # settle: imports, the kubelet-directory watcher's thread
            updates = plugin.updates
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await anyio.sleep(seconds)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            tg.cancel_scope.cancel()
    finally:
        shutil.rmtree(plugin_dir, ignore_errors=True)
    # Without the watcher, a never-run one stands in: its counters stay 0.
    return 100.0 * cpu / wall, agent.health or HealthWatcher(fake, agent.state), plugin.updates - updates


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--socket", action="store_true", help="inject through the control socket")
    parser.add_argument("--e2e", action="store_true", help="through the agent and the kubelet simulator")
    parser.add_argument(
        "--without-watcher", action="store_true", help="with --e2e: idle baseline of the agent alone"
    )
    parser.add_argument(
        "--wait-ms", type=int, default=SETTINGS["wait_ms"], help="the watcher's NVML wait timeout"
    )
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (the `fast` extra)")
    args = parser.parse_args()
    SETTINGS["wait_ms"] = args.wait_ms
    # The agent logs every transition: keep that cost on the measured path, not the terminal's.
    logging.basicConfig(stream=open(os.devnull, "w"), level=logging.INFO)  # noqa: SIM115
    backend_options = {"use_uvloop": True} if args.uvloop else {}

    measure = latency_e2e if args.e2e else latency
    samples = anyio.run(measure, args.events, args.gpus, args.socket, backend_options=backend_options)
    ms = [s * 1000 for s in samples]
    path = "control socket" if args.socket else "in-process injection"
    receiver = "kubelet simulator via the agent's ListAndWatch" if args.e2e else "list waiter on NodeState"
    print(f"XID -> updated list ({path} -> {receiver}), {len(ms)} events on {args.gpus} fake GPUs:")
    print(
        f"  p50 {percentile(ms, 50):.3f} ms  p90 {percentile(ms, 90):.3f} ms  p99 {percentile(ms, 99):.3f} ms  "
        f"max {max(ms):.3f} ms  mean {statistics.fmean(ms):.3f} ms   (target p99 <= 10 ms)"
    )
    if args.idle_seconds > 0:
        if args.e2e:
            cpu_pct, watcher, lists = anyio.run(
                idle_e2e,
                args.idle_seconds,
                args.gpus,
                not args.without_watcher,
                backend_options=backend_options,
            )
        else:
            cpu_pct, watcher, lists = anyio.run(
                idle, args.idle_seconds, args.gpus, backend_options=backend_options
            )
        s = watcher.stats
        what = "watcher + list waiter"
        if args.e2e:
            what = "agent + " + ("no health watcher" if args.without_watcher else "health watcher")
            what += " + kubelet simulator"
        print(f"idle CPU over {args.idle_seconds:g} s, {what}, {args.gpus} fake GPUs:")
        print(
            f"  {cpu_pct:.4f} % of one core   (target <= 0.1 %)   "
            f"waits {s.waits}, timeouts {s.timeouts}, lists sent {lists}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
