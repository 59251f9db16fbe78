"""The agent's configuration: one typed, immutable object resolved from flags, env and file.

Each setting is declared once in OPTIONS with NVIDIA's flag names (both commands' - the device
plugin's and GFD's), their environment variables, the key it has in NVIDIA's v1 config file,
its kind and its check. `resolve_settings` layers the sources with NVIDIA's precedence:
flag > environment > config file > default, and returns the notes the user should see (things
accepted that cannot apply here, disagreeing duplicates). Values read as NVIDIA's Go code reads
them (core.gosyntax): a boolean is exactly what strconv.ParseBool takes, a duration what
time.ParseDuration takes. Every error names its source and says what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from enum import Enum, StrEnum
from typing import Any, TypeVar

from nvplugin.core import gosyntax
from nvplugin.core.address import DEFAULT_METRICS_ADDRESS, AddressError, ListenAddress, parse_listen_address

DEFAULT_KUBELET_SOCKET = "/var/lib/kubelet/device-plugins/kubelet.sock"
# NVIDIA's defaults (api/config/v1/consts.go, cmd/*/main.go).
DEFAULT_NVIDIA_CDI_HOOK_PATH = "/usr/bin/nvidia-ctk"
DEFAULT_CONTAINER_DRIVER_ROOT = "/driver-root"
DEFAULT_CDI_ANNOTATION_PREFIX = "cdi.k8s.io/"
DEFAULT_MACHINE_TYPE_FILE = "/sys/class/dmi/id/product_name"
DEFAULT_SLEEP_INTERVAL_S = 60.0
# nvplugin's own: where CDI specs are written (the CDI default).
DEFAULT_CDI_SPEC_DIR = "/var/run/cdi"
# NVIDIA's default: renamed shared resources get this suffix ("nvidia.com/gpu.shared").
SHARED_SUFFIX = ".shared"

# Bounds. A path longer than PATH_MAX cannot be opened; a unix socket path has 108 bytes
# including its NUL; more replicas than this is a typo, not a sharing plan.
MAX_PATH_BYTES = 4096
# A config file (or ConfigMap entry); NVIDIA's are a few hundred bytes.
MAX_CONFIG_BYTES = 1 << 20
MAX_UNIX_SOCKET_PATH_BYTES = 107
MAX_NAME_LENGTH = 253
MAX_REPLICAS = 4096
MAX_FAKE_GPUS = 64
MAX_KUBE_API_RATE = 1_000_000
# The labeller never runs more often than this (NVIDIA accepts 0s and would spin).
MIN_SLEEP_INTERVAL_S = 1.0


class ConfigError(ValueError):
    """A setting had a value the agent cannot use. The message is written for the user."""


class MigStrategy(StrEnum):
    NONE = "none"
    SINGLE = "single"
    MIXED = "mixed"


class DeviceListStrategy(StrEnum):
    ENVVAR = "envvar"
    VOLUME_MOUNTS = "volume-mounts"
    CDI_ANNOTATIONS = "cdi-annotations"
    CDI_CRI = "cdi-cri"


class DeviceIdStrategy(StrEnum):
    UUID = "uuid"
    INDEX = "index"


class SharingStrategy(StrEnum):
    """NVIDIA's value of the nvidia.com/<resource>.sharing-strategy label."""

    NONE = "none"
    TIME_SLICING = "time-slicing"
    MPS = "mps"


class AllocationPolicy(StrEnum):
    """--shared-devices-allocation-policy: spread shared devices over GPUs or fill one first."""

    DISTRIBUTED = "distributed"
    PACKED = "packed"


class DeviceDiscoveryStrategy(StrEnum):
    AUTO = "auto"
    NVML = "nvml"
    # Accepted for compatibility; nvplugin always discovers through NVML.
    TEGRA = "tegra"
    VFIO = "vfio"


@dataclass(frozen=True, slots=True)
class ReplicatedResource:
    """One `sharing.<strategy>.resources[]` entry: advertise each device of `name` `replicas` times."""

    name: str
    replicas: int
    # The name the replicas are advertised under; None keeps `name` (renameByDefault sets
    # "<name>.shared").
    rename: str | None = None

    @property
    def advertised_name(self) -> str:
        return self.rename or self.name


@dataclass(frozen=True, slots=True)
class ReplicatedResources:
    """NVIDIA's ReplicatedResources: the shape of both sharing.timeSlicing and sharing.mps."""

    rename_by_default: bool = False
    fail_requests_greater_than_one: bool = False
    resources: tuple[ReplicatedResource, ...] = ()

    def for_resource(self, name: str) -> ReplicatedResource | None:
        for resource in self.resources:
            if resource.name == name:
                return resource
        return None

    @property
    def replicated(self) -> bool:
        return any(r.replicas > 1 for r in self.resources)


# The name callers used before MPS shared the shape.
TimeSlicing = ReplicatedResources


@dataclass(frozen=True, slots=True)
class Sharing:
    """The config file's `sharing` section: time-slicing, or MPS (which wins when both are set,
    as in NVIDIA's plugin). A new sharing mode is one more ReplicatedResources field here."""

    time_slicing: ReplicatedResources = ReplicatedResources()
    mps: ReplicatedResources | None = None

    @property
    def strategy(self) -> SharingStrategy:
        if self.mps is not None and self.mps.replicated:
            return SharingStrategy.MPS
        if self.time_slicing.replicated:
            return SharingStrategy.TIME_SLICING
        return SharingStrategy.NONE

    @property
    def active(self) -> ReplicatedResources:
        """The replicated resources of the strategy in force (NVIDIA's ReplicatedResources())."""
        return self.mps if self.mps is not None else self.time_slicing


@dataclass(frozen=True, slots=True)
class Config:
    kubelet_socket: str = DEFAULT_KUBELET_SOCKET
    fail_on_init_error: bool = True
    mig_strategy: MigStrategy = MigStrategy.NONE
    pass_device_specs: bool = False
    device_list_strategy: tuple[DeviceListStrategy, ...] = (DeviceListStrategy.ENVVAR,)
    device_id_strategy: DeviceIdStrategy = DeviceIdStrategy.UUID
    cdi_annotation_prefix: str = DEFAULT_CDI_ANNOTATION_PREFIX
    nvidia_driver_root: str = "/"
    # Where device nodes live on the host; None means the driver root (NVIDIA's rule).
    dev_root: str | None = None
    # Where the driver root is mounted in this container (NVIDIA: for CDI specs and NVML).
    container_driver_root: str = DEFAULT_CONTAINER_DRIVER_ROOT
    # The nvidia-ctk (nvidia-cdi-hook) path written into generated CDI specs.
    nvidia_cdi_hook_path: str = DEFAULT_NVIDIA_CDI_HOOK_PATH
    # Where CDI specs are written (nvplugin's own setting).
    cdi_spec_dir: str = DEFAULT_CDI_SPEC_DIR
    # NVIDIA's --cdi-feature-flags and --cdi-disable-hooks, passed to CDI spec generation.
    cdi_feature_flags: tuple[str, ...] = ()
    cdi_disable_hooks: tuple[str, ...] = ()
    # Host directory for the MPS control daemon's pipes and logs; NVIDIA has no default and
    # refuses MPS sharing without it.
    mps_root: str | None = None
    # Allocate asks the container runtime for GPUDirect Storage, MOFED and GDRCopy support.
    gds_enabled: bool = False
    mofed_enabled: bool = False
    gdrcopy_enabled: bool = False
    # IMEX channels injected into every container given a device ([] or [0], as NVIDIA allows).
    imex_channel_ids: tuple[int, ...] = ()
    imex_required: bool = False
    device_discovery_strategy: DeviceDiscoveryStrategy = DeviceDiscoveryStrategy.AUTO
    config_file: str | None = None
    # Where /metrics, /healthz and /readyz are served; None: not served (--metrics-address off).
    metrics_address: ListenAddress | None = DEFAULT_METRICS_ADDRESS
    # Run on the fake NVML backend: a GPU count or a layout file. None: the real NVML.
    fake_gpus: str | None = None
    # GetPreferredAllocation over shared devices: spread over GPUs or fill one first.
    shared_devices_allocation_policy: AllocationPolicy = AllocationPolicy.DISTRIBUTED
    # GPU feature discovery (labels): label once and exit, omit the timestamp label, relabel
    # period (math.inf: label once and keep running, NVIDIA's "infinite").
    gfd_oneshot: bool = False
    gfd_no_timestamp: bool = False
    gfd_sleep_interval_s: float = DEFAULT_SLEEP_INTERVAL_S
    # NFD features.d file for the labels; None: none is written (GFD's default path is not
    # assumed: nvplugin writes node labels itself with --labels).
    gfd_output_file: str | None = None
    machine_type_file: str = DEFAULT_MACHINE_TYPE_FILE
    # GFD's NodeFeature API switch; recorded, and noted, as nvplugin writes labels itself.
    gfd_use_node_feature_api: bool = False
    # The config file's `sharing` section (file only: no flag or env sets it).
    sharing: Sharing = Sharing()
    # Node labels and Events through the Kubernetes API (off: the Kubernetes client is never
    # imported). The node's name comes from the downward API.
    labels: bool = False
    node_name: str | None = None
    kubeconfig: str | None = None
    # GFD's Kubernetes client settings and NodeFeature namespace / owner pod.
    kube_api_qps: float = 5.0
    kube_api_burst: int = 10
    namespace: str = "default"
    pod_name: str | None = None
    # Per-node configs: a directory of named config files, one picked by the node label
    # nvidia.com/device-plugin.config (NVIDIA's config-manager), else the default.
    config_dir: str | None = None
    default_config: str | None = None

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


# --- checks: each takes (where, typed value) and returns the value to keep or raises ConfigError


def check_text(where: str, value: str, max_bytes: int = MAX_PATH_BYTES) -> str:
    if "\0" in value:
        raise ConfigError(f"{where}: contains a NUL byte; expected plain text")
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > max_bytes:
        raise ConfigError(f"{where}: {size} bytes long; expected at most {max_bytes}")
    return value


def check_path(where: str, value: str) -> str:
    return check_text(where, value.strip())


def check_name(where: str, value: str) -> str:
    return check_text(where, value.strip(), MAX_NAME_LENGTH)


def check_socket_path(where: str, value: str) -> str:
    path = check_path(where, value)
    if path.endswith("/") or path.rpartition("/")[2] in (".", ".."):
        raise ConfigError(
            f"{where}: expected the path of the kubelet's socket file, got a directory {path!r}"
        )
    size = len(path.encode("utf-8", "surrogateescape"))
    if size > MAX_UNIX_SOCKET_PATH_BYTES:
        raise ConfigError(
            f"{where}: {size} bytes is longer than a unix socket allows ({MAX_UNIX_SOCKET_PATH_BYTES}); "
            "use a shorter --kubelet-socket path"
        )
    return path


_E = TypeVar("_E", bound=StrEnum)


def _choice(enum: type[_E]) -> Callable[[str, str], _E]:
    names = ", ".join(e.value for e in enum)

    def check(where: str, value: str) -> _E:
        try:
            return enum(value.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected one of {names}; got {value!r}") from None

    return check


def check_device_list_strategy(where: str, values: tuple[str, ...]) -> tuple[DeviceListStrategy, ...]:
    names = ", ".join(e.value for e in DeviceListStrategy)
    bad = [v for v in values if v not in {e.value for e in DeviceListStrategy}]
    if bad:
        raise ConfigError(f"{where}: expected one or more of {names}; got {', '.join(map(repr, bad))}")
    return tuple(dict.fromkeys(DeviceListStrategy(v) for v in values))


def check_words(where: str, values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(check_name(f"{where}[{i}]", v) for i, v in enumerate(values)))


def check_imex_channel_ids(where: str, ids: tuple[int, ...]) -> tuple[int, ...]:
    if ids not in ((), (0,)):
        raise ConfigError(
            f"{where}: expected no channels or channel 0 (NVIDIA supports [] and [0] only), got {list(ids)}"
        )
    return ids


def parse_fake_gpus(where: str, value: str) -> str:
    text = value.strip()
    if not text:
        raise ConfigError(
            f"{where}: expected a GPU count (0-{MAX_FAKE_GPUS}) or a layout file, got an empty value"
        )
    if text.lstrip("+-").isdecimal():  # a count: at most MAX_FAKE_GPUS, no sign
        digits = text.lstrip("0") or "0"
        if not (text.isascii() and text.isdigit() and len(digits) <= 2 and int(digits) <= MAX_FAKE_GPUS):
            raise ConfigError(f"{where}: expected a GPU count from 0 to {MAX_FAKE_GPUS}, got {text[:40]}")
    return check_path(where, text)


def check_rate(where: str, value: float) -> float:
    if not (math.isfinite(value) and 0 <= value <= MAX_KUBE_API_RATE):
        raise ConfigError(f"{where}: expected a number from 0 to {MAX_KUBE_API_RATE}, got {value}")
    return value


def check_burst(where: str, value: int) -> int:
    if not 0 <= value <= MAX_KUBE_API_RATE:
        raise ConfigError(f"{where}: expected a whole number from 0 to {MAX_KUBE_API_RATE}, got {value}")
    return value


def check_metrics_address(where: str, value: str) -> ListenAddress | None:
    try:
        return parse_listen_address(where, value)
    except AddressError as exc:
        raise ConfigError(str(exc)) from None


class Kind(Enum):
    """How a setting's text (flag, environment) and config-file value are read."""

    TEXT = "text"
    BOOL = "bool"  # strconv.ParseBool; a bare flag means true
    LIST = "list"  # comma-separated; a flag may be repeated
    DURATION = "duration"  # time.ParseDuration or "infinite", kept as seconds
    INTS = "ints"  # comma-separated strconv.ParseInt(s, 0, 64)
    NUMBER = "number"  # strconv.ParseFloat
    COUNT = "count"  # strconv.ParseInt(s, 0, 64)


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its Config field, NVIDIA's flag and environment names (the first is the one
    nvplugin shows), its v1 config-file keys (NVIDIA's first, then nvplugin's aliases), how it is
    read and checked."""

    field: str
    flags: tuple[str, ...]
    envs: tuple[str, ...]
    kind: Kind
    check: Callable[[str, Any], Any]
    help: str
    metavar: str | None = None
    file_keys: tuple[str, ...] = ()
    # Why an empty value is refused; None: an empty value means "not set" (NVIDIA's reading for
    # nearly every setting).
    refuse_empty: str | None = None

    @property
    def flag(self) -> str:
        return self.flags[0]

    @property
    def env(self) -> str | None:
        return self.envs[0] if self.envs else None

    @property
    def is_bool(self) -> bool:
        return self.kind is Kind.BOOL

    @property
    def flag_names(self) -> str:
        return "/".join(self.flags)


def _opt(
    field: str,
    flags: str,
    envs: str,
    kind: Kind,
    check: Callable[[str, Any], Any],
    help: str,
    metavar: str | None = None,
    file_keys: str = "",
    refuse_empty: str | None = None,
) -> Option:
    return Option(
        field,
        tuple(flags.split()),
        tuple(envs.split()),
        kind,
        check,
        help,
        metavar,
        tuple(file_keys.split()),
        refuse_empty,
    )


def _same(where: str, value: Any) -> Any:
    return value


OPTIONS: tuple[Option, ...] = (
    # --- the device plugin's flags (NVIDIA k8s-device-plugin v0.20)
    _opt("mig_strategy", "--mig-strategy", "MIG_STRATEGY GFD_MIG_STRATEGY", Kind.TEXT, _choice(MigStrategy),
         "how MIG devices are advertised: none, single or mixed", "STRATEGY", "flags.migStrategy"),
    _opt("fail_on_init_error", "--fail-on-init-error", "FAIL_ON_INIT_ERROR GFD_FAIL_ON_INIT_ERROR", Kind.BOOL, _same,
         "exit when NVML cannot be initialised (false: keep running with zero devices)", "BOOL",
         "flags.failOnInitError"),
    _opt("nvidia_driver_root", "--driver-root --nvidia-driver-root", "NVIDIA_DRIVER_ROOT", Kind.TEXT, check_path,
         "root of the NVIDIA driver installation on the host (/ or /run/nvidia/driver)", "PATH",
         "flags.nvidiaDriverRoot"),
    _opt("dev_root", "--dev-root --nvidia-dev-root", "NVIDIA_DEV_ROOT", Kind.TEXT, check_path,
         "root under which device nodes are found on the host (default: the driver root)", "PATH",
         "flags.nvidiaDevRoot"),
    _opt("pass_device_specs", "--pass-device-specs", "PASS_DEVICE_SPECS", Kind.BOOL, _same,
         "also return device nodes (DeviceSpecs) in Allocate", "BOOL", "flags.plugin.passDeviceSpecs"),
    _opt("device_list_strategy", "--device-list-strategy", "DEVICE_LIST_STRATEGY", Kind.LIST,
         check_device_list_strategy,
         "how Allocate passes devices to the container runtime: envvar, volume-mounts, cdi-annotations, "
         "cdi-cri (comma list)", "LIST", "flags.plugin.deviceListStrategy"),
    _opt("device_id_strategy", "--device-id-strategy", "DEVICE_ID_STRATEGY", Kind.TEXT, _choice(DeviceIdStrategy),
         "pass devices by uuid or by index", "STRATEGY", "flags.plugin.deviceIDStrategy"),
    _opt("gdrcopy_enabled", "--gdrcopy-enabled", "GDRCOPY_ENABLED", Kind.BOOL, _same,
         "start containers given a GPU with GDRCopy support (NVIDIA_GDRCOPY=enabled)", "BOOL",
         "flags.gdrcopyEnabled"),
    _opt("gds_enabled", "--gds-enabled", "GDS_ENABLED", Kind.BOOL, _same,
         "start containers given a GPU with GPUDirect Storage support (NVIDIA_GDS=enabled)", "BOOL",
         "flags.gdsEnabled"),
    _opt("mofed_enabled", "--mofed-enabled", "MOFED_ENABLED", Kind.BOOL, _same,
         "start containers given a GPU with MOFED support (NVIDIA_MOFED=enabled)", "BOOL", "flags.mofedEnabled"),
    _opt("cdi_annotation_prefix", "--cdi-annotation-prefix", "CDI_ANNOTATION_PREFIX", Kind.TEXT, check_name,
         "annotation prefix for the cdi-annotations strategy", "PREFIX", "flags.plugin.cdiAnnotationPrefix"),
    _opt("nvidia_cdi_hook_path", "--nvidia-cdi-hook-path --nvidia-ctk-path", "NVIDIA_CDI_HOOK_PATH NVIDIA_CTK_PATH",
         Kind.TEXT, check_path, "path of nvidia-cdi-hook / nvidia-ctk in generated CDI specs", "PATH",
         "flags.plugin.nvidiaCTKPath flags.plugin.nvidiaCDIHookPath"),
    _opt("container_driver_root", "--driver-root-ctr-path --container-driver-root",
         "DRIVER_ROOT_CTR_PATH CONTAINER_DRIVER_ROOT", Kind.TEXT, check_path,
         "where the driver root is mounted in this container", "PATH", "flags.plugin.containerDriverRoot"),
    _opt("mps_root", "--mps-root", "MPS_ROOT", Kind.TEXT, check_path,
         "host directory for MPS pipes and logs (required for sharing.mps)", "PATH", "flags.mpsRoot"),
    _opt("shared_devices_allocation_policy", "--shared-devices-allocation-policy",
         "SHARED_DEVICES_ALLOCATION_POLICY", Kind.TEXT, _choice(AllocationPolicy),
         "preferred allocation of shared devices: distributed (spread over GPUs) or packed", "POLICY",
         "flags.plugin.sharedDevicesAllocationPolicy"),
    _opt("device_discovery_strategy", "--device-discovery-strategy", "DEVICE_DISCOVERY_STRATEGY", Kind.TEXT,
         _choice(DeviceDiscoveryStrategy), "auto, nvml, tegra or vfio (nvplugin always uses NVML)",
         "STRATEGY", "flags.deviceDiscoveryStrategy"),
    _opt("imex_channel_ids", "--imex-channel-ids", "IMEX_CHANNEL_IDS", Kind.INTS, check_imex_channel_ids,
         "IMEX channels to inject into containers (only 0 is supported)", "IDS", "imex.channelIDs"),
    _opt("imex_required", "--imex-required", "IMEX_REQUIRED", Kind.BOOL, _same,
         "refuse to start when a requested IMEX channel is missing", "BOOL", "imex.required"),
    _opt("kubelet_socket", "--kubelet-socket", "KUBELET_SOCKET", Kind.TEXT, check_socket_path,
         "path of the kubelet's registration socket; plugin sockets are created beside it", "PATH",
         "flags.plugin.kubeletSocket",
         refuse_empty="expected the kubelet's socket path (an empty one - NVIDIA: do not register - is "
         "not supported: nvplugin always registers)"),
    _opt("config_file", "--config-file", "CONFIG_FILE GFD_CONFIG_FILE", Kind.TEXT, check_path,
         "NVIDIA-compatible v1 config file (YAML or JSON)", "FILE"),
    _opt("cdi_feature_flags", "--cdi-feature-flags", "CDI_FEATURE_FLAGS", Kind.LIST, check_words,
         "feature flags for CDI spec generation (comma list)", "LIST", "flags.plugin.cdiFeatureFlags"),
    _opt("cdi_disable_hooks", "--cdi-disable-hooks", "CDI_DISABLE_HOOKS", Kind.LIST, check_words,
         "OCI hooks left out of generated CDI specs (comma list; all: every hook)", "LIST",
         "flags.plugin.cdiDisableHooks"),
    _opt("cdi_spec_dir", "--cdi-spec-dir", "CDI_SPEC_DIR", Kind.TEXT, check_path,
         f"directory for generated CDI specs (default {DEFAULT_CDI_SPEC_DIR})", "DIR", "flags.plugin.cdiSpecDir"),
    # --- GPU feature discovery's flags
    _opt("gfd_oneshot", "--oneshot", "GFD_ONESHOT", Kind.BOOL, _same, "label the node once and exit the labeller",
         "BOOL", "flags.gfd.oneshot"),
    _opt("gfd_no_timestamp", "--no-timestamp", "GFD_NO_TIMESTAMP", Kind.BOOL, _same,
         "do not add the nvidia.com/gfd.timestamp label", "BOOL", "flags.gfd.noTimestamp"),
    _opt("gfd_sleep_interval_s", "--sleep-interval", "GFD_SLEEP_INTERVAL", Kind.DURATION, _same,
         "time between relabelling passes (a duration such as 60s; infinite: label once)", "DURATION",
         "flags.gfd.sleepInterval"),
    _opt("gfd_output_file", "--output-file --output -o", "GFD_OUTPUT_FILE", Kind.TEXT, check_path,
         "also write the labels to this NFD features.d file (default: no file)", "FILE", "flags.gfd.outputFile"),
    _opt("machine_type_file", "--machine-type-file", "GFD_MACHINE_TYPE_FILE MACHINE_TYPE_FILE", Kind.TEXT, check_path,
         "file holding the machine type for nvidia.com/gpu.machine (DMI product name)", "FILE",
         "flags.gfd.machineTypeFile"),
    _opt("gfd_use_node_feature_api", "--use-node-feature-api",
         "GFD_USE_NODE_FEATURE_API USE_NODE_FEATURE_API", Kind.BOOL, _same,
         "GFD: publish labels as an NFD NodeFeature (nvplugin writes node labels itself)", "BOOL",
         "flags.useNodeFeatureAPI"),
    _opt("kubeconfig", "--kubeconfig", "KUBECONFIG", Kind.TEXT, check_path,
         "kubeconfig to use outside a cluster (default: in-cluster config)", "FILE"),
    _opt("kube_api_qps", "--kube-api-qps", "KUBE_API_QPS", Kind.NUMBER, check_rate,
         "queries per second to the Kubernetes API server", "QPS"),
    _opt("kube_api_burst", "--kube-api-burst", "KUBE_API_BURST", Kind.COUNT, check_burst,
         "burst of queries to the Kubernetes API server", "BURST"),
    _opt("namespace", "--namespace", "NAMESPACE", Kind.TEXT, check_name, "namespace for GFD's NodeFeature objects", "NAME"),
    _opt("node_name", "--node-name", "NODE_NAME", Kind.TEXT, check_name, "this node's name (downward API)", "NAME"),
    _opt("pod_name", "--pod-name", "POD_NAME", Kind.TEXT, check_name, "this pod's name (downward API)", "NAME"),
    # --- nvplugin's own
    _opt("fake_gpus", "--fake-gpus", "NVPLUGIN_FAKE_GPUS", Kind.TEXT, parse_fake_gpus,
         "run on simulated GPUs instead of NVML: a count (e.g. 8) or a layout file", "N|FILE"),
    _opt("labels", "--labels", "NVPLUGIN_LABELS", Kind.BOOL, _same,
         "keep GPU facts as node labels and publish health Events (needs the node name and API access)", "BOOL"),
    _opt("config_dir", "--config-dir", "NVPLUGIN_CONFIG_DIR", Kind.TEXT, check_path,
         "directory of named configs, chosen per node by the label nvidia.com/device-plugin.config", "DIR"),
    _opt("default_config", "--default-config", "DEFAULT_CONFIG", Kind.TEXT, check_name,
         "config name used when the node has no nvidia.com/device-plugin.config label", "NAME"),
    _opt("metrics_address", "--metrics-address", "NVPLUGIN_METRICS_ADDRESS", Kind.TEXT, check_metrics_address,
         "serve /metrics, /healthz and /readyz on HOST:PORT (:PORT = every interface; off = not at all; "
         f"default {DEFAULT_METRICS_ADDRESS})", "HOST:PORT"),
)  # fmt: skip

_FIELDS = {f.name for f in fields(Config)}
OPTION_BY_FIELD: Mapping[str, Option] = {o.field: o for o in OPTIONS}
assert all(o.field in _FIELDS for o in OPTIONS), "OPTIONS names a field Config lacks"


# --- reading flag and environment text


def _split(raw: object) -> list[str]:
    items = raw if isinstance(raw, list | tuple) else [raw]
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def read_text(option: Option, where: str, raw: object) -> Any:
    """A flag's or environment variable's value, read as NVIDIA's Go code reads it, checked."""
    try:
        value = _typed_from_text(option.kind, raw)
    except gosyntax.GoSyntaxError as exc:
        raise ConfigError(f"{where}: {exc.message(raw)}") from None
    return option.check(where, value)


def _typed_from_text(kind: Kind, raw: object) -> Any:
    if kind is Kind.BOOL:
        return raw if isinstance(raw, bool) else gosyntax.parse_bool(str(raw))
    if kind is Kind.LIST:
        return tuple(_split(raw))
    if kind is Kind.INTS:
        return tuple(gosyntax.parse_int(part) for part in _split(raw))
    if kind is Kind.DURATION:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        return duration_seconds(gosyntax.parse_duration_ns(str(raw).strip()))
    if kind is Kind.NUMBER:
        text = str(raw).strip()
        if len(text) > gosyntax.MAX_NUMBER_TEXT:
            raise gosyntax.GoSyntaxError("expected a number such as 5 or 2.5")
        try:
            return float(text)
        except ValueError:
            raise gosyntax.GoSyntaxError("expected a number such as 5 or 2.5") from None
    if kind is Kind.COUNT:
        return (
            raw
            if isinstance(raw, int) and not isinstance(raw, bool)
            else gosyntax.parse_int(str(raw).strip())
        )
    return str(raw)


def duration_seconds(ns: int) -> float:
    return math.inf if ns == gosyntax.INFINITE_NS else ns / 1e9


def _is_empty(option: Option, raw: object) -> bool:
    """Nothing given: blank text, or (for a list) only commas and blanks."""
    if option.kind in (Kind.LIST, Kind.INTS) or isinstance(raw, list | tuple):
        return not _split(raw)
    return isinstance(raw, str) and not raw.strip()


# --- resolution


@dataclass(frozen=True, slots=True)
class Resolved:
    """The effective config and what the user should be told about it (one line each)."""

    config: Config
    notes: tuple[str, ...] = ()


def resolve_settings(
    flags: Mapping[str, object],
    env: Mapping[str, str],
    file_values: Mapping[str, object] | None = None,
    file_sources: Mapping[str, str] | None = None,
) -> Resolved:
    """The Config from flag values (by field name, None = not given), the environment and the
    checked values of a config file (by field name; `file_sources` names where each came from),
    highest precedence first, plus the notes to log."""
    file_values = file_values or {}
    changes: dict[str, Any] = {}
    sources: dict[str, str] = {}
    notes: list[str] = []
    for option in OPTIONS:
        found = _from_flag(option, flags) or _from_env(option, env, notes)
        if found is None and file_values.get(option.field) is not None:
            where = (file_sources or {}).get(option.field, f"config file: {option.field}")
            found = (file_values[option.field], where)
        if found is not None:
            changes[option.field], sources[option.field] = found
    # Settings only a config file can carry (already typed and checked by core.configfile).
    for name, value in file_values.items():
        if name not in OPTION_BY_FIELD and name in _FIELDS and value is not None:
            changes[name] = value
    config = Config(**changes)
    return _check_combination(config, sources, notes)


def resolve(
    flags: Mapping[str, object],
    env: Mapping[str, str],
    file_values: Mapping[str, object] | None = None,
    file_name: str = "config file",
) -> Config:
    """resolve_settings without the notes (file values by field name, already checked)."""
    sources = {name: f"{file_name}: {name}" for name in file_values or {}}
    return resolve_settings(flags, env, file_values, sources).config


def _from_flag(option: Option, flags: Mapping[str, object]) -> tuple[Any, str] | None:
    raw = flags.get(option.field)
    if raw is None:
        return None
    where = option.flag_names
    if _is_empty(option, raw):
        if option.refuse_empty:
            raise ConfigError(f"{where}: {option.refuse_empty}")
        if option.kind is not Kind.BOOL:
            return None
    return read_text(option, where, raw), where


def _from_env(option: Option, env: Mapping[str, str], notes: list[str]) -> tuple[Any, str] | None:
    present = [
        n for n in option.envs if n in env and (option.kind is Kind.BOOL or not _is_empty(option, env[n]))
    ]
    if not present:
        blank = next((name for name in option.envs if name in env), None)
        if blank is not None and option.refuse_empty:
            raise ConfigError(f"environment variable {blank}: {option.refuse_empty}")
        return None
    name = present[0]
    others = [n for n in present[1:] if env[n].strip() != env[name].strip()]
    if others:
        notes.append(
            f"environment variables {name}={env[name]!r} and "
            + ", ".join(f"{n}={env[n]!r}" for n in others)
            + f" disagree; {name} is used"
        )
    where = f"environment variable {name}"
    if option.kind is Kind.BOOL and env[name] == "":
        return False, where  # NVIDIA (urfave/cli): a set but empty boolean variable is false
    return read_text(option, where, env[name]), where


def _check_combination(config: Config, sources: Mapping[str, str], notes: list[str]) -> Resolved:
    def source(field: str, default: str) -> str:
        return sources.get(field, default)

    if config.sharing.strategy is SharingStrategy.MPS:
        if config.mig_strategy is MigStrategy.MIXED:
            raise ConfigError(
                f"sharing.mps cannot be used with mig-strategy mixed ({source('mig_strategy', 'mig strategy')}); "
                "NVIDIA refuses it too: use mig-strategy none, or time-slicing"
            )
        if config.mps_root is None:
            raise ConfigError(
                "sharing.mps needs the MPS root: set --mps-root, MPS_ROOT or flags.mpsRoot to a host "
                "directory for the MPS daemon's pipes and logs (NVIDIA's chart uses /run/nvidia/mps)"
            )
    if config.gfd_sleep_interval_s < MIN_SLEEP_INTERVAL_S:
        where = source("gfd_sleep_interval_s", "sleep interval")
        notes.append(
            f"{where}: {gosyntax.format_duration_ns(round(config.gfd_sleep_interval_s * 1e9))} is shorter "
            f"than {MIN_SLEEP_INTERVAL_S:g}s; labels are refreshed every {MIN_SLEEP_INTERVAL_S:g}s"
            + (
                " (a bare number there is nanoseconds, as NVIDIA reads it: write 60s)"
                if "flags.gfd" in where
                else ""
            )
        )
        config = replace(config, gfd_sleep_interval_s=MIN_SLEEP_INTERVAL_S)
    if config.device_discovery_strategy in (DeviceDiscoveryStrategy.TEGRA, DeviceDiscoveryStrategy.VFIO):
        notes.append(
            f"{source('device_discovery_strategy', 'device discovery strategy')}: "
            f"{config.device_discovery_strategy} cannot apply here: nvplugin discovers GPUs through NVML "
            "(as with nvml)"
        )
    if config.gfd_use_node_feature_api:
        notes.append(
            f"{source('gfd_use_node_feature_api', 'useNodeFeatureAPI')}: nvplugin does not create NFD "
            "NodeFeature objects; with --labels it writes the same labels to the Node itself"
        )
    if not config.device_list_strategy:
        notes.append(
            f"{source('device_list_strategy', 'device list strategy')}: no strategy is set, so Allocate "
            "passes no devices to the container runtime (as NVIDIA does)"
        )
    return Resolved(config, tuple(notes))
