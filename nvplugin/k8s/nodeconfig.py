"""Per-node config: the node label `nvidia.com/device-plugin.config` picks a named config file.

NVIDIA's config-manager sidecar semantics, in-process: the configs are the regular files of a
directory (a ConfigMap mounted as a volume; its `..data` entries are skipped), named by file
name. The label's value names one; without the label, the default config name is used if one is
set, else the fallback strategies in order: `named` (a config called "default"), `single` (the
only config there is), `empty` (no config file: flags and environment only). NVIDIA's chart uses
`named,single`. A label naming no existing config is reported and the current config is kept
(NVIDIA's sidecar exits with an error instead).

The switcher is fed the Node's labels by the reconciler's watch (no second watch) and calls the
agent's reload callback only when the chosen config changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from nvplugin.core.labels import CONFIG_LABEL

log = logging.getLogger(__name__)

FALLBACK_NAMED = "named"
FALLBACK_SINGLE = "single"
FALLBACK_EMPTY = "empty"
FALLBACK_STRATEGIES = (FALLBACK_NAMED, FALLBACK_SINGLE, FALLBACK_EMPTY)
DEFAULT_FALLBACKS = (FALLBACK_NAMED, FALLBACK_SINGLE)
NAMED_FALLBACK_CONFIG = "default"

# Called with the chosen config's name and path, or (None, None) for the empty config.
ReloadCallback = Callable[[str | None, Path | None], None]


class ConfigSelectionError(ValueError):
    """No config can be chosen; the message says what was asked for and what exists."""


def available_configs(config_dir: str | os.PathLike[str]) -> list[str]:
    """Config names: the regular files in the directory, without ConfigMap `..` entries."""
    try:
        entries = list(os.scandir(config_dir))
    except OSError as exc:
        raise ConfigSelectionError(
            f"cannot read the config directory {config_dir}: {exc.strerror or exc}"
        ) from None
    return sorted(e.name for e in entries if not e.name.startswith("..") and e.is_file())


def parse_fallbacks(raw: str | Sequence[str]) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    values = tuple(i.strip() for i in items if i.strip())
    bad = [v for v in values if v not in FALLBACK_STRATEGIES]
    if bad:
        raise ConfigSelectionError(
            f"unknown fallback strateg{'y' if len(bad) == 1 else 'ies'} {', '.join(map(repr, bad))}; "
            f"expected some of {', '.join(FALLBACK_STRATEGIES)}"
        )
    return values


def choose_config(
    label_value: str,
    available: Sequence[str],
    default_config: str | None = None,
    fallbacks: Sequence[str] = DEFAULT_FALLBACKS,
    where: str = "the config directory",
) -> str | None:
    """The config name to use (None: the empty config), or ConfigSelectionError."""
    names = ", ".join(available) or "none"
    if label_value:
        if label_value not in available:
            raise ConfigSelectionError(
                f"node label {CONFIG_LABEL}={label_value} names no config in {where}; available: {names}"
            )
        return label_value
    if default_config:
        if default_config not in available:
            raise ConfigSelectionError(
                f"the default config {default_config!r} is not in {where}; available: {names}"
            )
        return default_config
    for fallback in fallbacks:
        if fallback == FALLBACK_NAMED and NAMED_FALLBACK_CONFIG in available:
            return NAMED_FALLBACK_CONFIG
        if fallback == FALLBACK_SINGLE and len(available) == 1:
            return available[0]
        if fallback == FALLBACK_EMPTY:
            return None
    raise ConfigSelectionError(
        f"no {CONFIG_LABEL} label, no default config and no fallback ({', '.join(fallbacks) or 'none'}) "
        f"matched; available in {where}: {names}"
    )


class NodeConfigSwitcher:
    """Feed it the Node's labels (`observe`); it calls `on_change` when the chosen config
    changes. `initial()` gives the config to start with before the Node has been read."""

    def __init__(
        self,
        config_dir: str | os.PathLike[str],
        on_change: ReloadCallback,
        *,
        default_config: str | None = None,
        fallbacks: Sequence[str] = DEFAULT_FALLBACKS,
        label: str = CONFIG_LABEL,
    ) -> None:
        self.config_dir = Path(config_dir)
        self._on_change = on_change
        self.default_config = default_config
        self.fallbacks = parse_fallbacks(fallbacks)
        self.label = label
        self.current: str | None = None
        self._started = False
        self._last_value: str | None = None
        self.problem: str | None = None

    def path(self, name: str | None) -> Path | None:
        return None if name is None else self.config_dir / name

    def _choose(self, value: str) -> str | None:
        return choose_config(
            value,
            available_configs(self.config_dir),
            self.default_config,
            self.fallbacks,
            str(self.config_dir),
        )

    def initial(self, label_value: str = "") -> tuple[str | None, Path | None]:
        """The config for start-up (raises ConfigSelectionError: the agent should stop there,
        as it does for any bad config)."""
        name = self._choose(label_value)
        self.started_with(name, label_value)
        return name, self.path(name)

    def started_with(self, name: str | None, label_value: str = "") -> None:
        """The agent already runs config `name` (None: the empty config), chosen once by the
        wiring with `initial()` for `label_value`: label changes are compared with that."""
        self.current = name
        self._started = True
        self._last_value = label_value

    def observe(self, labels: Mapping[str, str]) -> None:
        """Called with the Node's labels on every change; never raises."""
        value = labels.get(self.label, "")
        if value == self._last_value:
            return
        self._last_value = value
        try:
            name = self._choose(value)
        except ConfigSelectionError as exc:
            self.problem = str(exc)
            log.error("%s; keeping config %s", exc, self._describe(self.current))
            return
        self.problem = None
        if self._started and name == self.current:
            return
        log.info("node label %s=%s selects config %s", self.label, value or "(unset)", self._describe(name))
        try:
            self._on_change(name, self.path(name))
        except Exception:
            log.exception(
                "switching to config %s failed; keeping %s",
                self._describe(name),
                self._describe(self.current),
            )
            self.problem = f"switching to config {self._describe(name)} failed"
            self._last_value = None  # try again on the next label event
            return
        self.current = name
        self._started = True

    @staticmethod
    def _describe(name: str | None) -> str:
        return repr(name) if name is not None else "(empty: flags and environment only)"
