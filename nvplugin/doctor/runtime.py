"""The container runtime's NVIDIA configuration (containerd, CRI-O) and the CDI specs.

containerd's configuration is read as containerd reads it: the main file, then every file its
`imports` name, in order. containerd 2.x (config version 3) merges imports key by key;
containerd 1.x (versions 1 and 2) replaces a whole `plugins.<name>` table with an imported one,
a classic way to lose the nvidia runtime, so that is modelled too. TOML is parsed with tomllib.
"""

from __future__ import annotations

import glob
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nvplugin.core.allocation import CDI_DEVICE_KIND, CDI_STRATEGIES
from nvplugin.core.config import Config
from nvplugin.core.resources import Resource
from nvplugin.doctor.hostfs import HostFs
from nvplugin.doctor.result import FAIL, PASS, SKIP, WARN, CheckResult

# Main containerd configs: the usual one, Talos's CRI config, k3s's and RKE2's generated ones.
CONTAINERD_CONFIGS = (
    "/etc/containerd/config.toml",
    "/etc/cri/containerd.toml",
    "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
    "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
)
# Drop-ins, read only when imported (containerd 2.2+ imports them by default, and
# `nvidia-ctk runtime configure` writes 99-nvidia.toml there). Talos merges its
# /etc/cri/conf.d/*.part into cri.toml, which its /etc/cri/containerd.toml imports.
CONTAINERD_DROP_INS = "/etc/containerd/conf.d/*.toml"
CRIO_CONFIG = "/etc/crio/crio.conf"
CRIO_DROP_IN_GLOB = "/etc/crio/crio.conf.d/*.conf"
NVIDIA_OCI_HOOK = "/usr/share/containers/oci/hooks.d/oci-nvidia-hook.json"
# The CRI plugin's table per config version, and where its runtimes live.
CRI_PLUGIN = {1: "cri", 2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
DEFAULT_CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
NVIDIA_RUNTIME = "nvidia"
NVIDIA_BINARY = "nvidia-container-runtime"


@dataclass(frozen=True, slots=True)
class RuntimeFacts:
    """One container engine's effective configuration, as far as NVIDIA is concerned."""

    engine: str  # "containerd" or "cri-o"
    # Host paths read, in merge order; problems reading or parsing them.
    files: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    # Drop-ins found but not imported (containerd ignores them).
    ignored: tuple[str, ...] = ()
    version: int = 2
    # Runtime handler name -> the binary it runs ("" when not set).
    runtimes: Mapping[str, str] = field(default_factory=dict)
    default_runtime: str | None = None
    # containerd's enable_cdi as configured (None: not set, the version's default applies).
    enable_cdi: bool | None = None
    cdi_spec_dirs: tuple[str, ...] = DEFAULT_CDI_DIRS
    # CRI-O: the NVIDIA OCI hook (the toolkit's older integration) is installed.
    oci_hook: bool = False

    @property
    def nvidia_runtimes(self) -> tuple[str, ...]:
        return tuple(
            name
            for name, binary in self.runtimes.items()
            if name == NVIDIA_RUNTIME or NVIDIA_BINARY in binary
        )

    @property
    def nvidia_is_default(self) -> bool:
        return self.default_runtime is not None and self.default_runtime in self.nvidia_runtimes

    @property
    def cdi_enabled(self) -> bool:
        """containerd 1.7 has CDI off unless enabled; 2.x and CRI-O have it on."""
        if self.engine == "cri-o":
            return True
        return self.enable_cdi if self.enable_cdi is not None else self.version >= 3


def _load_toml(host: HostFs, path: str, problems: list[str]) -> dict[str, Any] | None:
    try:
        return tomllib.loads(host.read_text(path))
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror or exc}")
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{path}: not valid TOML: {exc}")
    return None


def _glob(host: HostFs, pattern: str) -> list[str]:
    """Host paths matching a glob on the host (only the last component may have wildcards)."""
    directory, _, name = pattern.rpartition("/")
    root = host.path(directory or "/")
    return sorted(
        f"{directory}/{os.path.basename(p)}" for p in glob.glob(os.path.join(glob.escape(str(root)), name))
    )


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def merge_import(base: Mapping[str, Any], imported: Mapping[str, Any], version: int) -> dict[str, Any]:
    """containerd's merge of one imported file: key by key from 2.x (version 3) on; before,
    each table under `plugins` in the import replaces the main file's whole table."""
    if version >= 3:
        return deep_merge(base, imported)
    plugins = dict(base.get("plugins") or {})
    plugins.update(imported.get("plugins") or {})
    merged = deep_merge(
        {k: v for k, v in base.items() if k != "plugins"},
        {k: v for k, v in imported.items() if k != "plugins"},
    )
    if plugins:
        merged["plugins"] = plugins
    return merged


def _get(tree: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, Mapping):
            return None
        tree = tree.get(key)  # type: ignore[assignment]
    return tree


def _table(tree: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    """The table at `keys`; {} when absent or not a table (a malformed file hides nothing else)."""
    found = _get(tree, *keys)
    return found if isinstance(found, Mapping) else {}


def _version(data: Mapping[str, Any], default: int, path: str, problems: list[str]) -> int:
    raw = data.get("version", default)
    if isinstance(raw, int) and raw in CRI_PLUGIN:
        return raw
    problems.append(f"{path}: version = {raw!r} is not a containerd config version (1, 2 or 3)")
    return default


def read_containerd(host: HostFs) -> RuntimeFacts | None:
    """The first containerd config found, with its imports; None when there is none."""
    main = next((p for p in CONTAINERD_CONFIGS if host.file_kind(p) == "file"), None)
    drop_ins = _glob(host, CONTAINERD_DROP_INS)
    if main is None and not drop_ins:
        return None
    problems: list[str] = []
    config = (_load_toml(host, main, problems) if main else None) or {}
    version = _version(config, 3 if main is None else 1, main or "", problems)
    imports = config.get("imports")
    if main is None:
        # No main file: containerd 2.2+ imports /etc/containerd/conf.d/*.toml by default.
        imports = [CONTAINERD_DROP_INS]
    files = [main] if main else []
    imported: list[str] = []
    for pattern in imports if isinstance(imports, list) else []:
        base = os.path.dirname(main) if main else "/etc/containerd"
        pattern = pattern if str(pattern).startswith("/") else f"{base}/{pattern}"
        imported += _glob(host, pattern) if any(c in pattern for c in "*?[") else [pattern]
    for path in imported:
        data = _load_toml(host, path, problems)
        if data is not None:
            files.append(path)
            version = max(version, _version(data, version, path, problems))
            config = merge_import(config, data, version)
    cri = _table(config, "plugins", CRI_PLUGIN[version])
    runtimes = {
        str(name): str(_get(spec, "options", "BinaryName") or _get(spec, "options", "Runtime") or "")
        for name, spec in _table(cri, "containerd", "runtimes").items()
    }
    dirs = cri.get("cdi_spec_dirs")
    return RuntimeFacts(
        engine="containerd",
        files=tuple(files),
        problems=tuple(problems),
        ignored=tuple(p for p in drop_ins if p not in imported),
        version=version,
        runtimes=runtimes,
        default_runtime=_get(cri, "containerd", "default_runtime_name") or "runc",
        enable_cdi=cri.get("enable_cdi") if isinstance(cri.get("enable_cdi"), bool) else None,
        cdi_spec_dirs=tuple(str(d) for d in dirs) if isinstance(dirs, list) else DEFAULT_CDI_DIRS,
    )


def read_crio(host: HostFs) -> RuntimeFacts | None:
    """CRI-O's crio.conf and its drop-ins (later files override); None when there is none."""
    files = [p for p in (CRIO_CONFIG, *_glob(host, CRIO_DROP_IN_GLOB)) if host.file_kind(p) == "file"]
    hook = host.file_kind(NVIDIA_OCI_HOOK) == "file"
    if not files and not hook:
        return None
    problems: list[str] = []
    config: dict[str, Any] = {}
    for path in files:
        data = _load_toml(host, path, problems)
        if data is not None:
            config = deep_merge(config, data)
    runtime = _table(config, "crio", "runtime")
    runtimes = {str(n): str(_get(s, "runtime_path") or "") for n, s in _table(runtime, "runtimes").items()}
    dirs = runtime.get("cdi_spec_dirs")
    return RuntimeFacts(
        engine="cri-o",
        files=tuple(files),
        problems=tuple(problems),
        runtimes=runtimes,
        default_runtime=runtime.get("default_runtime") or "crun",
        cdi_spec_dirs=tuple(str(d) for d in dirs) if isinstance(dirs, list) else DEFAULT_CDI_DIRS,
        oci_hook=hook,
    )


def check_container_runtime(engines: Sequence[RuntimeFacts], talos: bool) -> CheckResult:
    name = "container-runtime"
    configure = (
        "install the NVIDIA container toolkit extension (nvidia-container-toolkit-production or -lts) "
        "in the node's Talos schematic and upgrade the node"
        if talos
        else "install the NVIDIA container toolkit, then: nvidia-ctk runtime configure --runtime=containerd "
        "--set-as-default && systemctl restart containerd (CRI-O: --runtime=crio, systemctl restart crio)"
    )
    if not engines:
        return CheckResult(
            name,
            WARN,
            "no containerd or CRI-O configuration found",
            (f"looked for {', '.join((*CONTAINERD_CONFIGS, CRIO_CONFIG))}",),
            "if this is a pod, mount the host's / and pass --host-root; a containerd without a config "
            f"file has no nvidia runtime: {configure}",
        )
    details: list[str] = []
    verdicts: list[tuple[str, str]] = []
    for engine in engines:
        details.append(f"{engine.engine}: read {', '.join(engine.files) or 'no config file'}")
        details.extend(f"{engine.engine}: {p}" for p in engine.problems)
        details.extend(f"{engine.engine}: {p} is not imported: containerd ignores it" for p in engine.ignored)
        runtimes = ", ".join(f"{n} ({b or 'default binary'})" for n, b in engine.runtimes.items())
        details.append(
            f"{engine.engine}: runtimes {runtimes or 'none configured'}; default {engine.default_runtime}"
        )
        if engine.nvidia_is_default:
            verdicts.append((PASS, f"{engine.engine}: the nvidia runtime is the default"))
        elif engine.nvidia_runtimes:
            verdicts.append(
                (
                    PASS,
                    f"{engine.engine}: runtime handler {engine.nvidia_runtimes[0]} configured, not the default: "
                    "GPU pods and the agent need runtimeClassName (see runtime-class)",
                )
            )
        elif engine.oci_hook:
            verdicts.append((PASS, f"{engine.engine}: the NVIDIA OCI hook is installed"))
        else:
            verdicts.append((FAIL, f"{engine.engine}: no nvidia runtime configured"))
    failed = [v for v in verdicts if v[0] == FAIL]
    problems = any(e.problems or e.ignored for e in engines)
    summary = "; ".join(text for _, text in verdicts)
    if failed:
        return CheckResult(name, FAIL, summary, tuple(details), configure)
    if problems:
        return CheckResult(
            name,
            WARN,
            summary + "; some configuration is unreadable or not imported",
            tuple(details),
            "fix or import the files named above, then restart the container runtime",
        )
    return CheckResult(name, PASS, summary, tuple(details))


# --- CDI


@dataclass(frozen=True, slots=True)
class CdiSpec:
    path: str
    kind: str
    devices: frozenset[str]


@dataclass(frozen=True, slots=True)
class CdiFacts:
    dirs: tuple[str, ...]
    specs: tuple[CdiSpec, ...] = ()
    problems: tuple[str, ...] = ()


def read_cdi(host: HostFs, dirs: Sequence[str]) -> CdiFacts:
    specs, problems = [], []
    for directory in dict.fromkeys(dirs):
        for entry in host.listdir(directory):
            if not entry.endswith((".json", ".yaml", ".yml")):
                continue
            path = f"{directory.rstrip('/')}/{entry}"
            try:
                text = host.read_text(path)
                data = json.loads(text) if entry.endswith(".json") else _yaml(text)
            except (OSError, ValueError) as exc:
                problems.append(f"{path}: unreadable: {exc}")
                continue
            if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
                problems.append(f"{path}: not a CDI spec (no kind)")
                continue
            names = frozenset(
                str(d["name"]) for d in data.get("devices") or () if isinstance(d, dict) and "name" in d
            )
            specs.append(CdiSpec(path, data["kind"], names))
    return CdiFacts(tuple(dirs), tuple(specs), tuple(problems))


def _yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from None


def cdi_device_names(resources: Sequence[Resource], id_strategy: str) -> tuple[str, ...]:
    """The CDI device names the agent's allocations ask for: a UUID or NVIDIA index per device."""
    ids = (d.index if id_strategy == "index" else d.uuid for r in resources for d in r.devices)
    return tuple(dict.fromkeys(ids))


def check_cdi(
    facts: CdiFacts,
    config: Config,
    wanted: Sequence[str] | None,
    engines: Sequence[RuntimeFacts],
) -> CheckResult:
    """`wanted`: the device names allocations will use; None when the GPUs are unknown."""
    name = "cdi-spec"
    strategies = [s for s in config.device_list_strategy if s in CDI_STRATEGIES]
    ours = [s for s in facts.specs if s.kind == CDI_DEVICE_KIND]
    details = [f"{s.path}: kind {s.kind}, {len(s.devices)} device(s)" for s in facts.specs]
    details += list(facts.problems)
    if not strategies:
        return CheckResult(
            name,
            SKIP,
            f"device-list strategy {','.join(config.device_list_strategy)} does not use CDI",
            tuple(details),
        )
    strategy = (
        "--device-name-strategy=index"
        if config.device_id_strategy == "index"
        else "--device-name-strategy=uuid"
    )
    generate = (
        f"nvidia-ctk cdi generate --vendor=k8s.device-plugin.nvidia.com --class=gpu {strategy} "
        "--output=/var/run/cdi/k8s.device-plugin.nvidia.com-gpu.yaml (again whenever the GPUs or "
        "MIG devices change)"
    )
    containerd_off = [e for e in engines if e.engine == "containerd" and not e.cdi_enabled]
    if containerd_off:
        table = CRI_PLUGIN[containerd_off[0].version]
        return CheckResult(
            name,
            FAIL,
            f"device-list strategy {','.join(strategies)} needs CDI, but containerd's CDI support is off",
            tuple(details),
            f'set enable_cdi = true in [plugins."{table}"] of the containerd config and restart containerd',
        )
    if not ours:
        found = sorted({s.kind for s in facts.specs})
        return CheckResult(
            name,
            FAIL,
            f"no CDI spec of kind {CDI_DEVICE_KIND} in {', '.join(facts.dirs)}"
            + (
                f" (found only {', '.join(found)}, which the agent's device names do not refer to)"
                if found
                else ""
            ),
            tuple(details),
            generate,
        )
    if wanted is None:
        return CheckResult(
            name,
            WARN,
            f"{len(ours)} spec(s) of kind {CDI_DEVICE_KIND} found; the GPUs are unknown (see nvml), so they "
            "cannot be compared",
            tuple(details),
        )
    have = frozenset().union(*(s.devices for s in ours))
    missing = [w for w in wanted if w not in have]
    if missing:
        return CheckResult(
            name,
            FAIL,
            f"the CDI spec lacks {len(missing)} of the {len(wanted)} device(s) the agent hands out: "
            + ", ".join(missing[:8])
            + (" ..." if len(missing) > 8 else ""),
            tuple(details),
            f"regenerate it for this node's GPUs: {generate}",
        )
    return CheckResult(
        name,
        PASS,
        f"every one of the {len(wanted)} device(s) has an entry of kind {CDI_DEVICE_KIND}",
        tuple(details),
    )
