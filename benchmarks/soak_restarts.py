"""1,000 kubelet restarts in a row: the agent must not grow (file descriptors, tasks, RSS).

    python benchmarks/soak_restarts.py [--restarts 1000] [--gpus 8]

The agent runs in this process (so its asyncio tasks can be counted) against the kubelet
simulator; the simulator's own resources are released on each restart. Prints the counts after
a warm-up and at the end, and exits 1 if any grew beyond a small tolerance.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nvplugin.agent import Agent  # noqa: E402
from nvplugin.core.config import Config  # noqa: E402
from nvplugin.nvml.fake import FakeLayout, FakeNvml  # noqa: E402
from nvplugin.simulate.kubelet import KubeletSimulator  # noqa: E402

RESOURCE = "nvidia.com/gpu"


def snapshot() -> dict[str, float]:
    gc.collect()
    rss_kib = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "tasks": len(asyncio.all_tasks()),
        "rss_mib": rss_kib / 1024,
    }


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="nvps-", dir="/tmp") as tmp:
        directory = Path(tmp)
        config = Config(kubelet_socket=str(directory / "kubelet.sock"))
        agent = Agent(config, FakeNvml(FakeLayout.of(args.gpus)), handle_signals=False)
        async with KubeletSimulator(directory) as kubelet, anyio.create_task_group() as tg:
            tg.start_soon(agent.run)
            await kubelet.wait_registered(RESOURCE, timeout=10)
            count = 1
            warmup = min(50, args.restarts // 10)
            before: dict[str, float] = {}
            started = time.monotonic()
            for i in range(args.restarts):
                if i == warmup:
                    await anyio.sleep(0.2)
                    before = snapshot()
                await kubelet.restart()
                count += 1
                await kubelet.wait_registered(RESOURCE, count=count, timeout=10)
            elapsed = time.monotonic() - started
            await anyio.sleep(0.5)  # let the last generation's old tasks finish
            after = snapshot()
            tg.cancel_scope.cancel()
    print(
        f"# soak_restarts: {args.restarts} kubelet restarts in {elapsed:.1f} s, agent generation {agent.generation}"
    )
    print(f"after {warmup} restarts (warm-up): {before}")
    print(f"after {args.restarts} restarts:      {after}")
    grew = {
        "fds": after["fds"] - before["fds"] > 2,
        "tasks": after["tasks"] - before["tasks"] > 2,
        "rss_mib": after["rss_mib"] - before["rss_mib"] > 5,
    }
    print(
        "growth:",
        {k: round(after[k] - before[k], 2) for k in before},
        "-> FAIL" if any(grew.values()) else "-> ok",
    )
    return 1 if any(grew.values()) else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    sys.exit(anyio.run(main, parser.parse_args()))
