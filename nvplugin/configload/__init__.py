"""Loading the configuration: flags, environment and the config file, at start and on SIGHUP.

The shell side of nvplugin.core.config and core.configfile: it reads the file named by
--config-file / CONFIG_FILE / GFD_CONFIG_FILE (YAML or JSON, at most 1 MiB, a regular file: never
a FIFO that would block), decodes it the way NVIDIA's Go reader does (below), then resolves
flag > env > file > default. Every problem is a ConfigError whose message is written for the
user: the CLI prints it and exits non-zero before touching any socket; a reload logs it and keeps
the running config. What was accepted but deserves a word (unknown keys NVIDIA ignores, settings
that cannot apply here) comes back as warnings, one line each, for the caller to log.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nvplugin.core.config import (
    MAX_CONFIG_BYTES,
    OPTION_BY_FIELD,
    Config,
    ConfigError,
    read_text,
    resolve_settings,
)
from nvplugin.core.xid import DEFAULT_POLICY, HealthPolicy, resolve_health_policy

if TYPE_CHECKING:
    from nvplugin.core.configfile import ConfigFile

log = logging.getLogger(__name__)

CONFIG_FILE_OPTION = OPTION_BY_FIELD["config_file"]


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: Config
    # What the user should be told, one line each: the file's warnings (unknown keys, settings
    # NVIDIA ignores too), notes from resolving (settings that cannot apply on this host,
    # disagreeing environment variables) and malformed health variables.
    warnings: tuple[str, ...] = ()
    # The XID health policy: DP_*_HEALTHCHECKS > the file's `health:` section > NVIDIA's defaults.
    health: HealthPolicy = DEFAULT_POLICY


def read_config_bytes(path: str) -> bytes:
    """The file's bytes: a regular file of at most 1 MiB; ConfigError otherwise."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: not a regular file; expected a YAML or JSON config file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path}: the file is {info.st_size} bytes; expected at most {MAX_CONFIG_BYTES} (1 MiB)"
            )
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:  # grew since stat
        raise ConfigError(f"{path}: the file is over {MAX_CONFIG_BYTES} bytes (1 MiB)")
    return data


def read_config_file(path: str, *, strict: bool = False) -> ConfigFile:
    from nvplugin.core.configfile import parse_config_file  # only when there is a file

    """Read and check a v1 config file; ConfigError names the file and what is wrong. `strict`
    refuses keys NVIDIA does not know (they are warnings otherwise)."""
    from nvplugin.configload.yamlreader import decode_config_text  # PyYAML: only when a file is read

    return parse_config_file(decode_config_text(path, read_config_bytes(path)), path, strict=strict)


def config_file_path(flags: Mapping[str, object], env: Mapping[str, str]) -> str | None:
    """--config-file, else CONFIG_FILE, else GFD_CONFIG_FILE, else no file."""
    raw = flags.get("config_file")
    if raw is not None and str(raw).strip():
        return str(read_text(CONFIG_FILE_OPTION, CONFIG_FILE_OPTION.flag_names, raw))
    for name in CONFIG_FILE_OPTION.envs:
        if env.get(name, "").strip():
            return str(read_text(CONFIG_FILE_OPTION, f"environment variable {name}", env[name]))
    return None


def load_with_file(
    flags: Mapping[str, object], env: Mapping[str, str], file: ConfigFile, file_name: str = "config file"
) -> LoadedConfig:
    """The effective config from flags and environment over an already read config file."""
    resolved = resolve_settings(flags, env, file.values, file.sources)
    health, health_warnings = resolve_health_policy(env, file.health, file_name)
    return LoadedConfig(
        config=resolved.config, warnings=file.warnings + resolved.notes + health_warnings, health=health
    )


def load(
    flags: Mapping[str, object], env: Mapping[str, str] | None = None, *, strict: bool = False
) -> LoadedConfig:
    """The effective config and what to tell the user. Raises ConfigError. Blocking (reads a
    file): call it from a worker thread inside the loop."""
    env = os.environ if env is None else env
    path = config_file_path(flags, env)
    if path is not None:
        file = read_config_file(path, strict=strict)
    else:
        from nvplugin.core.configfile import ConfigFile

        file = ConfigFile()
    return load_with_file(flags, env, file, path or "config file")


def load_config(flags: Mapping[str, object], env: Mapping[str, str] | None = None) -> Config:
    """The effective config; its warnings are logged. Raises ConfigError.

    `flags` maps Config field names to flag values (None: flag not given); `env` defaults to
    os.environ. Blocking (reads a file): call it from a worker thread inside the loop.
    """
    loaded = load(flags, env)
    for warning in loaded.warnings:
        log.warning("%s", warning)
    return loaded.config


class ConfigSource:
    """Where the running agent's config comes from, for start-up and every reload (SIGHUP or a
    per-node config switch): the command line's flags, the environment at reload time, and the
    config file - the one a node label selected, once one has, else --config-file/CONFIG_FILE."""

    def __init__(self, flags: Mapping[str, object]) -> None:
        self.flags = dict(flags)
        self._selected: tuple[str | None] | None = None

    def select_file(self, path: str | None) -> None:
        """Use this file from now on (None: no file, flags and environment only)."""
        self._selected = (path,)

    def load(self) -> Config:
        """The effective config (blocking: reads a file). Raises ConfigError."""
        flags, env = dict(self.flags), dict(os.environ)
        if self._selected is not None:
            flags["config_file"] = self._selected[0]
            for name in CONFIG_FILE_OPTION.envs:
                env.pop(name, None)
        return load_config(flags, env)
