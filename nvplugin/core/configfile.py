"""NVIDIA's v1 config file (YAML or JSON), checked and turned into Config field values.

Pure: the shell reads and decodes the file (nvplugin.configload); this module takes the decoded
document and the file's name. Every error names the file, the field path and what was
expected; unknown keys are errors. Keys NVIDIA's plugin reads but nvplugin has no use for are
accepted with a warning when they ask for nothing nvplugin would have to do, and refused when
they would change behaviour nvplugin does not have (MPS, GDS, MOFED, IMEX).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nvplugin.core.config import (
    OPTIONS,
    SHARED_SUFFIX,
    ConfigError,
    Option,
    ReplicatedResource,
    Sharing,
    TimeSlicing,
)

VERSION = "v1"
RESOURCE_PREFIX = "nvidia.com"
MAX_RESOURCE_NAME_LENGTH = 63
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """What a config file sets, by Config field name, and what the user should be told."""

    values: Mapping[str, object] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    # The `health:` section, checked (nvplugin's extension: see core/xid.parse_health_section).
    health: object = None


_OPTION = {o.field: o for o in OPTIONS}

# flags.<key> / flags.plugin.<key> / flags.gfd.<key> -> Config field.
_FLAG_FIELDS = {
    "migStrategy": "mig_strategy",
    "failOnInitError": "fail_on_init_error",
    "nvidiaDriverRoot": "nvidia_driver_root",
    "nvidiaDevRoot": "dev_root",
}
_PLUGIN_FIELDS = {
    "passDeviceSpecs": "pass_device_specs",
    "deviceListStrategy": "device_list_strategy",
    "deviceIDStrategy": "device_id_strategy",
    "cdiAnnotationPrefix": "cdi_annotation_prefix",
    "kubeletSocket": "kubelet_socket",
}
_GFD_FIELDS = {
    "oneshot": "gfd_oneshot",
    "noTimestamp": "gfd_no_timestamp",
    "sleepInterval": "gfd_sleep_interval_s",
}
# NVIDIA settings with nothing to do in nvplugin: accepted, with a warning that they are ignored.
_IGNORED_FLAGS = {
    "mpsRoot": "nvplugin does not run MPS",
    "restartOnDeviceUnhealthy": "nvplugin marks devices healthy again instead of restarting",
    "useNodeFeatureAPI": "nvplugin chooses how labels are written itself",
}
_IGNORED_PLUGIN = {
    "nvidiaCTKPath": "nvplugin does not generate CDI specs",
    "containerDriverRoot": "nvplugin does not generate CDI specs",
    "cdiFeatureFlags": "nvplugin does not generate CDI specs",
}
_IGNORED_GFD = {
    "outputFile": "nvplugin writes labels itself",
    "machineTypeFile": "nvplugin reads the machine type itself",
}
# NVIDIA features nvplugin lacks: false is fine, true is refused.
_UNSUPPORTED_BOOL_FLAGS = {
    "gdsEnabled": "GPUDirect Storage",
    "mofedEnabled": "MOFED",
    "gdrcopyEnabled": "GDRCopy",
}


class _Reader:
    def __init__(self, file_name: str) -> None:
        self.file = file_name
        self.values: dict[str, object] = {}
        self.warnings: list[str] = []

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {path}: {message}")

    def mapping(self, path: str, data: object) -> Mapping[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise self.error(path, f"expected a mapping, got {_describe(data)}")
        return data

    def keys(self, path: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        unknown = [str(k) for k in data if k not in allowed]
        if unknown:
            raise self.error(
                path,
                f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"expected some of {', '.join(allowed)}",
            )

    def boolean(self, path: str, raw: object) -> bool:
        if not isinstance(raw, bool):
            raise self.error(path, f"expected true or false, got {_describe(raw)}")
        return raw

    def text(self, path: str, raw: object) -> str:
        if not isinstance(raw, str):
            raise self.error(path, f"expected a string, got {_describe(raw)}")
        return raw

    def option(self, path: str, config_field: str, raw: object) -> None:
        """Check a flag value with the same parser as its flag and env variable."""
        option: Option = _OPTION[config_field]
        if option.is_bool:
            raw = self.boolean(path, raw)
        elif config_field == "device_list_strategy":
            if isinstance(raw, list):
                for i, item in enumerate(raw):
                    self.text(f"{path}[{i}]", item)
            else:
                self.text(path, raw)
        elif config_field != "gfd_sleep_interval_s":
            self.text(path, raw)
        self.values[config_field] = option.parse(f"{self.file}: {path}", raw)

    def section(
        self,
        path: str,
        data: object,
        fields_: Mapping[str, str],
        ignored: Mapping[str, str],
        extra: tuple[str, ...] = (),
    ) -> Mapping[str, Any]:
        section = self.mapping(path, data)
        self.keys(path, section, (*fields_, *ignored, *extra))
        for key, value in section.items():
            if value is None:
                continue  # NVIDIA's null: not set
            if key in fields_:
                self.option(f"{path}.{key}", fields_[key], value)
            elif key in ignored:
                self.warnings.append(f"{self.file}: {path}.{key} is ignored: {ignored[key]}")
        return section


def parse_config_file(data: object, file_name: str = "config file") -> ConfigFile:
    """The Config values a decoded v1 config file sets; ConfigError naming file and field."""
    reader = _Reader(file_name)
    if data is None:  # an empty file: NVIDIA reads it as an empty v1 config
        return ConfigFile()
    top = reader.mapping("(top level)", data)
    reader.keys("(top level)", top, ("version", "flags", "sharing", "resources", "imex", "health"))
    version = top.get("version")
    if version not in (None, "", VERSION):
        raise reader.error("version", f"unknown version {version!r}; expected {VERSION}")
    _read_flags(reader, top.get("flags"))
    _read_sharing(reader, top.get("sharing"))
    if top.get("resources"):
        reader.warnings.append(
            f"{file_name}: resources is ignored: custom resource names are not supported "
            "(NVIDIA's plugin ignores them too)"
        )
    _read_imex(reader, top.get("imex"))
    health = top.get("health")
    if health is not None:
        from nvplugin.core.xid import parse_health_section  # xid imports config: no cycle at import

        parse_health_section(health, f"{file_name}: health")  # a bad section fails like any field
    return ConfigFile(values=reader.values, warnings=tuple(reader.warnings), health=health)


def _read_flags(reader: _Reader, data: object) -> None:
    flags = reader.section(
        "flags",
        data,
        _FLAG_FIELDS,
        _IGNORED_FLAGS,
        extra=("plugin", "gfd", "deviceDiscoveryStrategy", *_UNSUPPORTED_BOOL_FLAGS),
    )
    for key, feature in _UNSUPPORTED_BOOL_FLAGS.items():
        if flags.get(key) is not None and reader.boolean(f"flags.{key}", flags[key]):
            raise reader.error(f"flags.{key}", f"{feature} is not supported by nvplugin; expected false")
    strategy = flags.get("deviceDiscoveryStrategy")
    path = "flags.deviceDiscoveryStrategy"
    if strategy is not None and reader.text(path, strategy) not in ("auto", "nvml"):
        raise reader.error(
            "flags.deviceDiscoveryStrategy",
            f"expected auto or nvml (nvplugin discovers devices through NVML only), got {strategy!r}",
        )
    reader.section("flags.plugin", flags.get("plugin"), _PLUGIN_FIELDS, _IGNORED_PLUGIN)
    reader.section("flags.gfd", flags.get("gfd"), _GFD_FIELDS, _IGNORED_GFD)


def _read_imex(reader: _Reader, data: object) -> None:
    imex = reader.mapping("imex", data)
    reader.keys("imex", imex, ("channelIDs", "required"))
    if imex.get("channelIDs") or imex.get("required"):
        raise reader.error(
            "imex", "IMEX channels are not supported by nvplugin; expected no channelIDs and required: false"
        )


def _read_sharing(reader: _Reader, data: object) -> None:
    sharing = reader.mapping("sharing", data)
    reader.keys("sharing", sharing, ("timeSlicing", "mps"))
    if sharing.get("mps") is not None:
        raise reader.error(
            "sharing.mps",
            "MPS sharing is not supported by nvplugin; use sharing.timeSlicing or remove sharing.mps",
        )
    if sharing.get("timeSlicing") is None:
        return
    reader.values["sharing"] = Sharing(time_slicing=_read_time_slicing(reader, sharing["timeSlicing"]))


def _read_time_slicing(reader: _Reader, data: object) -> TimeSlicing:
    path = "sharing.timeSlicing"
    section = reader.mapping(path, data)
    reader.keys(path, section, ("renameByDefault", "failRequestsGreaterThanOne", "resources"))
    rename_by_default = _optional(reader.boolean, f"{path}.renameByDefault", section, False)
    fail_greater = _optional(reader.boolean, f"{path}.failRequestsGreaterThanOne", section, False)
    items = section.get("resources")
    if not isinstance(items, list) or not items:
        raise reader.error(
            f"{path}.resources",
            "expected a non-empty list of resources to share, such as "
            "[{name: nvidia.com/gpu, replicas: 4}], got " + _describe(items),
        )
    resources: list[ReplicatedResource] = []
    for i, item in enumerate(items):
        resource = _read_replicated(reader, f"{path}.resources[{i}]", item, rename_by_default)
        if any(r.name == resource.name for r in resources):
            raise reader.error(
                f"{path}.resources[{i}].name", f"{resource.name} is listed more than once; expected it once"
            )
        resources.append(resource)
    return TimeSlicing(
        rename_by_default=rename_by_default,
        fail_requests_greater_than_one=fail_greater,
        resources=tuple(resources),
    )


def _read_replicated(reader: _Reader, path: str, data: object, rename_by_default: bool) -> ReplicatedResource:
    item = reader.mapping(path, data)
    reader.keys(path, item, ("name", "replicas", "rename", "devices"))
    if item.get("name") is None:
        raise reader.error(f"{path}.name", "expected a resource name such as nvidia.com/gpu, got nothing")
    name = resource_name(reader, f"{path}.name", item["name"])
    replicas = item.get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool):
        raise reader.error(f"{path}.replicas", f"expected a whole number >= 2, got {_describe(replicas)}")
    if replicas < 2:
        raise reader.error(f"{path}.replicas", f"must be >= 2, got {replicas}")
    if item.get("rename") not in (None, ""):
        resource_name(reader, f"{path}.rename", item["rename"])
        reader.warnings.append(
            f"{reader.file}: {path}.rename is ignored: only renameByDefault renames shared "
            "resources (NVIDIA's plugin ignores rename too)"
        )
    devices = item.get("devices", "all")
    _check_devices(reader, f"{path}.devices", devices)
    if devices != "all":
        reader.warnings.append(
            f"{reader.file}: {path}.devices is ignored: every device of {name} is shared "
            "(NVIDIA's plugin ignores devices too)"
        )
    return ReplicatedResource(
        name=name, replicas=replicas, rename=name + SHARED_SUFFIX if rename_by_default else None
    )


def _check_devices(reader: _Reader, path: str, devices: object) -> None:
    """NVIDIA's forms: "all", a count > 0, or a list of GPU indexes, MIG indexes and UUIDs."""
    if devices == "all":
        return
    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices <= 0:
            raise reader.error(path, f"a count of devices must be > 0, got {devices}")
        return
    if isinstance(devices, list):
        for i, ref in enumerate(devices):
            if isinstance(ref, int) and not isinstance(ref, bool) and ref >= 0:
                continue
            if isinstance(ref, str) and _DEVICE_REF.match(ref):
                continue
            raise reader.error(
                f"{path}[{i}]", f"expected a GPU index, a MIG index (0:1) or a GPU/MIG UUID, got {ref!r}"
            )
        return
    raise reader.error(path, f'expected "all", a device count or a list of devices, got {_describe(devices)}')


_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_DEVICE_REF = re.compile(rf"^(\d+|\d+:\d+|GPU-{_UUID}|MIG-{_UUID}|MIG-GPU-{_UUID}/\d+/\d+)$")


def resource_name(reader: _Reader, path: str, raw: object) -> str:
    """NVIDIA's NewResourceName: "gpu" means "nvidia.com/gpu"; at most 63 characters; the part
    after the prefix is a DNS subdomain."""
    name = reader.text(path, raw).strip()
    if not name.startswith(RESOURCE_PREFIX + "/"):
        name = f"{RESOURCE_PREFIX}/{name}"
    if len(name) > MAX_RESOURCE_NAME_LENGTH:
        raise reader.error(
            path, f"expected a resource name of at most {MAX_RESOURCE_NAME_LENGTH} characters, got {name!r}"
        )
    if not _DNS_SUBDOMAIN.match(name.partition("/")[2]):
        raise reader.error(
            path,
            f"expected a resource name such as nvidia.com/gpu (lower-case letters, digits, '-' and '.'), "
            f"got {raw!r}",
        )
    return name


def _optional(
    check: Callable[[str, object], bool], path: str, data: Mapping[str, Any], default: bool
) -> bool:
    value = data.get(path.rpartition(".")[2])
    return default if value is None else check(path, value)


def _describe(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return repr(value)
