"""preferred_shared_allocation: NVIDIA's distributed and packed policies over replicas."""

from __future__ import annotations

from nvplugin.core.allocation import preferred_shared_allocation
from nvplugin.core.resources import GPU_RESOURCE, build_resources
from tests.unit.mig_layouts import config, inventory, sharing


def gpu_resource(replicas: int = 4):
    inv = inventory("h100-8gpu")
    (gpu,) = build_resources(inv, config(sharing=sharing((GPU_RESOURCE, replicas))))
    return inv, gpu


def gpus_of(resource, ids):
    return [resource.device(i).index for i in ids]


def test_distributed_spreads_over_gpus() -> None:
    _, gpu = gpu_resource()
    available = [d.id for d in gpu.devices]
    chosen = preferred_shared_allocation(gpu, available, [], 4, "distributed")
    assert gpus_of(gpu, chosen) == ["0", "1", "2", "3"]


def test_distributed_prefers_gpus_with_fewer_replicas_taken() -> None:
    _, gpu = gpu_resource()
    # GPU 0 has 3 of 4 replicas taken by others, GPU 1 has 1 taken, the rest are idle.
    taken = {gpu.devices[i].id for i in (0, 1, 2, 4)}
    available = [d.id for d in gpu.devices if d.id not in taken]
    chosen = preferred_shared_allocation(gpu, available, [], 8, "distributed")
    assert gpus_of(gpu, chosen) == ["2", "3", "4", "5", "6", "7", "1", "2"]


def test_packed_fills_the_busiest_gpu_first() -> None:
    _, gpu = gpu_resource()
    taken = {gpu.devices[i].id for i in (4,)}  # one replica of GPU 1 in use
    available = [d.id for d in gpu.devices if d.id not in taken]
    chosen = preferred_shared_allocation(gpu, available, [], 5, "packed")
    assert gpus_of(gpu, chosen) == ["1", "1", "1", "0", "0"]


def test_must_include_comes_first_and_counts_as_picked() -> None:
    _, gpu = gpu_resource()
    available = [d.id for d in gpu.devices]
    must = [gpu.devices[0].id]
    chosen = preferred_shared_allocation(gpu, available, must, 3, "distributed")
    assert chosen[0] == must[0]
    assert gpus_of(gpu, chosen) == ["0", "1", "2"]
    assert len(set(chosen)) == 3


def test_short_supply_and_unknown_ids_never_fail() -> None:
    _, gpu = gpu_resource(2)
    available = [gpu.devices[0].id, "GPU-unknown::0", gpu.devices[0].id]
    assert preferred_shared_allocation(gpu, available, [], 3) == [gpu.devices[0].id]
    # Must-include IDs unknown or outside `available` are ignored; never more than asked.
    assert preferred_shared_allocation(gpu, available, ["x", "x", gpu.devices[1].id], 1) == [
        gpu.devices[0].id
    ]
    both = [gpu.devices[0].id, gpu.devices[1].id]
    assert preferred_shared_allocation(gpu, both, both[::-1], 1) == [both[1]]
