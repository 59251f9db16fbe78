"""On a real NVIDIA GPU: the topology read through NVML, against `nvidia-smi topo -m`.

Skipped where NVML cannot be initialised (CI). On the GPU machines: `pytest -m nvml -s
tests/test_topology_nvml.py` prints the matrix and every active link's remote.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from nvplugin.core.topology import PcieLevel
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.real import RealNvml
from nvplugin.nvml.topology import read_topology


def _nvml_or_skip() -> RealNvml:
    nvml = RealNvml()
    try:
        nvml.init()
    except Exception as exc:
        pytest.skip(f"no real NVML here: {exc}")
    return nvml


def _smi_nvlinks() -> list[list[int]] | None:
    """NV<n> cells of `nvidia-smi topo -m` for the GPU rows (0 elsewhere); None without it."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "topo", "-m"], check=True, capture_output=True, text=True).stdout
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)  # the header is underlined even when piped
    print(out)
    # Row lines start with their GPU's name; the header line starts with blanks.
    rows = [line.split() for line in out.splitlines() if re.match(r"GPU\d+\s", line)]
    count = len(rows)
    matrix = []
    for cells in rows:
        links = [int(c[2:]) if re.fullmatch(r"NV\d+", c) else 0 for c in cells[1 : 1 + count]]
        matrix.append(links)
    return matrix


@pytest.mark.nvml
def test_real_topology_matches_nvidia_smi() -> None:
    nvml = _nvml_or_skip()
    try:
        inventory = discover(nvml)
        for gpu in inventory.gpus:
            remotes = nvml.device_nvlink_remotes(gpu.index)
            print(f"GPU {gpu.index} {gpu.pci_bus_id}: {len(remotes)} active NVLinks: {remotes}")
        topology = read_topology(nvml, inventory)
    finally:
        nvml.shutdown()
    print(topology.matrix())
    assert topology.gpus == tuple(g.uuid for g in inventory.gpus)
    assert topology.problems == ()
    n = len(inventory.gpus)
    for i in range(n):
        for j in range(n):
            if i != j:
                assert topology.pcie[i][j] in PcieLevel
    expected = _smi_nvlinks()
    if expected is not None and len(expected) == n:
        assert [list(row) for row in topology.nvlinks] == expected
    if n == 1:
        assert not topology.has_nvlink
    if n == 2 and all("H100" in g.name for g in inventory.gpus) and expected and expected[0][1]:
        # The 2-GPU test machine: `nvidia-smi topo -m` shows NV18.
        assert topology.links(*topology.gpus) == expected[0][1] == 18
