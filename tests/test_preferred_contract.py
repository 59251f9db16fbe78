"""GetPreferredAllocation's promises, for every shipped fake layout, MIG strategy and
time-slicing, on every path the servicer takes (PreferenceRequest's docstring states them):

- only IDs from `available` that the plugin advertises, each once;
- the must-include ones among them first (at most `size` of them);
- exactly `size` IDs when `available` holds that many known ones, never more;
- never an error, whatever the kubelet (or anyone) sends.
"""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvplugin.core.allocation import preferred_in_order, preferred_shared_allocation
from nvplugin.core.config import Config, ReplicatedResource, Sharing, TimeSlicing
from nvplugin.core.placement import PACKED, preferred_allocation, preferred_devices
from nvplugin.core.resources import MigConfigurationError, Resource, build_resources
from nvplugin.core.topology import Topology
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.fake import FakeNvml, load_layout
from nvplugin.nvml.layouts import LAYOUTS, layout_path

MIG_STRATEGIES = ("none", "single", "mixed")


@cache
def node_resources(
    layout: str, mig_strategy: str, replicas: int
) -> tuple[Topology | None, tuple[Resource, ...]]:
    nvml = FakeNvml(load_layout(layout_path(layout)))
    nvml.init()
    inventory = discover(nvml)
    config = Config().with_changes(mig_strategy=mig_strategy)
    try:
        resources = build_resources(inventory, config)
    except MigConfigurationError:
        return inventory.topology, ()
    if replicas > 1:
        shared = Sharing(
            TimeSlicing(resources=tuple(ReplicatedResource(r.name, replicas) for r in resources))
        )
        resources = build_resources(inventory, config.with_changes(sharing=shared))
    return inventory.topology, resources


def _distinct_nodes() -> list[tuple[str, str, int]]:
    """Every (layout, MIG strategy, replicas) that advertises something new."""
    nodes, seen = [], set()
    for layout in LAYOUTS:
        for strategy in MIG_STRATEGIES:
            for replicas in (1, 3):
                resources = node_resources(layout, strategy, replicas)[1]
                key = (layout, tuple((r.name, r.devices) for r in resources))
                if resources and key not in seen:
                    seen.add(key)
                    nodes.append((layout, strategy, replicas))
    return nodes


NODES = _distinct_nodes()

HUGE_ID = "GPU-" + "f" * 100_000


@st.composite
def requests(draw: st.DrawFn, resource: Resource) -> tuple[list[str], list[str], int, dict[str, str]]:
    ids = [d.id for d in resource.devices]
    junk = st.sampled_from(["", "GPU-unknown", "GPU-unknown::0", HUGE_ID, ids[0] + "::99", ids[0].upper()])
    offered = draw(st.lists(st.sampled_from(ids), unique=True, max_size=len(ids)))
    available = draw(st.permutations([*offered, *draw(st.lists(junk, max_size=3))]))
    available += draw(st.lists(st.sampled_from(available), max_size=2)) if available else []  # duplicates
    # Must-include: from what is offered (as the kubelet sends), from outside it, or junk.
    must_ids = st.sampled_from(offered) | st.sampled_from(ids) if offered else st.sampled_from(ids)
    must = draw(st.lists(must_ids | junk, max_size=4))
    size = draw(st.integers(-2, len(ids) + 2) | st.sampled_from([2**31 - 1, -(2**31)]))
    gpus = sorted({d.gpu_uuid for d in resource.devices})
    unhealthy = {g: "XID 79" for g in draw(st.lists(st.sampled_from(gpus), unique=True, max_size=2))}
    return available, must, size, unhealthy


def assert_keeps_the_promises(
    resource: Resource, available: list[str], must: list[str], size: int, answer: list[str]
) -> None:
    known = [i for i in dict.fromkeys(available) if resource.device(i) is not None]
    fixed = [i for i in dict.fromkeys(must) if i in known][: max(size, 0)]
    assert len(answer) == len(set(answer)), f"duplicates in {answer}"
    assert set(answer) <= set(known), "only known IDs from available"
    assert answer[: len(fixed)] == fixed, "the available must-include IDs first"
    assert len(answer) == max(0, min(size, len(known))), "exactly size when possible, never more"


@pytest.mark.parametrize(("layout", "mig_strategy", "replicas"), NODES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_path_keeps_the_promises(
    layout: str, mig_strategy: str, replicas: int, data: st.DataObject
) -> None:
    topology, resources = node_resources(layout, mig_strategy, replicas)
    resource = data.draw(st.sampled_from(resources))
    available, must, size, unhealthy = data.draw(requests(resource))
    policy = data.draw(st.sampled_from(["distributed", PACKED]))
    answers = {
        # What the servicer calls: the shared path for replicas, else the topology-aware one.
        "servicer": preferred_devices(
            topology, resource, available, must, size, unhealthy=unhealthy, policy=policy
        ),
        "topology-aware": preferred_allocation(
            topology, resource, available, must, size, unhealthy=unhealthy, policy=policy
        ),
        "without topology": preferred_allocation(
            None, resource, available, must, size, unhealthy=unhealthy, policy=policy
        ),
        "shared (NVIDIA's greedy)": preferred_shared_allocation(resource, available, must, size, policy),
        "in order (the fallback)": preferred_in_order(resource, available, must, size),
    }
    for path, answer in answers.items():
        try:
            assert_keeps_the_promises(resource, available, must, size, answer)
        except AssertionError as exc:
            raise AssertionError(f"{path}: {exc}") from None


def test_the_nodes_cover_every_layout_with_and_without_time_slicing() -> None:
    assert {(layout, replicas) for layout, _, replicas in NODES} == {(n, r) for n in LAYOUTS for r in (1, 3)}
    assert ("mig-mixed-2gpu", "mixed", 3) in NODES and ("mig-single-8gpu", "single", 3) in NODES
