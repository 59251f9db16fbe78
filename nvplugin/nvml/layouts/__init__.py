"""Fake node layouts with described topologies, for tests, benchmarks and `--fake-gpus FILE`."""

from __future__ import annotations

from pathlib import Path

LAYOUT_DIR = Path(__file__).parent

# name -> file: every shipped layout.
LAYOUTS = {path.stem: path for path in sorted(LAYOUT_DIR.glob("*.yaml"))}

# The layouts that describe a topology (docs/topology.md).
TOPOLOGY_LAYOUTS = (
    "dgx1-v100-cube-mesh",
    "hgx-h100-nvswitch",
    "dgx2-v100-nvswitch",
    "pcie-2socket-8gpu",
    "workstation-2gpu-nvlink",
)


def layout_path(name: str) -> str:
    """The file of a shipped layout, e.g. layout_path("hgx-h100-nvswitch")."""
    if name not in LAYOUTS:
        raise KeyError(f"no shipped layout {name!r}; expected one of {', '.join(LAYOUTS)}")
    return str(LAYOUTS[name])
