"""The topology model, the fake layouts' topology section, and reading topology through NVML."""

from __future__ import annotations

import pytest

from nvplugin.core.inventory import Gpu, Inventory
from nvplugin.core.topology import PcieLevel, Topology, TopologyError, score_weights
from nvplugin.nvml.base import (
    NVLINK_REMOTE_GPU,
    NVLINK_REMOTE_SWITCH,
    NVLINK_REMOTE_UNKNOWN,
    NvLinkRemote,
    NvmlError,
    normalize_bus_id,
)
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.fake import FakeLayout, FakeNvml, LayoutError, load_layout, parse_layout
from nvplugin.nvml.layouts import LAYOUTS, TOPOLOGY_LAYOUTS, layout_path
from nvplugin.nvml.topology import read_topology, with_topology


def started(layout: FakeLayout) -> FakeNvml:
    nvml = FakeNvml(layout)
    nvml.init()
    return nvml


def read(name: str) -> Topology:
    nvml = started(load_layout(layout_path(name)))
    topology = discover(nvml).topology
    assert topology is not None
    return topology


def nv_matrix(topology: Topology) -> list[list[int]]:
    return [list(row) for row in topology.nvlinks]


# --- the model


def test_pair_scores_order_nvlink_then_pcie_then_numa() -> None:
    t = Topology.build(
        ["a", "b", "c", "d"],
        nvlinks={("a", "b"): 1},
        pcie={("c", "d"): PcieLevel.SINGLE, ("a", "c"): PcieLevel.NODE},
        numa_nodes={"a": 0, "b": 1, "c": 0, "d": 0},
    )
    # One NVLink across sockets beats the closest PCIe pair; PCIe closeness beats NUMA.
    assert t.pair_score("a", "b") > t.pair_score("c", "d") > t.pair_score("a", "c") > 0
    assert t.pair_score("a", "d") == 1  # same NUMA node, SYSTEM apart
    assert t.pair_score("b", "d") == 0
    assert t.pair_score("a", "a") == 0
    assert t.pair_score("a", "nope") == 0


def test_set_scores_compare_lexicographically() -> None:
    # The weights make one more NVLink outweigh any PCIe gain over every pair, and one PCIe
    # step outweigh every NUMA pair.
    n = 16
    nvlink_weight, pcie_weight = score_weights(n)
    pairs = n * (n - 1) // 2
    assert pcie_weight > pairs
    assert nvlink_weight > 5 * pairs * pcie_weight + pairs


def test_queries() -> None:
    t = Topology.build(
        ["a", "b", "c"],
        nvlinks={("b", "a"): 4},
        pcie={("a", "b"): PcieLevel.HOSTBRIDGE},
        numa_nodes={"a": 0},
    )
    assert t.links("a", "b") == t.links("b", "a") == 4
    assert t.links("a", "c") == 0
    assert t.links("a", "ghost") == 0
    assert t.pcie_level("a", "b") is PcieLevel.HOSTBRIDGE
    assert t.pcie_level("a", "c") is PcieLevel.SYSTEM
    assert t.pcie_level("a", "ghost") is PcieLevel.SYSTEM
    assert t.numa_nodes == (0, None, None)
    assert t.index("c") == 2 and t.index("ghost") is None
    assert t.set_score(["a", "b", "ghost"]) == t.pair_score("a", "b")
    assert t.has_nvlink
    assert len(t) == 3
    assert "NV4" in t.matrix() and "PHB" not in t.matrix().splitlines()[1]


def test_rejects_inconsistent_facts() -> None:
    with pytest.raises(TopologyError, match="not a pair of two listed GPUs"):
        Topology.build(["a"], nvlinks={("a", "b"): 1})
    with pytest.raises(TopologyError, match="lists a GPU twice"):
        Topology.build(["a", "a"])
    with pytest.raises(TopologyError, match="one non-negative count both ways"):
        Topology(("a", "b"), ((0, 1), (2, 0)), ((PcieLevel.SYSTEM,) * 2,) * 2, (None, None))
    with pytest.raises(TopologyError, match=r"expected a 2x2 matrix"):
        Topology(("a", "b"), ((0,),), ((PcieLevel.SYSTEM,) * 2,) * 2, (None, None))
    with pytest.raises(TopologyError, match="one level both ways"):
        Topology(
            ("a", "b"),
            ((0, 0), (0, 0)),
            ((PcieLevel.SYSTEM, PcieLevel.NODE), (PcieLevel.SYSTEM, PcieLevel.SYSTEM)),
            (None, None),
        )


def test_pcie_level_from_nvml() -> None:
    assert PcieLevel.from_nvml(10) is PcieLevel.SINGLE
    assert PcieLevel.from_nvml(7) is PcieLevel.SYSTEM
    assert [level.closeness for level in PcieLevel] == [5, 4, 3, 2, 1, 0]


def test_normalize_bus_id() -> None:
    assert normalize_bus_id("00000000:18:00.0") == "0000:18:00.0"
    assert normalize_bus_id("0000:1A:00.0") == "0000:1a:00.0"
    assert normalize_bus_id("1a:00.1") == "0000:1a:00.1"
    assert normalize_bus_id("garbage") == "garbage"


# --- the shipped layouts, read through the fake NVML


def test_every_shipped_layout_loads() -> None:
    assert set(TOPOLOGY_LAYOUTS) <= set(LAYOUTS)
    for name in LAYOUTS:
        layout = load_layout(layout_path(name))
        assert (layout.topology is not None) == (name in TOPOLOGY_LAYOUTS), name
        assert len({g.pci_bus_id for g in layout.gpus}) == len(layout.gpus)
    with pytest.raises(KeyError, match="expected one of"):
        layout_path("dgx-9000")


def test_dgx1_cube_mesh_matches_the_published_matrix() -> None:
    t = read("dgx1-v100-cube-mesh")
    assert nv_matrix(t) == [
        [0, 1, 1, 2, 2, 0, 0, 0],
        [1, 0, 2, 1, 0, 2, 0, 0],
        [1, 2, 0, 2, 0, 0, 1, 0],
        [2, 1, 2, 0, 0, 0, 0, 1],
        [2, 0, 0, 0, 0, 1, 1, 2],
        [0, 2, 0, 0, 1, 0, 2, 1],
        [0, 0, 1, 0, 1, 2, 0, 2],
        [0, 0, 0, 1, 2, 1, 2, 0],
    ]
    assert all(sum(row) == 6 for row in t.nvlinks)  # six NVLinks per V100
    assert not t.nvswitch
    gpus = t.gpus
    assert t.pcie_level(gpus[0], gpus[1]) is PcieLevel.SINGLE
    assert t.pcie_level(gpus[0], gpus[2]) is PcieLevel.NODE
    assert t.pcie_level(gpus[0], gpus[4]) is PcieLevel.SYSTEM
    assert t.numa_nodes == (0, 0, 0, 0, 1, 1, 1, 1)
    assert t.problems == ()


@pytest.mark.parametrize(
    ("name", "count", "links"), [("hgx-h100-nvswitch", 8, 18), ("dgx2-v100-nvswitch", 16, 6)]
)
def test_nvswitch_boards_are_fully_connected(name: str, count: int, links: int) -> None:
    t = read(name)
    assert len(t) == count
    assert t.nvswitch == frozenset(t.gpus)
    assert nv_matrix(t) == [[0 if i == j else links for j in range(count)] for i in range(count)]


def test_pcie_only_server_and_workstation() -> None:
    t = read("pcie-2socket-8gpu")
    assert not t.has_nvlink
    g = t.gpus
    assert [t.pcie_level(g[0], g[j]).smi_name for j in range(1, 8)] == [
        "PIX", "PXB", "PXB", "SYS", "SYS", "SYS", "SYS"
    ]  # fmt: skip
    assert t.pcie_level(g[6], g[7]) is PcieLevel.HOSTBRIDGE
    assert t.pcie_level(g[4], g[6]) is PcieLevel.NODE
    w = read("workstation-2gpu-nvlink")
    assert w.links(*w.gpus) == 18
    assert "NV18" in w.matrix()


def test_no_nvml_calls_after_discovery() -> None:
    nvml = started(load_layout(layout_path("dgx2-v100-nvswitch")))
    inventory = discover(nvml)
    before = nvml.calls
    assert inventory.topology is not None and inventory.topology.set_score(inventory.topology.gpus) > 0
    assert nvml.calls == before
    # Reading the topology: one remote listing per GPU and one PCIe query per pair.
    read_topology(nvml, inventory)
    assert nvml.calls - before == 16 + 16 * 15 // 2


# --- the reader's robustness


def test_read_topology_degrades_on_errors() -> None:
    layout = load_layout(layout_path("dgx1-v100-cube-mesh"))
    nvml = started(layout)
    inventory = discover(nvml)
    nvml.inject_device_fault(3, "device_nvlink_remotes", "gpu-lost")
    nvml.inject_device_fault(5, "device_topology_common_ancestor", "not-supported")
    t = read_topology(nvml, inventory)
    # GPU 3's links still come from its peers' side.
    assert t.nvlinks[3] == (2, 1, 2, 0, 0, 0, 0, 1)
    # Every pair with GPU 5 is SYSTEM apart; other pairs keep their levels.
    assert all(t.pcie[5][j] is PcieLevel.SYSTEM for j in range(8) if j != 5)
    assert t.pcie[6][7] is PcieLevel.SINGLE
    assert any("GPU 3" in p and "NVLinks unknown" in p for p in t.problems)
    assert sum("PCIe relationship unknown" in p for p in t.problems) == 7


def test_read_topology_with_a_gpu_left_out_of_the_inventory() -> None:
    nvml = started(load_layout(layout_path("dgx1-v100-cube-mesh")))
    nvml.inject_device_fault(0, "device_uuid", "gpu-lost")
    inventory = discover(nvml)
    assert len(inventory.gpus) == 7
    t = read_topology(nvml, inventory)
    # The lost GPU's links are dropped; the others keep theirs.
    assert t.gpus == tuple(g.uuid for g in inventory.gpus)
    assert t.links(t.gpus[0], t.gpus[1]) == 2  # GPUs 1 and 2


class ScriptedNvml(FakeNvml):
    """The fake backend with scripted link remotes: what drivers report in odd cases."""

    def __init__(self, layout: FakeLayout, remotes: dict[int, list[NvLinkRemote]]) -> None:
        super().__init__(layout)
        self._remotes = remotes

    def device_nvlink_remotes(self, index: int) -> list[NvLinkRemote]:
        super().device_nvlink_remotes(index)
        return self._remotes.get(index, [])


def test_reader_classifies_remotes() -> None:
    layout = FakeLayout.of(3)
    bus = [normalize_bus_id(g.pci_bus_id) for g in layout.gpus]
    nvml = ScriptedNvml(
        layout,
        {
            # A direct link seen from one side only, with the bus id in another spelling.
            0: [NvLinkRemote(bus[1].upper(), NVLINK_REMOTE_GPU)],
            # A GPU this node cannot see (another VM's): ignored.
            1: [NvLinkRemote("0000:ee:00.0", NVLINK_REMOTE_GPU)],
            # Switch links, one the driver cannot describe.
            2: [NvLinkRemote("", NVLINK_REMOTE_UNKNOWN), NvLinkRemote("0001:10:00.0", NVLINK_REMOTE_SWITCH)],
        },
    )
    nvml.init()
    t = read_topology(nvml, discover(nvml))
    assert nv_matrix(t) == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    # GPU 2 alone on a fabric: nobody to reach through it.
    assert t.nvswitch == frozenset({t.gpus[2]})


def test_switch_pairs_get_the_smaller_link_count() -> None:
    layout = FakeLayout.of(3)
    sw = NvLinkRemote("0001:10:00.0", NVLINK_REMOTE_SWITCH)
    nvml = ScriptedNvml(layout, {0: [sw] * 12, 1: [sw] * 18, 2: []})
    nvml.init()
    t = read_topology(nvml, discover(nvml))
    assert nv_matrix(t) == [[0, 12, 0], [12, 0, 0], [0, 0, 0]]


def test_empty_inventory() -> None:
    nvml = started(FakeLayout.of(0))
    t = read_topology(nvml, discover(nvml))
    assert t.gpus == () and not t.has_nvlink
    assert Inventory(gpus=(), driver_version="", cuda_driver_version=0).topology is None


def test_plain_fake_layouts_have_no_links_and_numa_pcie() -> None:
    nvml = started(parse_layout({"gpus": [{"numaNode": 0}, {"numaNode": 0}, {"numaNode": 1}]}))
    t = read_topology(nvml, discover(nvml))
    assert not t.has_nvlink
    assert t.pcie[0][1] is PcieLevel.NODE and t.pcie[0][2] is PcieLevel.SYSTEM


# --- the layout format


@pytest.mark.parametrize(
    ("topology", "message"),
    [
        ("links", "topology: expected a mapping"),
        ({"nvlinks": {}}, "unknown key"),
        ({"nvlink": {"0-9": 1}}, "nvlink.0-9: expected a GPU index from 0 to 3"),
        ({"nvlink": {"0_1": 1}}, 'GPU pairs written "i-j"'),
        ({"nvlink": {"1-1": 1}}, "two different GPUs"),
        ({"nvlink": {"0-1": -1}}, "a link count >= 0"),
        ({"nvlink": {"0-1": 1, "1-0": 2}}, "each pair once"),
        ({"nvswitch": "yes"}, "true, false or a mapping"),
        ({"nvswitch": {"gpus": "some"}}, "all or a list of GPU indexes"),
        ({"nvswitch": {"links": 0}}, "nvswitch.links: expected an integer from 1 to 64"),
        ({"nvswitch": {"ports": 3}}, "unknown key"),
        ({"pcie": {"pix": [[0, 1]]}}, "unknown key"),
        ({"pcie": {"single": [0, 1]}}, "a list of GPU index lists"),
        ({"pcie": {"single": [[0, 7]]}}, "pcie.single: expected a GPU index"),
    ],
)
def test_bad_topology_sections_are_named(topology: object, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        parse_layout({"count": 4, "topology": topology}, "node.yaml")


def test_topology_section_parses() -> None:
    layout = parse_layout(
        {
            "count": 4,
            "topology": {
                "nvlink": {"0-1": 4, "3-2": 2},
                "nvswitch": {"gpus": [1, 2], "links": 6, "switches": 2},
                "pcie": {"single": [[0, 1]], "node": [[0, 1, 2, 3]]},
            },
        }
    )
    assert layout.topology is not None
    assert dict(layout.topology.nvlinks) == {(0, 1): 4, (2, 3): 2}
    nvml = started(layout)
    t = read_topology(nvml, discover(nvml))
    assert nv_matrix(t) == [[0, 4, 0, 0], [4, 0, 6, 0], [0, 6, 0, 2], [0, 0, 2, 0]]
    assert t.pcie[0][1] is PcieLevel.SINGLE and t.pcie[2][3] is PcieLevel.NODE
    remotes = nvml.device_nvlink_remotes(1)
    assert len(remotes) == 4 + 6
    assert {r.bus_id for r in remotes if r.kind == NVLINK_REMOTE_SWITCH} == {
        "00000001:10:00.0",
        "00000001:11:00.0",
    }


def test_fake_topology_calls_check_their_arguments() -> None:
    nvml = FakeNvml(FakeLayout.of(2))
    with pytest.raises(NvmlError, match="Uninitialized"):
        nvml.device_nvlink_remotes(0)
    nvml.init()
    with pytest.raises(NvmlError, match="Invalid Argument"):
        nvml.device_topology_common_ancestor(0, 5)
    assert nvml.device_topology_common_ancestor(1, 1) == 0
    assert nvml.device_nvlink_remotes(1) == []
    nvml.inject_device_fault(1, "device_topology_common_ancestor", "unknown")
    with pytest.raises(NvmlError, match="injected fault"):
        nvml.device_topology_common_ancestor(0, 1)


def test_gpu_record_untouched() -> None:
    # Topology lives beside the GPUs, not in them: Gpu keeps its fields.
    assert "topology" not in Gpu.__dataclass_fields__


def test_with_topology_reads_it_again() -> None:
    nvml = started(load_layout(layout_path("workstation-2gpu-nvlink")))
    inventory = discover(nvml)
    before = nvml.calls
    again = with_topology(nvml, inventory)
    assert again.topology == inventory.topology and again.gpus == inventory.gpus
    assert nvml.calls == before + 2 + 1
