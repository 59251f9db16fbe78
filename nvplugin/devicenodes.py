"""Which NVIDIA control device nodes exist: checked once at start, fed to the pure Allocate."""

from __future__ import annotations

import os

from nvplugin.core.allocation import CONTROL_NODES


def existing_control_nodes(root: str = "/") -> frozenset[str]:
    """The CONTROL_NODES present under `root` (NVIDIA stats them in its own container, so the
    default root "/" matches it), as their paths without the root."""
    return frozenset(p for p in CONTROL_NODES if os.path.exists(os.path.join(root, p.lstrip("/"))))
