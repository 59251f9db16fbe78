"""Shared helpers for the MIG / sharing tests: inventories read from the shipped layouts."""

from __future__ import annotations

from pathlib import Path

import nvplugin
from nvplugin.core.config import Config, ReplicatedResource, Sharing, TimeSlicing
from nvplugin.core.inventory import Inventory
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.fake import FakeNvml, load_layout

LAYOUTS = Path(nvplugin.__file__).parent / "nvml" / "layouts"


def inventory(name: str) -> Inventory:
    nvml = FakeNvml(load_layout(str(LAYOUTS / f"{name}.yaml")))
    nvml.init()
    return discover(nvml)


def sharing(*resources: tuple[str, int], rename: bool = False, fail_gt_one: bool = False) -> Sharing:
    return Sharing(
        TimeSlicing(
            rename_by_default=rename,
            fail_requests_greater_than_one=fail_gt_one,
            resources=tuple(
                ReplicatedResource(n, r, rename=f"{n}.shared" if rename else None) for n, r in resources
            ),
        )
    )


def config(**changes: object) -> Config:
    return Config().with_changes(**changes)
