"""Label reconcilers at scale against the real test API server, on loopback, in one loop.

Starts N simulated nodes' reconcilers (default 1,000) against nvplugin.testing.apiserver and
prints:
  - start-up: time until every node carries its labels, API requests per node by verb;
  - steady state: writes per node over a window in which every node gets kubelet-style
    heartbeat events and some foreign label edits (target 0), watches per node (target 1);
  - repair: time from a tampered label to its repair, one node at a time and all at once
    (target <= 1 s);
  - memory: RSS of a separate process before and after importing kubernetes_asyncio and
    while running one reconciler.
Every loop is bounded; the script stops by itself (exit 1 when a target is missed).

    python benchmarks/bench_labels.py [--nodes 1000] [--steady 10] [--repairs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nvplugin.core.config import Config  # noqa: E402
from nvplugin.core.inventory import Gpu, Inventory  # noqa: E402
from nvplugin.core.labels import NodeFacts, node_labels  # noqa: E402
from nvplugin.core.resources import build_resources  # noqa: E402
from nvplugin.testing.apiserver import FakeApiServer  # noqa: E402


def desired_labels() -> dict[str, str]:
    gpus = tuple(
        Gpu(
            i, f"GPU-{i:08d}-0000-0000-0000-000000000000", i, "NVIDIA H100 80GB HBM3", 81559 << 20, (9, 0), ""
        )
        for i in range(8)
    )
    inv = Inventory(gpus=gpus, driver_version="580.159.04", cuda_driver_version=13000)
    facts = NodeFacts(machine="PowerEdge XE9680", mig_capable=True, pci_classes=(0x030200,))
    return node_labels(inv, build_resources(inv, Config()), Config(), facts)


async def wait_until(check, within: float, step: float = 0.005) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


def verb_counts(api: FakeApiServer, nodes: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    wanted = set(nodes)
    for (node, verb), n in api.requests.items():
        if node in wanted:
            counts[verb] += n
    return counts


async def scale(args: argparse.Namespace) -> dict[str, object]:
    from kubernetes_asyncio import client, config

    from nvplugin.k8s.client import NodeApi
    from nvplugin.k8s.reconciler import NodeLabelReconciler

    results: dict[str, object] = {}
    desired = desired_labels()
    names = [f"node-{i:04d}" for i in range(args.nodes)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-labels-"))
    async with FakeApiServer(bookmark_interval=60.0) as api:
        for name in names:
            api.add_node(name, {"node.kubernetes.io/instance-type": "p5.48xlarge"})
        kubeconfig = api.write_kubeconfig(tmp / "kubeconfig")
        # One ApiClient (one aiohttp session) for all simulated nodes: 1,000 TLS contexts and
        # sessions would measure this process, not the API traffic each node causes. Every
        # node still has its own watch connection and its own requests.
        configuration = client.Configuration()
        await config.load_kube_config(
            str(kubeconfig), client_configuration=configuration, persist_config=False
        )
        configuration.connection_pool_maxsize = args.nodes * 2 + 10
        shared = client.ApiClient(configuration)

        async def connect() -> NodeApi:
            return NodeApi(shared, own_client=False)

        reconcilers = [
            NodeLabelReconciler(name, desired, connect=connect, rng=random.Random(i))
            for i, name in enumerate(names)
        ]
        started = time.monotonic()
        tasks = [asyncio.create_task(r.run()) for r in reconcilers]
        ok = await wait_until(lambda: all(r.in_sync for r in reconcilers), args.timeout, 0.05)
        startup = time.monotonic() - started
        ok = ok and await wait_until(lambda: all(api.open_watches(n) == 1 for n in names), args.timeout, 0.05)
        if not ok:
            raise SystemExit(f"start-up did not finish within {args.timeout} s")
        per_verb = verb_counts(api, names)
        results["startup_s"] = round(startup, 2)
        results["startup_requests_per_node"] = {v: per_verb[v] / args.nodes for v in sorted(per_verb)}
        results["startup_requests_per_node_total"] = sum(per_verb.values()) / args.nodes

        # --- steady state: heartbeats on every node and foreign label edits, no writes from us
        before = verb_counts(api, names)
        patches_before = {n: api.requests[(n, "patch")] for n in names}
        watches_before = sum(api.watches_opened[n] for n in names)
        window_end = time.monotonic() + args.steady
        events = 0
        rng = random.Random(7)
        while time.monotonic() < window_end:
            for name in names:
                api.touch(name)
                events += 1
            for name in rng.sample(names, max(1, args.nodes // 20)):
                api.set_labels(name, {"example.com/owner": f"team-{rng.randrange(100)}"})
                events += 1
            await asyncio.sleep(1.0)
        await asyncio.sleep(0.5)  # let the last events be handled
        after = verb_counts(api, names)
        writes = {n: api.requests[(n, "patch")] - patches_before[n] for n in names}
        results["steady_window_s"] = args.steady
        results["steady_watch_events"] = events
        results["steady_writes_total"] = after["patch"] - before["patch"]
        results["steady_writes_max_per_node"] = max(writes.values())
        results["steady_requests_total"] = sum(after.values()) - sum(before.values())
        results["watches_open_per_node"] = sorted({api.open_watches(n) for n in names})
        results["watch_requests_per_node_max"] = max(api.watches_opened[n] for n in names)
        results["steady_new_watches"] = sum(api.watches_opened[n] for n in names) - watches_before

        # --- repair latency: one tampered node at a time
        key = "nvidia.com/gpu.product"
        latencies = []
        for name in random.Random(3).sample(names, min(args.repairs, args.nodes)):
            api.set_labels(name, {key: "tampered"})
            t0 = time.monotonic()
            if not await wait_until(
                lambda n=name: api.nodes[n]["metadata"]["labels"].get(key) == desired[key], 5, 0.001
            ):
                raise SystemExit(f"{name}: tampered label not repaired within 5 s")
            latencies.append(time.monotonic() - t0)
        latencies.sort()
        results["repair_single_ms"] = {
            "p50": round(statistics.median(latencies) * 1000, 1),
            "p95": round(latencies[int(len(latencies) * 0.95) - 1] * 1000, 1),
            "max": round(latencies[-1] * 1000, 1),
        }
        # --- every node tampered at once
        patches_before = {n: api.requests[(n, "patch")] for n in names}
        t0 = time.monotonic()
        for name in names:
            api.set_labels(name, {key: "tampered", "nvidia.com/gpu.count": None})
        done = await wait_until(
            lambda: all(api.nodes[n]["metadata"]["labels"].get(key) == desired[key] for n in names), 30, 0.01
        )
        results["repair_all_nodes_s"] = round(time.monotonic() - t0, 2) if done else None
        # how many patches each node needed for the burst: {patches: nodes}
        burst_patches = Counter(api.requests[(n, "patch")] - patches_before[n] for n in names)
        results["repair_all_patches_histogram"] = dict(burst_patches)
        results["errors"] = sum(r.stats.errors for r in reconcilers)

        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await shared.close()
    return results


RSS_CHILD = r"""
import asyncio, json, sys, gc
sys.path.insert(0, sys.argv[2])

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0

out = {}
import nvplugin.core.labels, nvplugin.k8s.reconciler  # the agent's side, no kube client yet
gc.collect(); out["before_import_mib"] = rss()
import kubernetes_asyncio.client, kubernetes_asyncio.config
gc.collect(); out["after_import_mib"] = rss()
from nvplugin.k8s.reconciler import NodeLabelReconciler

async def main():
    rec = NodeLabelReconciler("node-rss", {"nvidia.com/gpu.count": "8"}, kubeconfig=sys.argv[1])
    task = asyncio.create_task(rec.run())
    await asyncio.wait_for(rec.wait_synced(), 20)
    await asyncio.sleep(1.0)
    gc.collect(); out["running_mib"] = rss()
    task.cancel()

asyncio.run(main())
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        out["peak_mib"] = int(line.split()[1]) / 1024
print(json.dumps(out))
"""


async def rss(args: argparse.Namespace) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-labels-rss-"))
    async with FakeApiServer() as api:
        api.add_node("node-rss")
        kubeconfig = api.write_kubeconfig(tmp / "kubeconfig")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", RSS_CHILD, str(kubeconfig), str(ROOT), stdout=subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    data = json.loads(out)
    return {k: round(v, 1) for k, v in data.items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--steady", type=float, default=10.0, help="steady-state window in seconds")
    parser.add_argument("--repairs", type=int, default=50, help="single-node repairs to time")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up on start-up after this long")
    args = parser.parse_args()
    gc.collect()
    results = asyncio.run(scale(args))
    results["rss"] = asyncio.run(rss(args))
    print(json.dumps(results, indent=2))
    repair_max = results["repair_single_ms"]["max"]  # type: ignore[index]
    failures = []
    if results["steady_writes_total"] != 0:
        failures.append("writes in steady state")
    if results["watches_open_per_node"] != [1] or results["watch_requests_per_node_max"] != 1:
        failures.append("not exactly one watch per node")
    if repair_max > 1000:
        failures.append("a repair took longer than 1 s")
    print(
        f"\n{args.nodes} nodes: start-up {results['startup_s']} s, "
        f"{results['startup_requests_per_node_total']:.2f} requests/node at start-up, "
        f"{results['steady_writes_total']} writes in {args.steady:.0f} s steady state "
        f"({results['steady_watch_events']} watch events), watches/node {results['watches_open_per_node']}, "
        f"repair p50 {results['repair_single_ms']['p50']} ms max {repair_max} ms, "  # type: ignore[index]
        f"all-nodes repair {results['repair_all_nodes_s']} s; "
        f"RSS {results['rss']}"
    )
    if failures:
        print("MISSED: " + "; ".join(failures))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
