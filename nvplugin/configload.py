"""Loading the configuration: flags, environment and the config file, at start and on SIGHUP.

The shell side of nvplugin.core.config and nvplugin.core.configfile: it reads the file named by
--config-file / CONFIG_FILE (YAML or JSON), then resolves flag > env > file > default. Every
problem is a ConfigError whose message is written for the user: the CLI prints it and exits
non-zero before touching any socket; a reload logs it and keeps the running config.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from nvplugin.core.config import OPTIONS, Config, ConfigError, resolve
from nvplugin.core.configfile import ConfigFile, parse_config_file
from nvplugin.core.xid import DEFAULT_POLICY, HealthPolicy, resolve_health_policy

log = logging.getLogger(__name__)

_CONFIG_FILE_OPTION = next(o for o in OPTIONS if o.field == "config_file")


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: Config
    # What the config file asked for that nvplugin ignores, one line each.
    warnings: tuple[str, ...] = ()
    # The XID health policy: DP_*_HEALTHCHECKS > the file's `health:` section > NVIDIA's defaults.
    health: HealthPolicy = DEFAULT_POLICY


def read_config_file(path: str) -> ConfigFile:
    """Read and check a v1 config file; ConfigError names the file and what is wrong."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file: {exc}") from None
    return parse_config_file(decode_config_text(path, text), path)


def decode_config_text(path: str, text: str) -> object:
    """YAML, or JSON (a .json file, read strictly so JSON errors point at JSON)."""
    if path.endswith(".json"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML or JSON: {_yaml_problem(exc)}") from None


def _yaml_problem(exc: Any) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(problem)


def config_file_path(flags: Mapping[str, object], env: Mapping[str, str]) -> str | None:
    """--config-file, else CONFIG_FILE, else no file."""
    raw = flags.get("config_file")
    if raw is not None:
        return str(_CONFIG_FILE_OPTION.parse(_CONFIG_FILE_OPTION.flag, raw))
    if env.get("CONFIG_FILE", "") != "":
        return str(_CONFIG_FILE_OPTION.parse("environment variable CONFIG_FILE", env["CONFIG_FILE"]))
    return None


def load(flags: Mapping[str, object], env: Mapping[str, str] | None = None) -> LoadedConfig:
    """The effective config and the config file's warnings. Raises ConfigError."""
    env = os.environ if env is None else env
    path = config_file_path(flags, env)
    file = read_config_file(path) if path is not None else ConfigFile()
    config = resolve(flags, env, file.values, path or "config file")
    health, health_warnings = resolve_health_policy(env, file.health, path or "config file")
    return LoadedConfig(config=config, warnings=file.warnings + health_warnings, health=health)


def load_config(flags: Mapping[str, object], env: Mapping[str, str] | None = None) -> Config:
    """The effective config; the file's warnings are logged. Raises ConfigError.

    `flags` maps Config field names to flag values (None: flag not given); `env` defaults to
    os.environ. Blocking (reads a file): call it from a worker thread inside the loop.
    """
    loaded = load(flags, env)
    for warning in loaded.warnings:
        log.warning("%s", warning)
    return loaded.config


def config_as_dict(config: Config) -> dict[str, object]:
    """A plain, printable view of the config (tuples as lists, nested sharing spelled out)."""

    def plain(value: object) -> object:
        if hasattr(value, "__dataclass_fields__"):
            return {f.name: plain(getattr(value, f.name)) for f in fields(value)}  # type: ignore[arg-type]
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    result = plain(config)
    assert isinstance(result, dict)
    return result


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
            env.pop("CONFIG_FILE", None)
        return load_config(flags, env)
