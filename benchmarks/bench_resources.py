"""Resources at scale: 8 GPUs x 7 MIG devices x 16 time-slicing replicas = 896 devices.

Prints, for the pure core on this machine:
- build time of the resources (MIG strategy single and mixed, replicas applied);
- ListAndWatch message: building v1beta1.ListAndWatchResponse for all 896 devices, and
  serialising it (bytes(msg)), its size, and the hand encoder core.wire giving the same bytes;
- Allocate's pure cost (check_request + container_allocation) p50/p99 for common requests;
- GetPreferredAllocation over replicas (preferred_shared_allocation) p50/p99;
- memory (tracemalloc) of the inventory + resources and of one ListAndWatch message.

Run: python -m benchmarks.bench_resources [--rounds N]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import nvplugin
from nvplugin.api import v1beta1
from nvplugin.core.allocation import check_request, container_allocation, preferred_shared_allocation
from nvplugin.core.config import Config, ReplicatedResource, Sharing, TimeSlicing
from nvplugin.core.resources import Resource, build_resources, device_health
from nvplugin.core.wire import encode_list_and_watch
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.fake import FakeNvml, load_layout

LAYOUT = Path(nvplugin.__file__).parent / "nvml" / "layouts" / "mig-single-8gpu.yaml"
REPLICAS = 16


def timings_us(fn: Callable[[], object], rounds: int) -> list[float]:
    fn()  # warm caches
    gc.collect()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def report(label: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"{label:<58} p50 {p50:9.1f} us   p99 {p99:9.1f} us   (n={len(samples)})")


def list_and_watch(resource: Resource, unhealthy: dict[str, str]) -> v1beta1.ListAndWatchResponse:
    """The message a ListAndWatch stream sends (what the plugin server builds from the state)."""
    return v1beta1.ListAndWatchResponse(
        devices=[
            v1beta1.Device(
                id=d.id,
                health=device_health(d, unhealthy),
                topology=v1beta1.TopologyInfo(nodes=[v1beta1.NumaNode(id=d.numa_node)])
                if d.numa_node is not None
                else None,
            )
            for d in resource.devices
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000, help="samples per fast measurement")
    args = parser.parse_args()
    rounds = args.rounds

    nvml = FakeNvml(load_layout(str(LAYOUT)))
    nvml.init()
    inventory = discover(nvml)
    sharing = Sharing(TimeSlicing(resources=(ReplicatedResource("nvidia.com/gpu", REPLICAS),)))
    single = Config(mig_strategy="single", sharing=sharing)
    mixed_sharing = Sharing(TimeSlicing(resources=(ReplicatedResource("nvidia.com/mig-1g.10gb", REPLICAS),)))
    mixed = Config(mig_strategy="mixed", sharing=mixed_sharing)

    (resource,) = build_resources(inventory, single)
    migs = sum(len(g.mig_devices) for g in inventory.gpus)
    per_gpu = migs // len(inventory.gpus)
    print(f"layout: {len(inventory.gpus)} GPUs x {per_gpu} MIG devices x {REPLICAS} replicas")
    print(f"resource {resource.name}: {len(resource.devices)} devices\n")

    slow = max(50, rounds // 20)
    for label, config in (("single", single), ("mixed", mixed)):
        samples = timings_us(lambda config=config: build_resources(inventory, config), slow)
        report(f"build_resources ({label}, 16 replicas)", samples)

    unhealthy = {inventory.gpus[3].mig_devices[2].uuid: "XID 48"}
    samples = timings_us(lambda: list_and_watch(resource, unhealthy), slow)
    report("ListAndWatchResponse build (896 devices)", samples)
    message = list_and_watch(resource, unhealthy)
    report("ListAndWatchResponse bytes(msg)", timings_us(lambda: bytes(message), slow))
    report(
        "ListAndWatchResponse build + bytes(msg)",
        timings_us(lambda: bytes(list_and_watch(resource, unhealthy)), slow),
    )
    report(
        "encode_list_and_watch (core.wire, same bytes)",
        timings_us(lambda: encode_list_and_watch(resource.devices, unhealthy), slow),
    )
    assert encode_list_and_watch(resource.devices, unhealthy) == bytes(message)
    size = len(bytes(message))
    print(f"{'ListAndWatchResponse size':<58} {size} bytes\n")

    one = [resource.devices[100].id]
    eight = [d.id for d in resource.devices[0:128:16]]
    cdi = single.with_changes(
        device_list_strategy=("envvar", "cdi-annotations", "cdi-cri"), pass_device_specs=True
    )
    controls = frozenset({"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"})
    cases: list[tuple[str, list[str], Config]] = [
        ("Allocate pure: 1 replica, envvar", one, single),
        ("Allocate pure: 8 replicas, envvar", eight, single),
        ("Allocate pure: 1 replica, envvar+cdi+device specs", one, cdi),
        ("Allocate pure: 8 replicas, envvar+cdi+device specs", eight, cdi),
    ]
    for label, ids, config in cases:

        def allocate(ids: list[str] = ids, config: Config = config) -> object:
            devices = check_request(resource, ids, unhealthy)
            return container_allocation(devices, config, existing_control_nodes=controls, response_id="bench")

        report(label, timings_us(allocate, rounds))

    available = [d.id for d in resource.devices]
    for size_wanted in (1, 8):
        report(
            f"GetPreferredAllocation pure: {size_wanted} of 896 (distributed)",
            timings_us(lambda n=size_wanted: preferred_shared_allocation(resource, available, [], n), slow),
        )
    print()

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    inv2 = discover(nvml)
    resources2 = build_resources(inv2, single)
    after = tracemalloc.take_snapshot()
    held = sum(s.size_diff for s in after.compare_to(base, "filename"))
    print(f"{'memory: inventory + resources (896 devices)':<58} {held / 1024:.0f} KiB")
    base = tracemalloc.take_snapshot()
    msg2 = list_and_watch(resources2[0], unhealthy)
    after = tracemalloc.take_snapshot()
    held = sum(s.size_diff for s in after.compare_to(base, "filename"))
    print(f"{'memory: one ListAndWatchResponse (896 devices)':<58} {held / 1024:.0f} KiB")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{'memory: tracemalloc peak during the two above':<58} {peak / 1024:.0f} KiB")
    del msg2


if __name__ == "__main__":
    main()
