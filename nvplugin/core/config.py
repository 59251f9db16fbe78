"""The agent's configuration: one typed, immutable object resolved from flags, env and file.

Each setting is declared once in OPTIONS with its NVIDIA-compatible flag and environment
variable, its parser and its default. `resolve` layers the sources with NVIDIA's precedence:
flag > environment > config file > default. Every parse error names its source and says what
was expected, so the CLI can print it and exit before touching any socket.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

DEFAULT_KUBELET_SOCKET = "/var/lib/kubelet/device-plugins/kubelet.sock"

MIG_STRATEGIES = ("none", "single", "mixed")
DEVICE_LIST_STRATEGIES = ("envvar", "volume-mounts", "cdi-annotations", "cdi-cri")
DEVICE_ID_STRATEGIES = ("uuid", "index")
SHARED_DEVICES_ALLOCATION_POLICIES = ("distributed", "packed")
# NVIDIA's default: renamed shared resources get this suffix ("nvidia.com/gpu.shared").
SHARED_SUFFIX = ".shared"


class ConfigError(ValueError):
    """A setting had a value the agent cannot use. The message is written for the user."""


@dataclass(frozen=True, slots=True)
class ReplicatedResource:
    """One `sharing.timeSlicing.resources[]` entry: advertise each device of `name` `replicas` times."""

    name: str
    replicas: int
    # The name the replicas are advertised under; None keeps `name` (renameByDefault sets
    # "<name>.shared").
    rename: str | None = None

    @property
    def advertised_name(self) -> str:
        return self.rename or self.name


@dataclass(frozen=True, slots=True)
class TimeSlicing:
    rename_by_default: bool = False
    fail_requests_greater_than_one: bool = False
    resources: tuple[ReplicatedResource, ...] = ()

    def for_resource(self, name: str) -> ReplicatedResource | None:
        for resource in self.resources:
            if resource.name == name:
                return resource
        return None


@dataclass(frozen=True, slots=True)
class Sharing:
    """The `sharing` section of the config file. Only time-slicing: MPS is refused when read."""

    time_slicing: TimeSlicing = TimeSlicing()

    @property
    def strategy(self) -> str:
        """NVIDIA's sharing-strategy label value: "time-slicing" or "none"."""
        return "time-slicing" if self.time_slicing.resources else "none"


@dataclass(frozen=True, slots=True)
class Config:
    kubelet_socket: str = DEFAULT_KUBELET_SOCKET
    fail_on_init_error: bool = True
    mig_strategy: str = "none"
    pass_device_specs: bool = False
    device_list_strategy: tuple[str, ...] = ("envvar",)
    device_id_strategy: str = "uuid"
    cdi_annotation_prefix: str = "cdi.k8s.io/"
    nvidia_driver_root: str = "/"
    # Where device nodes live; None means the driver root (NVIDIA's rule).
    dev_root: str | None = None
    config_file: str | None = None
    # Run on the fake NVML backend: a GPU count or a layout file. None: the real NVML.
    fake_gpus: str | None = None
    # GetPreferredAllocation over time-sliced replicas: spread over GPUs or fill one first.
    shared_devices_allocation_policy: str = "distributed"
    # GPU feature discovery (labels): label once and exit, omit the timestamp label, relabel period.
    gfd_oneshot: bool = False
    gfd_no_timestamp: bool = False
    gfd_sleep_interval_s: float = 60.0
    # The config file's `sharing` section (file only: no flag or env sets it).
    sharing: Sharing = Sharing()

    @property
    def device_root(self) -> str:
        """Where device nodes are found on the host: --dev-root, else the driver root."""
        return self.dev_root or self.nvidia_driver_root

    @property
    def plugin_dir(self) -> str:
        """The kubelet's device-plugin directory: plugin sockets live beside kubelet.sock."""
        head, _, _ = self.kubelet_socket.rpartition("/")
        return head or "."

    def with_changes(self, **changes: Any) -> Config:
        return replace(self, **changes)


# --- value parsers: each takes (where, raw) and returns the typed value or raises ConfigError


def parse_bool(where: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{where}: expected true or false, got {raw!r}")


def parse_path(where: str, raw: object) -> str:
    text = str(raw).strip()
    if not text:
        raise ConfigError(f"{where}: expected a path, got an empty value")
    return text


def parse_socket_path(where: str, raw: object) -> str:
    path = parse_path(where, raw)
    if path.endswith("/"):
        raise ConfigError(
            f"{where}: expected the path of the kubelet's socket file, got a directory {path!r}"
        )
    return path


def _choice(options: tuple[str, ...]) -> Callable[[str, object], str]:
    def parse(where: str, raw: object) -> str:
        text = str(raw).strip()
        if text not in options:
            raise ConfigError(f"{where}: expected one of {', '.join(options)}; got {raw!r}")
        return text

    return parse


def _choice_list(options: tuple[str, ...]) -> Callable[[str, object], tuple[str, ...]]:
    def parse(where: str, raw: object) -> tuple[str, ...]:
        items = [str(i) for i in raw] if isinstance(raw, list | tuple) else str(raw).split(",")
        values = tuple(dict.fromkeys(i.strip() for i in items if i.strip()))
        if not values:
            raise ConfigError(f"{where}: expected one or more of {', '.join(options)}; got nothing")
        bad = [v for v in values if v not in options]
        if bad:
            raise ConfigError(
                f"{where}: expected one or more of {', '.join(options)}; got {', '.join(map(repr, bad))}"
            )
        return values

    return parse


def parse_fake_gpus(where: str, raw: object) -> str:
    text = str(raw).strip()
    if not text:
        raise ConfigError(f"{where}: expected a GPU count (0-64) or a layout file, got an empty value")
    if text.isdigit() and not 0 <= int(text) <= 64:
        raise ConfigError(f"{where}: expected a GPU count from 0 to 64, got {text}")
    if text.lstrip("-").isdigit() and text.startswith("-"):
        raise ConfigError(f"{where}: expected a GPU count from 0 to 64, got {text}")
    return text


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(where: str, raw: object) -> float:
    """A Go duration ("60s", "1m30s", "500ms") or a number of seconds -> seconds (> 0)."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        seconds = float(raw)
    else:
        text = str(raw).strip()
        parts = _DURATION_PART.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise ConfigError(f"{where}: expected a duration such as 60s, 1m30s or 500ms; got {raw!r}")
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if not seconds > 0:
        raise ConfigError(f"{where}: expected a duration greater than zero; got {raw!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its Config field, NVIDIA's flag and env names, and its parser."""

    field: str
    flag: str
    env: str | None
    parse: Callable[[str, object], Any]
    help: str
    metavar: str | None = None
    is_bool: bool = False


OPTIONS: tuple[Option, ...] = (
    Option(
        "kubelet_socket",
        "--kubelet-socket",
        "KUBELET_SOCKET",
        parse_socket_path,
        "path of the kubelet's registration socket; plugin sockets are created beside it",
        "PATH",
    ),
    Option(
        "fail_on_init_error",
        "--fail-on-init-error",
        "FAIL_ON_INIT_ERROR",
        parse_bool,
        "exit when NVML cannot be initialised (false: keep running with zero devices)",
        "BOOL",
        is_bool=True,
    ),
    Option(
        "mig_strategy",
        "--mig-strategy",
        "MIG_STRATEGY",
        _choice(MIG_STRATEGIES),
        "how MIG devices are advertised: none, single or mixed",
        "STRATEGY",
    ),
    Option(
        "pass_device_specs",
        "--pass-device-specs",
        "PASS_DEVICE_SPECS",
        parse_bool,
        "also return device nodes (DeviceSpecs) in Allocate",
        "BOOL",
        is_bool=True,
    ),
    Option(
        "device_list_strategy",
        "--device-list-strategy",
        "DEVICE_LIST_STRATEGY",
        _choice_list(DEVICE_LIST_STRATEGIES),
        "how Allocate passes devices to the container runtime (comma list)",
        "LIST",
    ),
    Option(
        "device_id_strategy",
        "--device-id-strategy",
        "DEVICE_ID_STRATEGY",
        _choice(DEVICE_ID_STRATEGIES),
        "pass devices by uuid or by index",
        "STRATEGY",
    ),
    Option(
        "cdi_annotation_prefix",
        "--cdi-annotation-prefix",
        "CDI_ANNOTATION_PREFIX",
        parse_path,
        "annotation prefix for the cdi-annotations strategy",
        "PREFIX",
    ),
    Option(
        "nvidia_driver_root",
        "--nvidia-driver-root",
        "NVIDIA_DRIVER_ROOT",
        parse_path,
        "root of the NVIDIA driver installation",
        "PATH",
    ),
    Option(
        "dev_root",
        "--dev-root",
        "NVIDIA_DEV_ROOT",
        parse_path,
        "root under which device nodes are found (default: the driver root)",
        "PATH",
    ),
    Option(
        "config_file",
        "--config-file",
        "CONFIG_FILE",
        parse_path,
        "NVIDIA-compatible v1 config file (YAML or JSON)",
        "FILE",
    ),
    Option(
        "fake_gpus",
        "--fake-gpus",
        "NVPLUGIN_FAKE_GPUS",
        parse_fake_gpus,
        "run on simulated GPUs instead of NVML: a count (e.g. 8) or a layout file",
        "N|FILE",
    ),
    Option(
        "shared_devices_allocation_policy",
        "--shared-devices-allocation-policy",
        "SHARED_DEVICES_ALLOCATION_POLICY",
        _choice(SHARED_DEVICES_ALLOCATION_POLICIES),
        "preferred allocation of time-sliced replicas: distributed (spread over GPUs) or packed",
        "POLICY",
    ),
    Option(
        "gfd_oneshot",
        "--oneshot",
        "GFD_ONESHOT",
        parse_bool,
        "label the node once and exit the labeller",
        "BOOL",
        is_bool=True,
    ),
    Option(
        "gfd_no_timestamp",
        "--no-timestamp",
        "GFD_NO_TIMESTAMP",
        parse_bool,
        "do not add the nvidia.com/gfd.timestamp label",
        "BOOL",
        is_bool=True,
    ),
    Option(
        "gfd_sleep_interval_s",
        "--sleep-interval",
        "GFD_SLEEP_INTERVAL",
        parse_duration,
        "time between relabelling passes (a duration such as 60s)",
        "DURATION",
    ),
)

_FIELDS = {f.name for f in fields(Config)}
assert all(o.field in _FIELDS for o in OPTIONS), "OPTIONS names a field Config lacks"


def resolve(
    flags: Mapping[str, object],
    env: Mapping[str, str],
    file_values: Mapping[str, object] | None = None,
    file_name: str = "config file",
) -> Config:
    """Build the Config from flag values (by field name, None = not given), the environment
    and values read from a config file (by field name), highest precedence first."""
    changes: dict[str, Any] = {}
    for option in OPTIONS:
        raw = flags.get(option.field)
        if raw is not None:
            changes[option.field] = option.parse(option.flag, raw)
        elif option.env and env.get(option.env, "") != "":
            changes[option.field] = option.parse(f"environment variable {option.env}", env[option.env])
        elif file_values and file_values.get(option.field) is not None:
            changes[option.field] = option.parse(f"{file_name}: {option.field}", file_values[option.field])
    # Settings only a config file can carry (already typed and checked by core.configfile).
    flag_fields = {o.field for o in OPTIONS}
    for name, value in (file_values or {}).items():
        if name not in flag_fields and name in _FIELDS and value is not None:
            changes[name] = value
    return Config(**changes)
