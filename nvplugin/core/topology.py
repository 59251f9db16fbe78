"""How the GPUs of a node are wired to each other: NVLink counts, PCIe closeness, NUMA nodes.

Read once at discovery (see nvml/topology.py) and kept beside the inventory, so placement
decisions never call NVML. Every pair score the placement policy needs is computed here, once,
at construction; the policy only adds up precomputed integers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum


class PcieLevel(IntEnum):
    """The closest common PCIe ancestor of two GPUs; NVML's nvmlGpuTopologyLevel_t values.

    nvidia-smi topo -m names: INTERNAL = same board, SINGLE = PIX, MULTIPLE = PXB,
    HOSTBRIDGE = PHB, NODE = NODE, SYSTEM = SYS.
    """

    INTERNAL = 0
    SINGLE = 10
    MULTIPLE = 20
    HOSTBRIDGE = 30
    NODE = 40
    SYSTEM = 50

    @classmethod
    def from_nvml(cls, value: int) -> PcieLevel:
        """NVML's level, or SYSTEM (the farthest, so never over-promised) for unknown values."""
        try:
            return cls(value)
        except ValueError:
            return cls.SYSTEM

    @property
    def closeness(self) -> int:
        """5 for the same board down to 0 across sockets: higher is closer."""
        return (PcieLevel.SYSTEM - self) // 10

    @property
    def smi_name(self) -> str:
        return _SMI_NAMES[self]


_SMI_NAMES = {
    PcieLevel.INTERNAL: "BRD",
    PcieLevel.SINGLE: "PIX",
    PcieLevel.MULTIPLE: "PXB",
    PcieLevel.HOSTBRIDGE: "PHB",
    PcieLevel.NODE: "NODE",
    PcieLevel.SYSTEM: "SYS",
}
_MAX_CLOSENESS = PcieLevel.INTERNAL.closeness


class TopologyError(ValueError):
    """The described topology is inconsistent; the message names the GPU pair and the fault."""


@dataclass(frozen=True, slots=True)
class Topology:
    """Pairwise facts about the GPUs `gpus` (UUIDs, by position).

    `nvlinks[i][j]` is the number of NVLinks between GPUs i and j, direct or through an
    NVSwitch fabric (on one fabric every GPU reaches every other one with all its switch links).
    `pcie[i][j]` is their closest common PCIe ancestor. Both are symmetric; the diagonal is
    ignored. `numa_nodes[i]` is GPU i's NUMA node, None when unknown.
    """

    gpus: tuple[str, ...]
    nvlinks: tuple[tuple[int, ...], ...]
    pcie: tuple[tuple[PcieLevel, ...], ...]
    numa_nodes: tuple[int | None, ...]
    # GPUs that reach their peers through an NVSwitch fabric (for display and labels).
    nvswitch: frozenset[str] = frozenset()
    # What could not be read (a GPU whose links are unknown...); never silently dropped.
    problems: tuple[str, ...] = ()

    # Derived once; not part of identity.
    _index: Mapping[str, int] = field(init=False, repr=False, compare=False)
    # pair_scores[i][j]: one integer ordering pairs by NVLinks, then PCIe, then NUMA.
    pair_scores: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)
    # The most any single pair can score; the placement search uses it for its bounds.
    max_pair_score: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.gpus)
        if len(set(self.gpus)) != n:
            raise TopologyError(f"topology lists a GPU twice: {list(self.gpus)}")
        for name, matrix in (("nvlinks", self.nvlinks), ("pcie", self.pcie)):
            if len(matrix) != n or any(len(row) != n for row in matrix):
                raise TopologyError(f"topology {name}: expected a {n}x{n} matrix (one row per GPU)")
        if len(self.numa_nodes) != n:
            raise TopologyError(f"topology numa_nodes: expected {n} entries, got {len(self.numa_nodes)}")
        for i in range(n):
            for j in range(i + 1, n):
                a, b = self.gpus[i], self.gpus[j]
                if self.nvlinks[i][j] != self.nvlinks[j][i] or self.nvlinks[i][j] < 0:
                    raise TopologyError(
                        f"topology nvlinks {a} - {b}: expected one non-negative count both ways, "
                        f"got {self.nvlinks[i][j]} and {self.nvlinks[j][i]}"
                    )
                if self.pcie[i][j] != self.pcie[j][i]:
                    raise TopologyError(
                        f"topology pcie {a} - {b}: expected one level both ways, "
                        f"got {self.pcie[i][j].name} and {self.pcie[j][i].name}"
                    )
        object.__setattr__(self, "_index", {uuid: i for i, uuid in enumerate(self.gpus)})
        weights = score_weights(n)
        scores = tuple(
            tuple(0 if i == j else self._pair_score(i, j, weights) for j in range(n)) for i in range(n)
        )
        object.__setattr__(self, "pair_scores", scores)
        object.__setattr__(self, "max_pair_score", max((max(row) for row in scores), default=0))

    def _pair_score(self, i: int, j: int, weights: tuple[int, int]) -> int:
        nvlink_weight, pcie_weight = weights
        numa_i, numa_j = self.numa_nodes[i], self.numa_nodes[j]
        same_numa = int(numa_i is not None and numa_i == numa_j)
        return (
            self.nvlinks[i][j] * nvlink_weight
            + PcieLevel(self.pcie[i][j]).closeness * pcie_weight
            + same_numa
        )

    # --- construction from pair facts

    @classmethod
    def build(
        cls,
        gpus: Iterable[str],
        nvlinks: Mapping[tuple[str, str], int] | None = None,
        pcie: Mapping[tuple[str, str], PcieLevel] | None = None,
        numa_nodes: Mapping[str, int | None] | None = None,
        nvswitch: Iterable[str] = (),
        problems: Iterable[str] = (),
    ) -> Topology:
        """From facts about some pairs (either order); missing pairs have no NVLink and are
        SYSTEM apart, unknown NUMA nodes are None."""
        order = tuple(gpus)
        position = {uuid: i for i, uuid in enumerate(order)}
        n = len(order)
        links = [[0] * n for _ in range(n)]
        levels = [[PcieLevel.SYSTEM] * n for _ in range(n)]

        def pair(what: str, a: str, b: str) -> tuple[int, int]:
            if a not in position or b not in position or a == b:
                raise TopologyError(f"topology {what}: {a} - {b} is not a pair of two listed GPUs")
            return position[a], position[b]

        for (a, b), count in (nvlinks or {}).items():
            i, j = pair("nvlinks", a, b)
            links[i][j] = links[j][i] = count
        for (a, b), level in (pcie or {}).items():
            i, j = pair("pcie", a, b)
            levels[i][j] = levels[j][i] = PcieLevel(level)
        numa = numa_nodes or {}
        return cls(
            gpus=order,
            nvlinks=tuple(tuple(row) for row in links),
            pcie=tuple(tuple(row) for row in levels),
            numa_nodes=tuple(numa.get(uuid) for uuid in order),
            nvswitch=frozenset(nvswitch),
            problems=tuple(problems),
        )

    # --- queries

    def __len__(self) -> int:
        return len(self.gpus)

    def index(self, uuid: str) -> int | None:
        return self._index.get(uuid)

    def links(self, a: str, b: str) -> int:
        """NVLinks between two GPUs; 0 when either is unknown."""
        i, j = self._index.get(a), self._index.get(b)
        if i is None or j is None or i == j:
            return 0
        return self.nvlinks[i][j]

    def pcie_level(self, a: str, b: str) -> PcieLevel:
        i, j = self._index.get(a), self._index.get(b)
        if i is None or j is None:
            return PcieLevel.SYSTEM
        return PcieLevel(self.pcie[i][j])

    def pair_score(self, a: str, b: str) -> int:
        i, j = self._index.get(a), self._index.get(b)
        if i is None or j is None or i == j:
            return 0
        return self.pair_scores[i][j]

    def set_score(self, uuids: Iterable[str]) -> int:
        """The link quality of a set: the sum of its pair scores (unknown GPUs add nothing)."""
        positions = sorted({i for i in map(self._index.get, uuids) if i is not None})
        scores = self.pair_scores
        return sum(scores[i][j] for k, i in enumerate(positions) for j in positions[k + 1 :])

    @property
    def has_nvlink(self) -> bool:
        return any(any(row) for row in self.nvlinks)

    def matrix(self) -> str:
        """An `nvidia-smi topo -m` style table: NV<n> where linked, else the PCIe level."""
        n = len(self.gpus)
        header = ["", *(f"GPU{j}" for j in range(n)), "NUMA"]
        rows = [header]
        for i in range(n):
            cells = [f"GPU{i}"]
            for j in range(n):
                if i == j:
                    cells.append("X")
                elif self.nvlinks[i][j]:
                    cells.append(f"NV{self.nvlinks[i][j]}")
                else:
                    cells.append(PcieLevel(self.pcie[i][j]).smi_name)
            numa = self.numa_nodes[i]
            cells.append("N/A" if numa is None else str(numa))
            rows.append(cells)
        width = max(len(c) for row in rows for c in row) + 2
        lines = ["".join(c.ljust(width) for c in row).rstrip() for row in rows]
        lines += [f"GPU{i}: {uuid}" for i, uuid in enumerate(self.gpus)]
        if self.nvswitch:
            lines.append(f"on the NVSwitch fabric: {len(self.nvswitch)} GPU(s)")
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


def score_weights(gpu_count: int) -> tuple[int, int]:
    """(per NVLink, per PCIe closeness step) weights for `gpu_count` GPUs; NUMA weighs 1.

    Chosen so that summing pair scores over any set compares sets lexicographically: total
    NVLinks first, then total PCIe closeness, then the number of same-NUMA pairs. With p
    pairs at most, NUMA adds at most p and PCIe at most 5 * p steps.
    """
    pairs = gpu_count * (gpu_count - 1) // 2
    pcie_weight = pairs + 1
    nvlink_weight = (_MAX_CLOSENESS * pairs + 1) * pcie_weight
    return nvlink_weight, pcie_weight


def no_topology(gpus: Iterable[str], numa_nodes: Mapping[str, int | None] | None = None) -> Topology:
    """A topology that knows nothing but the NUMA nodes: no links, everything SYSTEM apart."""
    return Topology.build(gpus, numa_nodes=numa_nodes)
