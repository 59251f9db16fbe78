"""Topology-aware GetPreferredAllocation end to end: agent on a described layout, kubelet simulator."""

from __future__ import annotations

import itertools

import pytest

from nvplugin.core.config import Config
from nvplugin.core.resources import GPU_RESOURCE
from nvplugin.nvml.fake import FakeNvml, load_layout
from nvplugin.nvml.layouts import layout_path
from nvplugin.simulate.kubelet import KubeletSimulator
from tests.conftest import eventually, running_agent

pytestmark = pytest.mark.anyio


def fully_linked(nvlinks: dict[tuple[str, str], int], ids: list[str]) -> bool:
    return all(nvlinks.get((a, b), 0) > 0 for a, b in itertools.combinations(ids, 2))


@pytest.mark.parametrize("name", ["dgx1-v100-cube-mesh", "hgx-h100-nvswitch"])
async def test_requests_land_on_nvlinked_gpus(name: str, kubelet: KubeletSimulator, config: Config) -> None:
    nvml = FakeNvml(load_layout(layout_path(name)))
    async with running_agent(config, nvml) as agent:
        plugin = await kubelet.wait_registered(GPU_RESOURCE)
        topology = agent.state.inventory.topology
        assert topology is not None
        links = {(a, b): topology.links(a, b) for a in topology.gpus for b in topology.gpus}
        ids = list(plugin.devices)
        # The health watcher registers its events once, right after registration: not ours.
        await eventually(lambda: agent.health is not None and agent.health.ready.is_set())
        calls = nvml.calls
        pair = await kubelet.preferred(GPU_RESOURCE, ids, [], 2)
        assert topology.links(*pair) == max(links.values())  # the best-linked pair
        quad = await kubelet.preferred(GPU_RESOURCE, ids, [], 4)
        assert fully_linked(links, quad)
        # After one quad is taken, the next 4-GPU request gets the other fully linked quad.
        rest = [i for i in ids if i not in quad]
        assert fully_linked(links, await kubelet.preferred(GPU_RESOURCE, rest, [], 4))
        # An unhealthy GPU is never offered, and the answer still fills the request.
        agent.state.mark_unhealthy(pair[0], "XID 79")
        answer = await kubelet.preferred(GPU_RESOURCE, ids, [], 2)
        assert pair[0] not in answer and len(answer) == 2
        assert nvml.calls == calls, "GetPreferredAllocation must not call NVML"
