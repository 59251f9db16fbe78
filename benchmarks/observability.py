"""What metrics and probes cost the agent: import time, memory, per-call and per-scrape time.

    python benchmarks/observability.py

Each import figure comes from a fresh interpreter that has already imported what the agent
always has (asyncio, anyio, logging, socket, the core), so it shows what observability adds.
Prints its figures; asserts nothing.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import json, sys, time
def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
# What the running agent has imported before metrics start: the loop, logging, sockets.
import asyncio, dataclasses, logging, socket, threading, anyio, anyio.abc
import nvplugin.core.resources
before = rss_kib()
t0 = time.perf_counter()
exec(sys.argv[1])
print(json.dumps({"ms": (time.perf_counter() - t0) * 1000, "rss_kib": rss_kib() - before}))
"""

SERVER = r"""
import json, socket, statistics, sys, time
import anyio
from nvplugin.core.address import ListenAddress
from nvplugin.metrics_server import MetricsServer
from nvplugin.observability import Metrics

def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

def get(port, path):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data

async def main():
    metrics = Metrics()
    for i in range(8):
        metrics.devices(f"nvidia.com/mig-{i}g.10gb", 7, 0)
        metrics.allocation("nvidia.com/gpu", 0.0002, True)
        metrics.xid(79)
    before = rss_kib()
    server = MetricsServer(ListenAddress("127.0.0.1", 0), metrics)
    async with anyio.create_task_group() as tg:
        t0 = time.perf_counter()
        port = await tg.start(server.serve)
        start_ms = (time.perf_counter() - t0) * 1000
        out = {"start_ms": start_ms}
        for path, n in (("/metrics", 300), ("/healthz", 300)):
            times = []
            for _ in range(n):
                t = time.perf_counter()
                body = await anyio.to_thread.run_sync(get, port, path)
                times.append((time.perf_counter() - t) * 1000)
                assert body.startswith(b"HTTP/1.1 200")
            times.sort()
            out[path] = {"median_ms": statistics.median(times), "p99_ms": times[int(len(times) * 0.99) - 1],
                         "bytes": len(body)}
        out["rss_after_start_and_600_requests_kib"] = rss_kib() - before
        tg.cancel_scope.cancel()
    print(json.dumps(out))

anyio.run(main)
"""


def fresh(code: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, code], check=True, capture_output=True, text=True, env=env, cwd=ROOT
    )
    return json.loads(out.stdout)


def median_of(code: str, runs: int = 5) -> tuple[float, float]:
    samples = [fresh(code) for _ in range(runs)]
    return statistics.median(s["ms"] for s in samples), statistics.median(s["rss_kib"] for s in samples)


def per_call_ns(statement: str, setup: str, n: int = 200_000) -> float:
    import timeit

    sys.path.insert(0, str(ROOT))
    return min(timeit.repeat(statement, setup, number=n, repeat=5)) / n * 1e9


def main() -> None:
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print("import cost (fresh interpreter with asyncio/anyio/logging/core loaded; median of 5):")
    for label, code in (
        ("nvplugin.observability (the facade, imported at start-up)", "import nvplugin.observability"),
        ("nvplugin.metrics_server (the endpoint, when it starts)", "import nvplugin.metrics_server"),
        ("prometheus_client (at server start)", "import prometheus_client, prometheus_client.exposition"),
        ("aiohttp.web (the alternative not taken)", "import aiohttp.web"),
    ):
        ms, kib = median_of(code)
        print(f"  {label:<58} {ms:7.1f} ms  {kib / 1024:6.1f} MiB")

    print("facade call cost (best of 5 x 200k calls):")
    setup = "from nvplugin.observability import Metrics, NULL_METRICS; m = Metrics()"
    for label, statement in (
        ("Metrics.allocation(resource, seconds, ok)", "m.allocation('nvidia.com/gpu', 0.0003, True)"),
        ("Metrics.xid(code)", "m.xid(79)"),
        ("NULL_METRICS.allocation(...)", "NULL_METRICS.allocation('nvidia.com/gpu', 0.0003, True)"),
    ):
        print(f"  {label:<58} {per_call_ns(statement, setup):7.0f} ns")

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", SERVER], check=True, capture_output=True, text=True, env=env)
    figures = json.loads(out.stdout)
    print("HTTP endpoint (127.0.0.1, sequential requests, new connection each):")
    print(f"  start (prometheus_client import + bind)                    {figures['start_ms']:7.1f} ms")
    for path in ("/metrics", "/healthz"):
        f = figures[path]
        print(
            f"  GET {path:<10} median {f['median_ms']:.2f} ms  p99 {f['p99_ms']:.2f} ms  ({f['bytes']} bytes)"
        )
    rss = figures["rss_after_start_and_600_requests_kib"] / 1024
    print(f"  RSS added by start + 600 requests                          {rss:7.1f} MiB")


if __name__ == "__main__":
    main()
