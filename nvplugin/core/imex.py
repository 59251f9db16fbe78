"""IMEX channels: which of the configured channels a container gets (NVIDIA's internal/imex).

Pure: the shell says whether a channel's device node exists (nvplugin.imex); this module decides
what that means. A missing channel is skipped with a warning, or refused when imex.required.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass

from nvplugin.core.config import Config, ConfigError

IMEX_CHANNEL_DIR = "/dev/nvidia-caps-imex-channels"
IMEX_CHANNELS_ENV = "NVIDIA_IMEX_CHANNELS"


@dataclass(frozen=True, slots=True)
class ImexChannel:
    id: str

    @property
    def path(self) -> str:
        """The channel's device node inside a container (and under the host's device root)."""
        return f"{IMEX_CHANNEL_DIR}/channel{self.id}"


@dataclass(frozen=True, slots=True)
class ImexSelection:
    channels: tuple[ImexChannel, ...] = ()
    warnings: tuple[str, ...] = ()


def candidate_paths(channel: ImexChannel, dev_root: str) -> tuple[str, ...]:
    """Where this process may see the channel's node, in NVIDIA's order: under the dev root of
    the driver root mounted in this container, then at its own path."""
    under_root = posixpath.join(dev_root, channel.path.lstrip("/"))
    return (under_root,) if under_root == channel.path else (under_root, channel.path)


def select_imex_channels(
    config: Config, dev_root: str, is_char_device: Callable[[str], bool]
) -> ImexSelection:
    """The configured channels whose device node exists (`is_char_device`, probed under
    `dev_root`: the container driver root when it has a /dev directory, else "/", as NVIDIA
    does). A missing channel is a warning, or ConfigError when imex.required is set."""
    channels: list[ImexChannel] = []
    warnings: list[str] = []
    for channel_id in config.imex_channel_ids:
        channel = ImexChannel(str(channel_id))
        paths = candidate_paths(channel, dev_root)
        if any(is_char_device(p) for p in paths):
            channels.append(channel)
            continue
        message = f"IMEX channel {channel.id}: no character device at {' or '.join(paths)}"
        if config.imex_required:
            raise ConfigError(f"{message}; imex.required is set, so nvplugin cannot start without it")
        warnings.append(f"{message}; containers are started without it (imex.required is false)")
    return ImexSelection(tuple(channels), tuple(warnings))
