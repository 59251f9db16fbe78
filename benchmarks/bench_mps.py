"""MPS control daemon benchmark (fake nvidia-cuda-mps-control, real processes).

    python benchmarks/bench_mps.py [--rounds 20] [--gpus 2]

For one MPS-shared resource run by nvplugin.mps.MpsDaemons over a NodeState, as the agent runs
it: how long a daemon takes to start with its limits set (`-d`, the PID file, one control
command per GPU plus one; mostly Python start-ups of the fake client), how long from SIGKILL of
the daemon to its GPUs marked Unhealthy in NodeState (the pidfd wakes the loop: no polling), how
long until it runs again (the restart backoff, 0.5 s +-25 %, plus a start), and how long a stop
takes (`quit` and the daemon's exit).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import percentile

from nvplugin.core.config import Config, ReplicatedResource, ReplicatedResources, Sharing
from nvplugin.core.resources import GPU_RESOURCE, build_resources
from nvplugin.mps import MpsDaemons, fake_control_command
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.fake import FakeLayout, FakeNvml
from nvplugin.state import NodeState


async def wait_until(state: NodeState, condition: Callable[[], bool]) -> None:
    seen = state.version
    while not condition():
        seen = await state.wait_changed(seen)


async def measure(rounds: int, gpus: int) -> dict[str, list[float]]:
    root = Path(tempfile.mkdtemp(prefix="nvp-bmps-", dir="/tmp"))
    sharing = Sharing(mps=ReplicatedResources(resources=(ReplicatedResource(GPU_RESOURCE, 4),)))
    config = Config(mps_root=str(root), sharing=sharing)
    fake = FakeNvml(FakeLayout.of(gpus))
    fake.init()
    inventory = discover(fake)
    state = NodeState(inventory, build_resources(inventory, config))
    pid_file = root / GPU_RESOURCE / "pipe" / "nvidia-cuda-mps-control.pid"
    started_file = root / GPU_RESOURCE / ".started"
    figures: dict[str, list[float]] = {
        "start": [],
        "kill to unhealthy": [],
        "kill to running": [],
        "stop": [],
    }
    try:
        for _ in range(rounds):
            daemons = MpsDaemons(
                state, lambda: config, fake_control_command, container_root=str(root / "absent")
            )
            async with anyio.create_task_group() as tg:
                began = time.perf_counter()
                tg.start_soon(daemons.run)
                while not started_file.exists():  # noqa: ASYNC110 - the file is the signal
                    await anyio.sleep(0.001)
                figures["start"].append(time.perf_counter() - began)
                killed = time.perf_counter()
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
                await wait_until(state, lambda: len(state.unhealthy) == gpus)
                figures["kill to unhealthy"].append(time.perf_counter() - killed)
                await wait_until(state, lambda: not state.unhealthy)
                figures["kill to running"].append(time.perf_counter() - killed)
                stopping = time.perf_counter()
                tg.cancel_scope.cancel()
            figures["stop"].append(time.perf_counter() - stopping)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--gpus", type=int, default=2)
    args = parser.parse_args()
    logging.getLogger("nvplugin").setLevel(logging.CRITICAL)  # each kill logs an error, on purpose
    figures = anyio.run(measure, args.rounds, args.gpus)
    print(f"MPS daemon, fake control binary, {args.gpus} GPUs x 4 replicas, {args.rounds} rounds (ms)")
    print(f"{'':20} {'median':>8} {'p90':>8} {'max':>8}")
    for name, samples in figures.items():
        ms = [s * 1000 for s in samples]
        print(f"{name:20} {statistics.median(ms):8.1f} {percentile(ms, 90):8.1f} {max(ms):8.1f}")


if __name__ == "__main__":
    main()
