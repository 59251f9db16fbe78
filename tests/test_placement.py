"""The topology-aware placement policy: exactness against exhaustive search, and its promises."""

from __future__ import annotations

from functools import cache
from itertools import combinations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvplugin.core.allocation import preferred_in_order
from nvplugin.core.config import Config
from nvplugin.core.placement import PACKED, _branch_and_bound, _max_weight_subset, preferred_allocation
from nvplugin.core.resources import AdvertisedDevice, Resource, build_resources
from nvplugin.core.topology import PcieLevel, Topology
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.fake import FakeNvml, load_layout
from nvplugin.nvml.layouts import TOPOLOGY_LAYOUTS, layout_path


@cache
def node(name: str) -> tuple[Topology, Resource]:
    nvml = FakeNvml(load_layout(layout_path(name)))
    nvml.init()
    inventory = discover(nvml)
    assert inventory.topology is not None
    return inventory.topology, build_resources(inventory, Config())[0]


def gpu_ids(name: str, *indexes: int) -> list[str]:
    topology, _ = node(name)
    return [topology.gpus[i] for i in indexes]


def indexes(name: str, ids: list[str]) -> list[int]:
    topology, _ = node(name)
    return sorted(i for i in map(topology.index, ids) if i is not None)


def objective(topology: Topology, fixed: list[str], chosen: list[str], rest: list[str]) -> tuple[int, int]:
    """What the policy maximises: the answer's link score, then the leftover GPUs' score."""
    return topology.set_score([*fixed, *chosen]), topology.set_score(rest)


def exhaustive_best(
    topology: Topology, fixed: list[str], candidates: list[str], need: int
) -> tuple[int, int]:
    need = min(need, len(candidates))
    return max(
        objective(topology, fixed, list(chosen), [c for c in candidates if c not in chosen])
        for chosen in combinations(candidates, need)
    )


# --- exactness and validity on every shipped topology


def request(name: str) -> st.SearchStrategy[tuple[list[str], list[str], int, dict[str, str]]]:
    topology, _ = node(name)
    ids = list(topology.gpus)
    n = len(ids)
    return st.tuples(
        st.permutations(ids).flatmap(lambda p: st.integers(0, n).map(lambda k: p[:k])),
        st.lists(st.sampled_from(ids), max_size=3),
        st.integers(0, n + 1),
        st.dictionaries(st.sampled_from(ids), st.just("XID 79"), max_size=2),
    )


def check(name: str, available: list[str], must: list[str], size: int, unhealthy: dict[str, str]) -> None:
    topology, resource = node(name)
    # The kubelet may send junk too: unknown IDs and duplicates.
    noisy_available = [*available, "GPU-unknown", *available[:1]]
    answer = preferred_allocation(topology, resource, noisy_available, must, size, unhealthy=unhealthy)
    offered = list(dict.fromkeys(available))
    fixed = [m for m in dict.fromkeys(must) if m in offered][: max(size, 0)]
    assert len(answer) == len(set(answer)), "duplicates"
    assert answer[: len(fixed)] == fixed, "available must-include devices first"
    picks = answer[len(fixed) :]
    candidates = [a for a in offered if a not in fixed]
    healthy = [c for c in candidates if c not in unhealthy]
    need = max(0, min(size - len(fixed), len(candidates)))
    assert set(picks) <= set(candidates), "only available, known devices"
    assert len(picks) == need
    assert set(picks) <= set(healthy) or set(healthy) <= set(picks), "unhealthy ones only to fill up"
    if 0 < need < len(healthy):
        rest = [c for c in healthy if c not in picks]
        assert objective(topology, fixed, picks, rest) == exhaustive_best(topology, fixed, healthy, need)


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", [n for n in TOPOLOGY_LAYOUTS if len(node(n)[0]) <= 8])
@FAST
@given(data=st.data())
def test_small_nodes_answer_the_exhaustive_optimum(name: str, data: st.DataObject) -> None:
    check(name, *data.draw(request(name)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_sixteen_gpu_node_answers_the_exhaustive_optimum(data: st.DataObject) -> None:
    name = "dgx2-v100-nvswitch"
    topology, _ = node(name)
    _, must, _, unhealthy = data.draw(request(name))
    # Most of the node available: the largest search spaces.
    available = data.draw(st.permutations(topology.gpus).map(list))[: data.draw(st.integers(10, 16))]
    # Sizes near half the node are where the search space is largest.
    size = data.draw(st.integers(max(0, len(available) // 2 - 2), len(available) // 2 + 2))
    check(name, available, must, size, unhealthy)


@pytest.mark.parametrize("name", TOPOLOGY_LAYOUTS)
def test_every_size_with_everything_available(name: str) -> None:
    topology, _ = node(name)
    for size in range(len(topology) + 2):
        if len(topology) > 8 and size in (5, 7, 9, 11):
            continue  # exhaustive search is slow there; the sampled test above covers them
        check(name, list(topology.gpus), [], size, {})


@FAST
@given(
    n=st.integers(1, 11),
    k=st.integers(0, 11),
    seed=st.randoms(use_true_random=False),
)
def test_search_is_exact_on_arbitrary_weights(n: int, k: int, seed: object) -> None:
    # Random small-integer weights with many ties, negative node weights included: the
    # branch-and-bound and the complement trick must match plain enumeration.
    rng = seed
    k = min(k, n)
    q = [[0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            q[i][j] = q[j][i] = rng.choice([0, 0, 1, 3, 5])  # type: ignore[attr-defined]
    w = [rng.randint(-6, 6) for _ in range(n)]  # type: ignore[attr-defined]

    def value(subset: tuple[int, ...]) -> int:
        return sum(w[v] for v in subset) + sum(q[a][b] for a, b in combinations(subset, 2))

    best = max(value(s) for s in combinations(range(n), k))
    picked = _max_weight_subset(q, w, k)
    assert len(picked) == len(set(picked)) == k
    assert value(tuple(picked)) == best


# --- what the policy prefers, on the published topologies


def test_dgx1_pairs_and_quads() -> None:
    name = "dgx1-v100-cube-mesh"
    topology, resource = node(name)
    ids = list(topology.gpus)
    pair = indexes(name, preferred_allocation(topology, resource, ids, [], 2))
    assert topology.nvlinks[pair[0]][pair[1]] == 2  # a double-NVLink pair
    quad = indexes(name, preferred_allocation(topology, resource, ids, [], 4))
    assert quad in ([0, 1, 2, 3], [4, 5, 6, 7])  # a fully linked quad
    # GPU 0 must be in: its NV2 partners are 3 and 4; 3 also shares its NUMA node and quad.
    assert indexes(name, preferred_allocation(topology, resource, ids, gpu_ids(name, 0), 2)) == [0, 3]


def test_no_needless_fragmentation() -> None:
    name = "dgx1-v100-cube-mesh"
    topology, resource = node(name)
    # With GPUs 0-3 taken, a one-GPU request must not break the NV2 pairs 4-7 and 5-6 when a
    # GPU exists whose loss costs the rest less.
    available = gpu_ids(name, 4, 5, 6, 7)
    one = indexes(name, preferred_allocation(topology, resource, available, [], 1))
    rest = [i for i in (4, 5, 6, 7) if i not in one]
    best_rest = max(topology.set_score(gpu_ids(name, *r)) for r in combinations((4, 5, 6, 7), 3))
    assert topology.set_score(gpu_ids(name, *rest)) == best_rest


def test_pcie_server_prefers_the_same_switch_then_socket() -> None:
    name = "pcie-2socket-8gpu"
    topology, resource = node(name)
    ids = list(topology.gpus)
    two = indexes(name, preferred_allocation(topology, resource, ids, [], 2))
    assert topology.pcie[two[0]][two[1]] is PcieLevel.SINGLE
    assert indexes(name, preferred_allocation(topology, resource, ids, [], 4)) == [0, 1, 2, 3]
    # A lone GPU comes from where it splits nothing: 6 or 7, not a PIX pair.
    assert indexes(name, preferred_allocation(topology, resource, ids, [], 1))[0] in (6, 7)


def test_nvswitch_board_keeps_requests_on_one_socket() -> None:
    name = "hgx-h100-nvswitch"
    topology, resource = node(name)
    four = indexes(name, preferred_allocation(topology, resource, list(topology.gpus), [], 4))
    assert four in ([0, 1, 2, 3], [4, 5, 6, 7])


# --- never failing


def test_short_supply_and_junk() -> None:
    name = "dgx1-v100-cube-mesh"
    topology, resource = node(name)
    ids = list(topology.gpus)
    sick = {ids[2]: "XID 48"}
    junk = ["nope", ids[1], ids[1], ids[2], ids[3]]
    # Short supply: every healthy one; an unhealthy one only to make up the count.
    assert preferred_allocation(topology, resource, junk, [ids[1]], 2, unhealthy=sick) == [ids[1], ids[3]]
    assert preferred_allocation(topology, resource, junk, [], 8, unhealthy=sick) == [ids[1], ids[3], ids[2]]
    assert preferred_allocation(topology, resource, [], [], 3) == []
    assert preferred_allocation(topology, resource, ids, [ids[5], ids[5]], 1) == [ids[5]]
    assert preferred_allocation(topology, resource, ids, [], 0) == []
    assert preferred_allocation(topology, resource, ids, [], -1) == []
    # Must-include IDs outside `available`, or unknown, are ignored; never more than asked.
    outside = preferred_allocation(topology, resource, ids[1:], ["ghost", ids[0]], 2)
    assert len(outside) == 2 and set(outside) <= set(ids[1:])
    assert preferred_allocation(topology, resource, ids, ids[:4], 2) == ids[:2]


def test_a_gpu_missing_from_the_topology_still_serves() -> None:
    name = "dgx1-v100-cube-mesh"
    topology, resource = node(name)
    # The topology was read before GPU 7 appeared (or GPU 7 was lost and came back): it
    # scores nothing but can still be handed out.
    partial = Topology(
        gpus=topology.gpus[:7],
        nvlinks=tuple(row[:7] for row in topology.nvlinks[:7]),
        pcie=tuple(row[:7] for row in topology.pcie[:7]),
        numa_nodes=topology.numa_nodes[:7],
    )
    ids = list(topology.gpus)
    assert preferred_allocation(partial, resource, ids[6:], [], 2) == ids[6:]
    assert len(preferred_allocation(partial, resource, ids, [ids[7]], 3)) == 3


def test_without_topology_it_matches_the_simple_policy() -> None:
    _, resource = node("hgx-h100-nvswitch")
    ids = [d.id for d in resource.devices]
    for size in range(10):
        assert preferred_allocation(None, resource, ids[::-1], ids[:1], size) == (
            preferred_in_order(resource, ids[::-1], ids[:1], size)
        )


# --- shared devices: replicas and MIG


def shared_resource(topology: Topology, replicas: int, gpus: list[int]) -> Resource:
    return Resource(
        "nvidia.com/gpu",
        tuple(
            AdvertisedDevice(
                id=f"{topology.gpus[g]}::{r}",
                uuid=topology.gpus[g],
                index=str(g),
                gpu_uuid=topology.gpus[g],
                numa_node=topology.numa_nodes[g],
                device_nodes=(f"/dev/nvidia{g}",),
                replica=r,
            )
            for g in gpus
            for r in range(replicas)
        ),
    )


def gpus_of(resource: Resource, ids: list[str]) -> list[str]:
    return [d.gpu_uuid for d in map(resource.device, ids) if d is not None]


def test_distributed_spreads_over_well_linked_gpus() -> None:
    topology, _ = node("dgx1-v100-cube-mesh")
    resource = shared_resource(topology, 4, list(range(8)))
    ids = [d.id for d in resource.devices]
    answer = preferred_allocation(topology, resource, ids, [], 2)
    a, b = gpus_of(resource, answer)
    assert a != b and topology.links(a, b) == 2  # two GPUs, joined by two NVLinks
    # Load balancing: GPUs with replicas in use by others come last.
    busy = [i for i in ids if not i.startswith(topology.gpus[0])]
    busy = [i for i in busy if not i.startswith(topology.gpus[3]) or i.endswith("::0")]
    answer = preferred_allocation(topology, resource, busy, [], 1)
    assert gpus_of(resource, answer)[0] not in (topology.gpus[0], topology.gpus[3])


def test_packed_keeps_a_request_on_few_gpus() -> None:
    topology, _ = node("hgx-h100-nvswitch")
    resource = shared_resource(topology, 4, list(range(8)))
    ids = [d.id for d in resource.devices]
    answer = preferred_allocation(topology, resource, ids, [], 4, policy=PACKED)
    assert len(set(gpus_of(resource, answer))) == 1
    # The fullest GPU that fits takes it: GPU 5 has only 2 replicas left.
    partly_used = [i for i in ids if not (i.startswith(topology.gpus[5]) and i[-1] in "01")]
    answer = preferred_allocation(topology, resource, partly_used, [], 2, policy=PACKED)
    assert set(gpus_of(resource, answer)) == {topology.gpus[5]}
    # More than any GPU holds: as few GPUs as possible, staying with the must-include GPU.
    must = [f"{topology.gpus[2]}::0"]
    answer = preferred_allocation(topology, resource, ids, must, 6, policy=PACKED)
    assert len(answer) == 6 and len(set(gpus_of(resource, answer))) == 2
    assert gpus_of(resource, answer)[:4] == [topology.gpus[2]] * 4


def test_shared_requests_never_fail() -> None:
    topology, _ = node("dgx1-v100-cube-mesh")
    resource = shared_resource(topology, 2, [0, 1])
    ids = [d.id for d in resource.devices]
    for policy in ("distributed", PACKED, "unknown-policy"):
        for topo in (topology, None):
            sick = {topology.gpus[1]: "lost"}
            answer = preferred_allocation(
                topo, resource, [*ids, "junk"], [], 3, unhealthy=sick, policy=policy
            )
            # GPU 0's two replicas, then one of the lost GPU's to make up the count.
            assert answer[:2] == ids[:2] and answer[2] in ids[2:]


def test_mig_devices_group_by_parent_gpu() -> None:
    topology, _ = node("dgx1-v100-cube-mesh")
    devices = tuple(
        AdvertisedDevice(
            id=f"MIG-{g}-{m}",
            uuid=f"MIG-{g}-{m}",
            index=f"{g}:{m}",
            gpu_uuid=topology.gpus[g],
            numa_node=None,
            device_nodes=(),
        )
        for g in (0, 3, 5)
        for m in range(3)
    )
    resource = Resource("nvidia.com/mig-1g.10gb", devices)
    ids = [d.id for d in devices]
    spread = preferred_allocation(topology, resource, ids, [], 2)
    assert {i.split("-")[1] for i in spread} == {"0", "3"}  # NV2-linked parents
    packed = preferred_allocation(topology, resource, ids, [], 3, policy=PACKED)
    assert len({i.split("-")[1] for i in packed}) == 1


def test_search_budget_still_gives_a_full_answer() -> None:
    n = 12
    q = [[0 if i == j else (i * 7 + j * 7) % 5 for j in range(n)] for i in range(n)]
    for budget in (0, 1, 10):
        picked = _branch_and_bound(q, [0] * n, 6, budget=budget)
        assert len(picked) == len(set(picked)) == 6
