"""NVIDIA's v1 config file, checked and turned into Config field values.

Pure: the document comes decoded (nvplugin.configload, read the way NVIDIA's Go YAML reader reads
it). What NVIDIA v0.20 accepts is accepted, with its meaning:

- Keys are matched the way Go's encoding/json matches struct fields: exactly, else ignoring
  case (a warning says so); inside sharing.timeSlicing / sharing.mps NVIDIA looks keys up
  exactly, so there case matters.
- A key NVIDIA does not know is ignored with a warning naming its path (NVIDIA ignores it
  silently); strict mode refuses it instead.
- Values are typed as Go reads them: a number given for a string setting becomes its text, a
  bare number for a duration is nanoseconds, a quoted "true" is not a boolean.
- Settings NVIDIA itself ignores (top-level `resources`, per-resource `rename` and `devices`)
  are ignored with a warning, as NVIDIA's plugin logs one.

nvplugin's own keys: `health` (the XID policy, core.xid) and flags.plugin.{kubeletSocket,
nvidiaCDIHookPath, cdiFeatureFlags, cdiDisableHooks, cdiSpecDir} (flags NVIDIA has no key for).
Every error names the file, the field path and what was expected.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nvplugin.core import gosyntax
from nvplugin.core.config import (
    MAX_REPLICAS,
    OPTIONS,
    SHARED_SUFFIX,
    Config,
    ConfigError,
    Kind,
    Option,
    ReplicatedResource,
    ReplicatedResources,
    Sharing,
    duration_seconds,
)
from nvplugin.core.xid import APPLICATION_XIDS, HealthPolicy, parse_health_section

VERSION = "v1"
RESOURCE_PREFIX = "nvidia.com"
MAX_RESOURCE_NAME_LENGTH = 63
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_TOP_KEYS = ("version", "flags", "resources", "sharing", "imex", "health")
_SHARING_KEYS = ("timeSlicing", "mps")
_REPLICATED_KEYS = ("renameByDefault", "failRequestsGreaterThanOne", "resources")
_RESOURCE_KEYS = ("name", "replicas", "rename", "devices")
MAX_WARNINGS = 50


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """What a config file sets, by Config field name, and what the user should be told."""

    values: Mapping[str, object] = field(default_factory=dict)
    # Where each value came from ("config.yaml: flags.migStrategy"), for later messages.
    sources: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    # Paths of keys NVIDIA would ignore (each also has a warning).
    unknown_keys: tuple[str, ...] = ()
    # The `health:` section, checked (nvplugin's extension: see core/xid.parse_health_section).
    health: object = None


def _file_sections() -> dict[str, dict[str, Option]]:
    """section path -> key -> option, from OPTIONS' file keys ("flags.plugin" -> ...)."""
    sections: dict[str, dict[str, Option]] = {}
    for option in OPTIONS:
        for path in option.file_keys:
            section, _, key = path.rpartition(".")
            sections.setdefault(section, {})[key] = option
    return sections


_SECTIONS = _file_sections()


class _Reader:
    def __init__(self, file_name: str, strict: bool) -> None:
        self.file = file_name
        self.strict = strict
        self.values: dict[str, object] = {}
        self.sources: dict[str, str] = {}
        self.warnings: list[str] = []
        self.unknown: list[str] = []

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {path}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{self.file}: {path}: {message}")

    def mapping(self, path: str, data: object) -> Mapping[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise self.error(path, f"expected a mapping, got {_describe(data)}")
        return data

    def fields(self, path: str, data: object, known: Sequence[str], fold: bool = True) -> dict[str, Any]:
        """The known keys of a mapping, as Go decodes a struct: by exact name, else (`fold`)
        ignoring case; in document order, so of two spellings the last wins. Unknown keys are
        ignored with a warning, or refused in strict mode."""
        section = self.mapping(path, data)
        folded = {k.lower(): k for k in known}
        found: dict[str, Any] = {}
        for raw_key, value in section.items():
            key = str(raw_key)  # decoded documents have text keys; a caller's dict may not
            if key in known:
                found[key] = value
            elif fold and key.lower() in folded:
                canonical = folded[key.lower()]
                self.warn(_join(path, key), f"read as {canonical} (NVIDIA matches these keys ignoring case)")
                found[canonical] = value
            else:
                self.unknown_key(path, key, known)
        return found

    def unknown_key(self, path: str, key: str, known: Sequence[str]) -> None:
        shown = key if len(key) <= 80 else key[:77] + "..."
        close = difflib.get_close_matches(shown, known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        expected = f"expected one of {', '.join(known)}"
        if self.strict:
            raise self.error(_join(path, shown), f"unknown key; {hint}{expected} (strict mode)")
        self.unknown.append(_join(path, shown))
        self.warn(_join(path, shown), f"unknown key, ignored (as NVIDIA ignores it); {hint}{expected}")

    def option(self, path: str, option: Option, raw: object) -> None:
        """A flag's value from the file, typed as Go reads it, checked like the flag."""
        if raw is None:
            return  # NVIDIA's null: not set
        if option.field in self.values and path != option.file_keys[0]:
            self.warn(path, f"ignored: {option.file_keys[0]} is set too and wins")
            return
        where = f"{self.file}: {path}"
        if isinstance(raw, str) and not raw.strip():
            if option.refuse_empty:
                raise self.error(path, option.refuse_empty)
            return  # an empty string: the default, as NVIDIA reads nearly every setting
        value = self.typed(path, option.kind, raw)
        self.values[option.field] = option.check(where, value)
        self.sources[option.field] = where

    def typed(self, path: str, kind: Kind, raw: object) -> Any:
        if kind is Kind.BOOL:
            return self.boolean(path, raw)
        if kind is Kind.LIST:
            if not isinstance(raw, list):
                return (self.text(path, raw),)
            return tuple(self.text(f"{path}[{i}]", item) for i, item in enumerate(raw))
        if kind is Kind.DURATION:
            return self.duration(path, raw)
        if kind is Kind.INTS:
            if not isinstance(raw, list):
                raise self.error(path, f"expected a list of whole numbers such as [0], got {_describe(raw)}")
            return tuple(self.whole(f"{path}[{i}]", item) for i, item in enumerate(raw))
        return go_string(self, path, raw)

    def boolean(self, path: str, raw: object) -> bool:
        if isinstance(raw, bool):
            return raw
        hint = " (quoted text is not a boolean to NVIDIA: write true or false without quotes)"
        raise self.error(
            path, f"expected true or false, got {_describe(raw)}" + (hint if isinstance(raw, str) else "")
        )

    def text(self, path: str, raw: object) -> str:
        if not isinstance(raw, str):
            raise self.error(path, f"expected a string, got {_describe(raw)}")
        return raw

    def whole(self, path: str, raw: object, what: str = "a whole number") -> int:
        """A Go int from JSON: a whole number (2.0 counts), within 64 bits."""
        if isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
            raw = int(raw)
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise self.error(path, f"expected {what}, got {_describe(raw)}")
        if not gosyntax.INT64_MIN <= raw <= gosyntax.INT64_MAX:
            raise self.error(path, f"expected {what} within the 64-bit range, got {raw}")
        return raw

    def duration(self, path: str, raw: object) -> float:
        """NVIDIA's Duration: a string in Go's syntax or "infinite", or a number of nanoseconds."""
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            if not (math.isfinite(raw) and abs(raw) <= gosyntax.INT64_MAX):
                out_of_range = gosyntax.GoSyntaxError(
                    gosyntax.EXPECTED_DURATION, "a number is nanoseconds: out of range"
                )
                raise self.error(path, out_of_range.message(raw))
            return duration_seconds(int(raw))  # nanoseconds, truncated as Go converts
        if not isinstance(raw, str):
            raise self.error(path, f"{gosyntax.EXPECTED_DURATION}, got {_describe(raw)}")
        try:
            return duration_seconds(gosyntax.parse_duration_ns(raw))
        except gosyntax.GoSyntaxError as exc:
            raise self.error(path, exc.message(raw)) from None


def go_string(reader: _Reader, path: str, raw: object) -> str:
    """A Go string setting from YAML: sigs.k8s.io/yaml turns numbers and booleans into text."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float):
        return gosyntax.format_float32(raw)
    raise reader.error(path, f"expected a string, got {_describe(raw)}")


def parse_config_file(data: object, file_name: str = "config file", *, strict: bool = False) -> ConfigFile:
    """The Config values a decoded v1 config file sets; ConfigError naming file and field.
    `strict`: refuse keys NVIDIA does not know instead of warning about them."""
    reader = _Reader(file_name, strict)
    if data is None:  # an empty file: NVIDIA reads it as an empty v1 config
        return ConfigFile()
    if not isinstance(data, dict):
        raise reader.error(
            "(top level)", f"expected a mapping of version, flags, sharing, ...; got {_describe(data)}"
        )
    top = reader.fields("(top level)", data, _TOP_KEYS)
    version = top.get("version")
    if version is not None and go_string(reader, "version", version) not in ("", VERSION):
        raise reader.error("version", f"unknown version {version!r}; expected {VERSION}")
    flags = _read_section(reader, "flags", top.get("flags"), extra=("plugin", "gfd"))
    _read_section(reader, "flags.plugin", flags.get("plugin"))
    _read_section(reader, "flags.gfd", flags.get("gfd"))
    _read_section(reader, "imex", top.get("imex"))
    _read_sharing(reader, top.get("sharing"))
    if top.get("resources"):
        reader.warn(
            "resources", "ignored: custom resource names are not supported (NVIDIA's plugin ignores them too)"
        )
    health = top.get("health")
    if health is not None:
        _check_health(reader, health)
    warnings = reader.warnings
    if len(warnings) > MAX_WARNINGS:  # a file of 10,000 unknown keys must not flood the log
        warnings = [
            *warnings[:MAX_WARNINGS],
            f"{file_name}: {len(warnings) - MAX_WARNINGS} more warnings not shown",
        ]
    return ConfigFile(
        values=reader.values,
        sources=reader.sources,
        warnings=tuple(warnings),
        unknown_keys=tuple(reader.unknown),
        health=health,
    )


def _read_section(reader: _Reader, path: str, data: object, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings of one flags section; returns its keys (sub-sections among them)."""
    options = _SECTIONS[path]
    found = reader.fields(path, data, (*options, *extra))
    for key, value in found.items():
        if key in options:
            reader.option(f"{path}.{key}", options[key], value)
    return found


def _check_health(reader: _Reader, health: object) -> None:
    try:
        parse_health_section(health, f"{reader.file}: health")
    except ConfigError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. an XID of 5000 digits
        raise reader.error("health", f"not a valid health section: {exc}") from None


def _read_sharing(reader: _Reader, data: object) -> None:
    sharing = reader.fields("sharing", data, _SHARING_KEYS)
    time_slicing = mps = None
    if sharing.get("timeSlicing") is not None:
        time_slicing = _read_replicated(
            reader, "sharing.timeSlicing", sharing["timeSlicing"], fail_default=False
        )
    if sharing.get("mps") is not None:
        # NVIDIA refuses requests for more than one MPS replica unless told otherwise.
        mps = _read_replicated(reader, "sharing.mps", sharing["mps"], fail_default=True)
    if time_slicing is not None and mps is not None:
        reader.warn(
            "sharing.timeSlicing",
            "ignored: sharing.mps is set too; the two are mutually exclusive and NVIDIA's plugin uses MPS",
        )
    if mps is not None:
        reader.values["sharing"] = Sharing(mps=mps)
    elif time_slicing is not None:
        reader.values["sharing"] = Sharing(time_slicing=time_slicing)


def _read_replicated(reader: _Reader, path: str, data: object, fail_default: bool) -> ReplicatedResources:
    section = reader.fields(path, data, _REPLICATED_KEYS, fold=False)
    rename_by_default = _optional_bool(reader, f"{path}.renameByDefault", section, False)
    fail_greater = _optional_bool(reader, f"{path}.failRequestsGreaterThanOne", section, fail_default)
    items = section.get("resources")
    if not isinstance(items, list) or not items:
        raise reader.error(
            f"{path}.resources",
            "expected a non-empty list of resources to share, such as "
            "[{name: nvidia.com/gpu, replicas: 4}], got " + _describe(items),
        )
    resources: dict[str, ReplicatedResource] = {}
    for i, item in enumerate(items):
        resource = _read_resource(reader, f"{path}.resources[{i}]", item, rename_by_default)
        earlier = resources.get(resource.name)
        if earlier is not None:
            reader.warn(
                f"{path}.resources[{i}].name",
                f"{resource.name} is listed more than once; its largest replica count is used "
                "(what NVIDIA's plugin ends up advertising)",
            )
            resource = max(earlier, resource, key=lambda r: r.replicas)
        resources[resource.name] = resource
    return ReplicatedResources(
        rename_by_default=rename_by_default,
        fail_requests_greater_than_one=fail_greater,
        resources=tuple(resources.values()),
    )


def _read_resource(reader: _Reader, path: str, data: object, rename_by_default: bool) -> ReplicatedResource:
    item = reader.fields(path, data, _RESOURCE_KEYS, fold=False)
    if item.get("name") is None:
        raise reader.error(f"{path}.name", "expected a resource name such as nvidia.com/gpu, got nothing")
    name = resource_name(reader, f"{path}.name", item["name"])
    if item.get("replicas") is None:
        raise reader.error(
            f"{path}.replicas", f"expected a whole number from 2 to {MAX_REPLICAS}, got nothing"
        )
    replicas = reader.whole(f"{path}.replicas", item["replicas"], f"a whole number from 2 to {MAX_REPLICAS}")
    if replicas < 2:
        raise reader.error(f"{path}.replicas", f"must be >= 2, got {replicas}")
    if replicas > MAX_REPLICAS:
        raise reader.error(
            f"{path}.replicas", f"must be at most {MAX_REPLICAS} (nvplugin's bound), got {replicas}"
        )
    rename = item.get("rename")
    default_rename = name + SHARED_SUFFIX
    if rename not in (None, ""):
        renamed = resource_name(reader, f"{path}.rename", rename)
        if renamed != (default_rename if rename_by_default else None):
            reader.warn(
                f"{path}.rename",
                "ignored: only renameByDefault renames shared resources (NVIDIA's plugin ignores rename too)",
            )
    devices = item.get("devices", "all")
    _check_devices(reader, f"{path}.devices", devices)
    if devices != "all":
        reader.warn(
            f"{path}.devices",
            f"ignored: every device of {name} is shared (NVIDIA's plugin ignores devices too)",
        )
    return ReplicatedResource(
        name=name, replicas=replicas, rename=default_rename if rename_by_default else None
    )


def _check_devices(reader: _Reader, path: str, devices: object) -> None:
    """NVIDIA's forms: "all", a count > 0, or a list of GPU indexes, MIG indexes and UUIDs."""
    if devices == "all":
        return
    if isinstance(devices, int | float) and not isinstance(devices, bool):
        count = reader.whole(path, devices, "a device count")
        if count <= 0:
            raise reader.error(path, f"a count of devices must be > 0, got {count}")
        return
    if isinstance(devices, list):
        for i, ref in enumerate(devices):
            if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < 1 << 64:
                continue
            if isinstance(ref, str) and _is_device_ref(ref):
                continue
            raise reader.error(
                f"{path}[{i}]", f"expected a GPU index, a MIG index (0:1) or a GPU/MIG UUID, got {ref!r}"
            )
        return
    raise reader.error(path, f'expected "all", a device count or a list of devices, got {_describe(devices)}')


_UINT = re.compile(r"^[0-9]{1,20}$")
# google/uuid.Parse: the 36-character form, 32 hex digits, {...} and urn:uuid:...
_GO_UUID = re.compile(
    r"^(?:urn:uuid:)?(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}|[0-9a-fA-F]{32})$"
)


def _is_device_ref(ref: str) -> bool:
    if _UINT.match(ref):
        return True
    index, colon, sub = ref.partition(":")
    if colon and _UINT.match(index) and _UINT.match(sub):
        return True
    if ref.startswith("GPU-"):
        return bool(_GO_UUID.match(ref[4:]))
    if ref.startswith("MIG-"):
        rest = ref[4:]
        if _GO_UUID.match(rest):
            return True
        parts = rest.split("/")
        return (
            len(parts) == 3
            and parts[0].startswith("GPU-")
            and bool(_GO_UUID.match(parts[0][4:]))
            and all(_UINT.match(p) for p in parts[1:])
        )
    return False


def resource_name(reader: _Reader, path: str, raw: object) -> str:
    """NVIDIA's NewResourceName: "gpu" means "nvidia.com/gpu"; at most 63 characters; the part
    after the prefix is a DNS subdomain."""
    name = reader.text(path, raw).strip()
    if not name.startswith(RESOURCE_PREFIX + "/"):
        name = f"{RESOURCE_PREFIX}/{name}"
    if len(name) > MAX_RESOURCE_NAME_LENGTH:
        raise reader.error(
            path,
            f"expected a resource name of at most {MAX_RESOURCE_NAME_LENGTH} characters, got {name[:100]!r}",
        )
    if not _DNS_SUBDOMAIN.match(name.partition("/")[2]):
        raise reader.error(
            path,
            f"expected a resource name such as nvidia.com/gpu (lower-case letters, digits, '-' and '.'), "
            f"got {raw!r}",
        )
    return name


def _optional_bool(reader: _Reader, path: str, data: Mapping[str, Any], default: bool) -> bool:
    value = data.get(path.rpartition(".")[2])
    return default if value is None else reader.boolean(path, value)


def _join(path: str, key: str) -> str:
    return key if path == "(top level)" else f"{path}.{key}"


def _describe(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- the effective config, written back in NVIDIA's v1 format


def effective_document(config: Config, health: HealthPolicy) -> dict[str, Any]:
    """The config as a v1 document (NVIDIA's camelCase keys, its "Running with config" shape,
    plus nvplugin's `health` and extension keys). Reading it back gives the same config, except
    for settings without a file key (see flag_only_settings)."""
    sections: dict[str, dict[str, Any]] = {"flags": {}, "flags.plugin": {}, "flags.gfd": {}, "imex": {}}
    for option in OPTIONS:
        if not option.file_keys:
            continue
        value = config.device_root if option.field == "dev_root" else getattr(config, option.field)
        if value is None:
            continue
        section, _, key = option.file_keys[0].rpartition(".")
        sections[section][key] = _v1_value(option.kind, value)
    flags = {**sections["flags"], "plugin": sections["flags.plugin"], "gfd": sections["flags.gfd"]}
    document: dict[str, Any] = {"version": VERSION, "flags": flags}
    sharing = config.sharing
    if sharing.mps is not None:
        document["sharing"] = {"mps": _v1_replicated(sharing.mps)}
    elif sharing.time_slicing.resources:
        document["sharing"] = {"timeSlicing": _v1_replicated(sharing.time_slicing)}
    document["imex"] = sections["imex"]
    document["health"] = _v1_health(health)
    return document


def flag_only_settings(config: Config) -> dict[str, str]:
    """Settings a config file cannot carry that differ from their defaults, by flag name."""
    default = Config()
    shown: dict[str, str] = {}
    for option in OPTIONS:
        value = getattr(config, option.field)
        if not option.file_keys and value != getattr(default, option.field):
            if isinstance(value, bool):
                shown[option.flag] = "true" if value else "false"
            else:
                shown[option.flag] = "off" if value is None else str(value)
    return shown


def _v1_value(kind: Kind, value: Any) -> Any:
    if kind is Kind.DURATION:
        return gosyntax.format_duration_ns(gosyntax.INFINITE_NS if math.isinf(value) else round(value * 1e9))
    if isinstance(value, tuple):
        return [str(v) if isinstance(v, str) else v for v in value]
    return str(value) if isinstance(value, str) else value


def _v1_replicated(replicated: ReplicatedResources) -> dict[str, Any]:
    return {
        "renameByDefault": replicated.rename_by_default,
        "failRequestsGreaterThanOne": replicated.fail_requests_greater_than_one,
        "resources": [{"name": r.name, "replicas": r.replicas} for r in replicated.resources],
    }


def _v1_health(policy: HealthPolicy) -> dict[str, Any]:
    """The `health:` section that gives this policy (durations in the section's own syntax)."""
    recovery = policy.recovery
    return {
        "disabled": policy.all_disabled,
        "ignoredXids": sorted(policy.ignored_xids - APPLICATION_XIDS),
        "checkedXids": "all" if policy.check_all else sorted(policy.checked_xids),
        "xidActions": {str(xid): action.value for xid, action in sorted(policy.xid_actions.items())},
        "recovery": {
            "enabled": recovery.enabled,
            "quietPeriod": f"{recovery.quiet_period_s:g}s",
            "probeInterval": f"{recovery.probe_interval_s:g}s",
        },
    }
