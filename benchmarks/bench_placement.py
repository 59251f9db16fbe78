"""Topology-aware GetPreferredAllocation benchmarks on the shipped fake topologies.

    python benchmarks/bench_placement.py [--requests 400] [--grpc-calls 300] [--no-grpc]
                                         [--layouts dgx1-v100-cube-mesh,...] [--real]

--real benchmarks the machine's own GPUs through the real NVML instead of the layouts.

Prints, per layout and request size:
- server-side: the policy function as the servicer calls it (nvplugin.core.placement), p50,
  p99 and max in ms over --requests requests per size (half with every GPU available, half
  with a random available subset and a random must-include device), plus the first call;
  wall-clock time, and the CPU time of the calling thread (which leaves out the time the OS
  gave other processes: on a shared 2-core machine, 4 ms scheduler ticks dominate wall p99);
- the NVML calls made per request after discovery (FakeNvml.calls; the target is zero);
- from a grpcio client: the agent as a real process (`nvplugin run --fake-gpus LAYOUT`)
  registered with the kubelet simulator, GetPreferredAllocation with every GPU available,
  p50 and p99 over --grpc-calls calls per size, and the first call of a fresh agent; and
  GetDevicePluginOptions, which does no work, as the floor of the gRPC path on the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from timing import percentile, time_calls  # noqa: E402  (benchmarks/, this script's directory)

from nvplugin.api import v1beta1 as api  # noqa: E402
from nvplugin.core.config import Config  # noqa: E402
from nvplugin.core.placement import preferred_allocation  # noqa: E402
from nvplugin.core.resources import build_resources  # noqa: E402
from nvplugin.nvml.base import NvmlError  # noqa: E402
from nvplugin.nvml.discovery import discover  # noqa: E402
from nvplugin.nvml.fake import FakeNvml, load_layout  # noqa: E402
from nvplugin.nvml.layouts import LAYOUTS, TOPOLOGY_LAYOUTS, layout_path  # noqa: E402
from nvplugin.nvml.topology import read_topology  # noqa: E402
from nvplugin.simulate.kubelet import KubeletSimulator  # noqa: E402

RESOURCE = "nvidia.com/gpu"
DEFAULT_LAYOUTS = TOPOLOGY_LAYOUTS


class CountingNvml:
    """Any Nvml backend, counting every call made through it (the real one has no counter)."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        def counted(*args: object) -> Any:
            self.calls += 1
            return attribute(*args)

        return counted


def open_nvml(name: str) -> CountingNvml:
    if name == "real":
        from nvplugin.nvml.real import RealNvml

        return CountingNvml(RealNvml())
    return CountingNvml(FakeNvml(load_layout(layout_path(name))))


def server_side(name: str, requests: int, rng: random.Random) -> None:
    nvml = open_nvml(name)
    try:
        nvml.init()
    except NvmlError as exc:
        raise SystemExit(f"bench_placement: {name}: NVML cannot start: {exc}") from None
    t0 = time.perf_counter()
    inventory = discover(nvml)
    discovery_ms = (time.perf_counter() - t0) * 1000
    discovery_calls = nvml.calls - 1
    topology = inventory.topology
    assert topology is not None
    t0 = time.perf_counter()
    read_topology(nvml, inventory)
    topology_ms = (time.perf_counter() - t0) * 1000
    resource = build_resources(inventory, Config())[0]
    ids = [d.id for d in resource.devices]
    n = len(ids)
    print(
        f"\n## {name}: {n} GPUs; discovery {discovery_ms:.1f} ms, {discovery_calls} NVML calls "
        f"(the topology alone: {topology_ms:.1f} ms)"
    )
    print(topology.matrix())
    print("size  first ms   p50 ms   p99 ms   max ms   cpu p50  cpu p99  cpu max   NVML calls/request")
    first = True
    for size in range(1, n + 1):
        latencies = []
        cpu = []
        before = nvml.calls
        for r in range(requests):
            if r % 2 == 0:
                available, must = ids, []
            else:
                available = rng.sample(ids, rng.randint(size, n))
                must = rng.sample(available, 1) if size > 1 and rng.random() < 0.5 else []
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            answer = preferred_allocation(topology, resource, available, must, size)
            latencies.append((time.perf_counter_ns() - t0) / 1e6)
            cpu.append((time.thread_time_ns() - c0) / 1e6)
            assert len(answer) == size
            if first:
                first_ms, first = latencies[0], False
        per_request = (nvml.calls - before) / requests
        lead = f"{first_ms:8.3f}" if size == 1 else " " * 8
        print(
            f"{size:4d}  {lead}  {percentile(latencies, 50):7.3f}  {percentile(latencies, 99):7.3f}  "
            f"{max(latencies):7.3f}  {percentile(cpu, 50):7.3f}  {percentile(cpu, 99):7.3f}  {max(cpu):7.3f}   {per_request:g}"
        )
    nvml.shutdown()


def grpcio_preferred_latencies(socket_path: str, ids: list[str], calls: int) -> dict[int, list[float]]:
    import grpc

    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        preferred = channel.unary_unary(
            "/v1beta1.DevicePlugin/GetPreferredAllocation",
            request_serializer=lambda b: b,
            response_deserializer=api.PreferredAllocationResponse().parse,
        )

        def request(size: int) -> bytes:
            return bytes(
                api.PreferredAllocationRequest(
                    container_requests=[
                        api.ContainerPreferredAllocationRequest(
                            available_deviceIDs=ids, must_include_deviceIDs=[], allocation_size=size
                        )
                    ]
                )
            )

        out: dict[int, list[float]] = {}
        t0 = time.perf_counter()
        response = preferred(request(min(2, len(ids))), timeout=5)
        out[0] = [(time.perf_counter() - t0) * 1000]  # the first call of a fresh agent
        assert len(response.container_responses[0].device_i_ds) == min(2, len(ids))
        # The transport's floor on this machine: an RPC that does no work at all.
        options = channel.unary_unary(
            "/v1beta1.DevicePlugin/GetDevicePluginOptions",
            request_serializer=lambda b: b,
            response_deserializer=api.DevicePluginOptions().parse,
        )
        empty = bytes(api.Empty())
        out[-1] = time_calls(options, empty, calls=calls, timeout=5)
        for size in range(1, len(ids) + 1):
            out[size] = time_calls(preferred, request(size), calls=calls, timeout=5)
    return out


def spawn_agent(name: str, kubelet_socket: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "nvplugin", "run",
        "--kubelet-socket", str(kubelet_socket), "--log-level", "warning",
    ]  # fmt: skip
    if name != "real":
        cmd += ["--fake-gpus", layout_path(name)]
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "NVPLUGIN_METRICS_ADDRESS": "off"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def through_grpc(name: str, calls: int) -> None:
    with tempfile.TemporaryDirectory(prefix="nvpp-", dir="/tmp") as tmp:
        directory = Path(tmp)
        async with KubeletSimulator(directory) as kubelet:
            proc = spawn_agent(name, directory / "kubelet.sock")
            try:
                plugin = await kubelet.wait_registered(RESOURCE, timeout=30)
                socket_path = str(directory / plugin.endpoint)
                ids = list(plugin.devices)
                out = await anyio.to_thread.run_sync(grpcio_preferred_latencies, socket_path, ids, calls)
            finally:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print(f"\n## {name} through gRPC (grpcio client, agent process): first call {out[0][0]:.3f} ms")
    floor = out[-1]
    print(
        f"GetDevicePluginOptions (no work, the transport floor): p50 {percentile(floor, 50):.3f} ms, p99 {percentile(floor, 99):.3f} ms"
    )
    print("size   p50 ms   p99 ms   max ms")
    for size in range(1, len(ids) + 1):
        lat = out[size]
        print(f"{size:4d}  {percentile(lat, 50):7.3f}  {percentile(lat, 99):7.3f}  {max(lat):7.3f}")


async def main(args: argparse.Namespace) -> None:
    machine = f"{platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()})"
    print(f"# bench_placement on {machine}, {time.strftime('%Y-%m-%d %H:%M')}")
    rng = random.Random(4)
    if args.real:
        args.layouts = ["real"]
    for name in args.layouts:
        server_side(name, args.requests, rng)
    if not args.no_grpc:
        for name in args.layouts:
            await through_grpc(name, args.grpc_calls)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="server-side requests per size")
    parser.add_argument("--grpc-calls", type=int, default=300, help="gRPC calls per size")
    parser.add_argument("--no-grpc", action="store_true", help="server-side figures only")
    parser.add_argument("--real", action="store_true", help="the machine's GPUs through the real NVML")
    parser.add_argument(
        "--layouts",
        type=lambda text: [n for n in text.split(",") if n],
        default=list(DEFAULT_LAYOUTS),
        help=f"comma list among {', '.join(LAYOUTS)}",
    )
    anyio.run(main, parser.parse_args())
