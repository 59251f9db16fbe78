"""CDI spec generation: how long it takes, and that Allocate does not pay for it.

    python benchmarks/bench_cdi.py [--runs 50]

Prints the median (and p90) over --runs of:
- build_spec (pure core) for 8 full GPUs (layout h100-8gpu) and for the 896-device node
  (8 GPUs x 7 MIG devices x 16 replicas, benchmarks/config-896.yaml: 56 MIG devices, 112 names);
- write_specs end to end on a fake driver root (host facts lookup + build + atomic write with
  fsync), writing a changed spec each run, and the cost when the spec is already up to date;
- the spec file's size;
- Allocate's pure cost (container_allocation) for one device under envvar, cdi-cri and
  cdi-annotations, before and after the spec is written: write_specs runs on start,
  rediscovery and reload, never on the Allocate path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nvplugin.cdi import write_specs  # noqa: E402
from nvplugin.cdi.hostfacts import find_host_facts  # noqa: E402
from nvplugin.core.allocation import container_allocation  # noqa: E402
from nvplugin.core.cdi import CdiOptions, build_spec  # noqa: E402
from nvplugin.core.config import Config, ReplicatedResource, Sharing, TimeSlicing  # noqa: E402
from nvplugin.core.inventory import Inventory  # noqa: E402
from nvplugin.core.resources import Resource, build_resources  # noqa: E402
from nvplugin.nvml.discovery import discover  # noqa: E402
from nvplugin.nvml.fake import FakeNvml, load_layout  # noqa: E402
from nvplugin.testing.driverroot import make_driver_root  # noqa: E402

SCALE_CONFIG = Config(
    mig_strategy="single",
    sharing=Sharing(TimeSlicing(resources=(ReplicatedResource("nvidia.com/gpu", 16),))),
)


def inventory_of(layout: str) -> Inventory:
    nvml = FakeNvml(load_layout(layout))
    nvml.init()
    return discover(nvml)


def timed_ms(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm caches
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def report(label: str, samples: list[float], unit: str = "ms") -> None:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    scale = 1000 if unit == "us" else 1
    print(
        f"{label:<62} median {statistics.median(ordered) * scale:9.3f} {unit}   "
        f"p90 {p90 * scale:9.3f} {unit}   (n={len(samples)})"
    )


def allocate_costs(label: str, resources: tuple[Resource, ...], runs: int) -> None:
    device = resources[0].devices[0]
    for lists in (("envvar",), ("cdi-cri",), ("cdi-annotations",)):
        config = Config(device_list_strategy=lists)
        samples = timed_ms(lambda config=config: container_allocation([device], config), runs * 20)
        report(f"  Allocate 1 device, {lists[0]} ({label})", samples, unit="us")


def scenario(name: str, inventory: Inventory, config: Config, base: Path, runs: int) -> None:
    resources = build_resources(inventory, config)
    devices = sum(len(r.devices) for r in resources)
    caps = [n for g in inventory.gpus for m in g.mig_devices for n in m.device_nodes[1:]]
    fake = make_driver_root(
        base / name / "root",
        inventory.driver_version,
        gpu_minors=[g.minor for g in inventory.gpus],
        cap_nodes=caps,
    )
    options = CdiOptions(container_driver_root=str(fake.root), spec_dir=str(base / name / "cdi"))
    facts = find_host_facts(inventory, options)
    spec = build_spec(inventory, resources, options, facts).spec
    assert spec is not None
    print(f"{name}: {len(inventory.gpus)} GPUs, {devices} advertised devices, {len(spec.devices)} CDI names")
    allocate_costs("no spec written yet", resources, runs)
    report(
        "  build_spec (pure, host facts given)",
        timed_ms(lambda: build_spec(inventory, resources, options, facts), runs),
    )
    report(
        "  find_host_facts (driver root lookups)", timed_ms(lambda: find_host_facts(inventory, options), runs)
    )
    # Alternate two inventories so that every run really writes.
    fewer = Inventory(
        gpus=inventory.gpus[:-1], driver_version=inventory.driver_version, cuda_driver_version=0
    )
    both = [(inventory, resources), (fewer, build_resources(fewer, config))]
    turn = iter(range(10**9))

    def write_changed() -> None:
        inv, res = both[next(turn) % 2]
        assert write_specs(inv, res, options).changed

    report("  write_specs, spec changed (lookups + build + fsync'd write)", timed_ms(write_changed, runs))
    write_specs(inventory, resources, options)
    report(
        "  write_specs, spec up to date (nothing written)",
        timed_ms(lambda: write_specs(inventory, resources, options), runs),
    )
    size = os.path.getsize(base / name / "cdi" / spec.file_name)
    print(f"  spec file: {size} bytes, {len(json.dumps(spec.to_json()))} bytes compact")
    allocate_costs("spec written", resources, runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory(prefix="nvp-bench-cdi-") as tmp:
        base = Path(tmp)
        scenario("8 GPUs (h100-8gpu)", inventory_of("h100-8gpu"), Config(), base, args.runs)
        scenario(
            "896 devices (mig-single-8gpu, 16 replicas)",
            inventory_of("mig-single-8gpu"),
            SCALE_CONFIG,
            base,
            args.runs,
        )


if __name__ == "__main__":
    main()
