"""Finding the configured IMEX channels' device nodes, once at start (see core.imex)."""

from __future__ import annotations

import os
import stat

from nvplugin.core.config import Config
from nvplugin.core.imex import ImexSelection, select_imex_channels


def discover_imex_channels(config: Config) -> ImexSelection:
    """The configured channels present on this node; ConfigError when a required one is missing.
    Blocking (stats files): call it at start, off the event loop."""
    return select_imex_channels(config, _dev_root(config.container_driver_root), _is_char_device)


def _dev_root(container_driver_root: str) -> str:
    """NVIDIA's rule: the driver root mounted in this container when it has a /dev directory."""
    return container_driver_root if os.path.isdir(os.path.join(container_driver_root, "dev")) else "/"


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False
