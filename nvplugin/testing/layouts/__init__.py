"""Fake node layouts with described topologies, for tests, benchmarks and `--fake-gpus FILE`."""

from __future__ import annotations

from pathlib import Path

LAYOUT_DIR = Path(__file__).parent

# name -> file: every shipped layout.
LAYOUTS = {path.stem: path for path in sorted(LAYOUT_DIR.glob("*.yaml"))}


def layout_path(name: str) -> str:
    """The file of a shipped layout, e.g. layout_path("hgx-h100-nvswitch")."""
    if name not in LAYOUTS:
        raise KeyError(f"no shipped layout {name!r}; expected one of {', '.join(LAYOUTS)}")
    return str(LAYOUTS[name])
