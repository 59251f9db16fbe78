"""Node labels compatible with NVIDIA's gpu-feature-discovery (GFD), computed from the inventory.

Pure: the caller passes every fact that needs I/O (DMI product name, PCI classes, MIG
capability, fabric, vGPU, the time) in NodeFacts. The rules follow GFD v0.20 (internal/lm in
NVIDIA/k8s-device-plugin); docs/labels.md lists every key with its rule:

- per resource R: R.product, R.count, R.replicas, R.sharing-strategy, and R.memory; full GPUs
  also R.family and R.compute.{major,minor}; MIG devices R.multiprocessors, R.slices.{gi,ci} and
  R.engines.{copy,decoder,encoder,jpeg,ofa};
- node-wide: driver and CUDA versions (old and new keys), mig.capable, mps.capable, gpu.mode,
  mig.strategy (single and mixed only), gpu.machine, gpu.clique, gpu.present, vgpu.present
  (with the vGPU host driver's version and branch on a vGPU guest) and gfd.timestamp.

Values are always valid Kubernetes label values: one bad value would make the API server refuse
the whole patch, so anything that cannot be made valid is left out and reported.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from nvplugin.core.config import Config
from nvplugin.core.gpufacts import FabricInfo, Vgpu
from nvplugin.core.inventory import Gpu, Inventory
from nvplugin.core.resources import GPU_RESOURCE, Resource

Labels = dict[str, str]

PREFIX = "nvidia.com/"
TIMESTAMP_LABEL = "nvidia.com/gfd.timestamp"
MACHINE_LABEL = "nvidia.com/gpu.machine"
PRESENT_LABEL = "nvidia.com/gpu.present"
CLIQUE_LABEL = "nvidia.com/gpu.clique"
VGPU_PRESENT_LABEL = "nvidia.com/vgpu.present"
VGPU_HOST_DRIVER_VERSION_LABEL = "nvidia.com/vgpu.host-driver-version"
VGPU_HOST_DRIVER_BRANCH_LABEL = "nvidia.com/vgpu.host-driver-branch"
# Set by users (or the GPU operator) to pick a named config; never ours to write.
CONFIG_LABEL = "nvidia.com/device-plugin.config"

SHARING_STRATEGIES = ("none", "time-slicing", "mps")
# What renameByDefault appends to a shared resource's name.
SHARED_SUFFIX = ".shared"
MACHINE_UNKNOWN = "unknown"

# PCI class codes (sysfs `class`) that GFD maps to gpu.mode.
PCI_CLASS_MODES = {0x030000: "graphics", 0x030200: "compute"}

MIG_ENGINES = ("copy", "decoder", "encoder", "jpeg", "ofa")

# Every per-resource suffix this module writes; a key `<resource>.<suffix>` with one of these is
# ours (see is_owned_key).
RESOURCE_SUFFIXES = (
    "product",
    "count",
    "replicas",
    "sharing-strategy",
    "memory",
    "family",
    "compute.major",
    "compute.minor",
    "multiprocessors",
    "slices.gi",
    "slices.ci",
    *(f"engines.{e}" for e in MIG_ENGINES),
)
NODE_KEYS = (
    TIMESTAMP_LABEL,
    MACHINE_LABEL,
    PRESENT_LABEL,
    "nvidia.com/cuda.driver.major",
    "nvidia.com/cuda.driver.minor",
    "nvidia.com/cuda.driver.rev",
    "nvidia.com/cuda.runtime.major",
    "nvidia.com/cuda.runtime.minor",
    "nvidia.com/cuda.driver-version.major",
    "nvidia.com/cuda.driver-version.minor",
    "nvidia.com/cuda.driver-version.revision",
    "nvidia.com/cuda.driver-version.full",
    "nvidia.com/cuda.runtime-version.major",
    "nvidia.com/cuda.runtime-version.minor",
    "nvidia.com/cuda.runtime-version.full",
    "nvidia.com/mig.capable",
    "nvidia.com/mps.capable",
    "nvidia.com/gpu.mode",
    "nvidia.com/mig.strategy",
    CLIQUE_LABEL,
    VGPU_PRESENT_LABEL,
    VGPU_HOST_DRIVER_VERSION_LABEL,
    VGPU_HOST_DRIVER_BRANCH_LABEL,
)

_UNSAFE = re.compile(r"[^A-Za-z0-9\-_. ]")
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9\-_.]*[A-Za-z0-9])?)?$")
_OWNED_RESOURCE_KEY = re.compile(
    r"^nvidia\.com/(?:gpu|mig-[A-Za-z0-9+.]+?)\.(?:" + "|".join(map(re.escape, RESOURCE_SUFFIXES)) + r")$"
)


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What the labels need that is not in the inventory: read by the shell, passed in."""

    # DMI product name (/sys/class/dmi/id/product_name), raw; GFD's "unknown" when unreadable.
    machine: str = MACHINE_UNKNOWN
    # Seconds since the epoch for nvidia.com/gfd.timestamp; None leaves the label out.
    timestamp: int | None = None
    # Whether any GPU supports MIG (nvmlDeviceGetMigMode is supported).
    mig_capable: bool = False
    # PCI class code of each GPU in inventory order (0x030200); None where it could not be read.
    pci_classes: tuple[int | None, ...] = ()
    # The fabric registration of each GPU that has a fabric (NotSupported ones left out); None
    # when a GPU's could not be read (then no clique label).
    fabrics: tuple[FabricInfo, ...] | None = ()
    # Whether the node is a vGPU guest, and its host driver; None: unknown (no vgpu labels).
    vgpu: Vgpu | None = None


@dataclass(frozen=True, slots=True)
class Sharing:
    """How one resource is shared. replicas 0 means sharing does not apply (MIG-enabled GPUs)."""

    replicas: int = 1
    strategy: str = "time-slicing"
    # renameByDefault (or rename): the resource is advertised as `<name>.shared` and its product
    # label loses the -SHARED suffix.
    renamed: bool = False

    @property
    def shared(self) -> bool:
        return self.replicas > 1


NOT_SHARED = Sharing(replicas=1)
SHARING_DISABLED = Sharing(replicas=0)


class MigProfileFacts(Protocol):
    """One MIG device as the labels see it: the attributes of core.inventory.MigDevice."""

    @property
    def profile(self) -> str:
        """NVIDIA's profile name, e.g. '1g.10gb' or '1g.10gb+me' ('+' is labelled as '.')."""
        ...

    @property
    def memory_mib(self) -> int: ...

    @property
    def multiprocessors(self) -> int: ...

    @property
    def gi_slices(self) -> int: ...

    @property
    def ci_slices(self) -> int: ...

    @property
    def copy_engines(self) -> int: ...

    @property
    def decoders(self) -> int: ...

    @property
    def encoders(self) -> int: ...

    @property
    def jpeg_decoders(self) -> int: ...

    @property
    def ofa_engines(self) -> int: ...


def mig_profile_name(profile: str) -> str:
    """NVIDIA names MIG resources and products with '+' replaced by '.' (1g.10gb+me -> 1g.10gb.me)."""
    return profile.replace("+", ".")


# --- value rules


def sanitise(part: str) -> str:
    """GFD's rule: drop characters outside [A-Za-z0-9-_. ], join whitespace runs with '-'."""
    return "-".join(_UNSAFE.sub("", part).split())


def product_name(parts: Iterable[str], shared: bool) -> str:
    """Sanitised parts joined by '-', plus '-SHARED' for a shared, not renamed resource."""
    pieces = [s for s in (sanitise(p) for p in parts if p) if s]
    if not pieces:
        return ""
    if shared:
        pieces.append("SHARED")
    return "-".join(pieces)


_FAMILIES = {
    1: "tesla",
    2: "fermi",
    3: "kepler",
    5: "maxwell",
    6: "pascal",
    9: "hopper",
    # Blackwell has two compute capabilities: 10.x (data centre) and 12.x.
    10: "blackwell",
    12: "blackwell",
    13: "rubin",
}


def arch_family(major: int, minor: int) -> str:
    """GPU family by CUDA compute capability, as GFD v0.20 names it (getArchFamily)."""
    if major == 7:
        return "volta" if minor < 5 else "turing"
    if major == 8:
        return "ampere" if minor < 9 else "ada-lovelace"
    return _FAMILIES.get(major, "undefined")


def gpu_mode(pci_classes: Sequence[int | None]) -> str:
    """GFD's rule: compute or graphics when every GPU has that PCI class; unknown for mixed
    classes, another class, no GPUs, or a class that could not be read."""
    classes = set(pci_classes)
    if len(classes) != 1 or None in classes:
        return "unknown"
    (only,) = classes
    assert only is not None
    return PCI_CLASS_MODES.get(only, "unknown")


def clique_label(fabrics: Sequence[FabricInfo] | None) -> Labels:
    """GFD's IMEX labeler: `<cluster UUID>.<clique id>` when every GPU attached to a fabric
    (registration completed and succeeded, in a cluster) names the same cluster and the same
    clique; nothing when none is attached, when they disagree, or when one was unreadable."""
    attached = [f for f in fabrics or () if f.attached]
    clusters = {f.cluster_uuid for f in attached}
    cliques = {f.clique_id for f in attached}
    if len(clusters) != 1 or len(cliques) != 1:
        return {}
    return {CLIQUE_LABEL: f"{clusters.pop()}.{cliques.pop()}"}


def vgpu_labels(vgpu: Vgpu | None) -> Labels:
    """GFD's vGPU labeler: vgpu.present, and on a vGPU guest the host driver's version and
    branch when its capability names them. Unknown (GFD's PCI scan failed): no labels."""
    if vgpu is None:
        return {}
    labels = {VGPU_PRESENT_LABEL: _bool(vgpu.present)}
    if vgpu.present and vgpu.host_driver is not None:
        labels[VGPU_HOST_DRIVER_VERSION_LABEL] = vgpu.host_driver.version
        labels[VGPU_HOST_DRIVER_BRANCH_LABEL] = vgpu.host_driver.branch
    return labels


def is_valid_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def fit_label_value(value: str) -> str:
    """Make a sanitised value a valid label value: at most 63 characters, alphanumeric ends."""
    value = value[:63]
    return value.strip("-_.")


def is_owned_key(key: str) -> bool:
    """Keys nvplugin writes and may therefore delete. Other nvidia.com/ keys (the config
    selector, the GPU operator's gpu.deploy.*, mig.config...) are never touched."""
    return key in NODE_KEYS or bool(_OWNED_RESOURCE_KEY.match(key))


# --- label groups


def version_labels(driver_version: str, cuda_version: tuple[int, int]) -> Labels:
    """Driver and CUDA versions in GFD's deprecated and current keys. A driver version not of
    the form X.Y[.Z] gives no driver labels (GFD fails the whole pass; we keep the rest)."""
    labels: Labels = {}
    parts = driver_version.split(".")
    if 2 <= len(parts) <= 3 and all(parts):
        major, minor = parts[0], parts[1]
        rev = parts[2] if len(parts) == 3 else ""
        labels.update(
            {
                "nvidia.com/cuda.driver.major": major,
                "nvidia.com/cuda.driver.minor": minor,
                "nvidia.com/cuda.driver.rev": rev,
                "nvidia.com/cuda.driver-version.major": major,
                "nvidia.com/cuda.driver-version.minor": minor,
                "nvidia.com/cuda.driver-version.revision": rev,
                "nvidia.com/cuda.driver-version.full": driver_version,
            }
        )
    cuda_major, cuda_minor = cuda_version
    labels.update(
        {
            "nvidia.com/cuda.runtime.major": str(cuda_major),
            "nvidia.com/cuda.runtime.minor": str(cuda_minor),
            "nvidia.com/cuda.runtime-version.major": str(cuda_major),
            "nvidia.com/cuda.runtime-version.minor": str(cuda_minor),
            "nvidia.com/cuda.runtime-version.full": f"{cuda_major}.{cuda_minor}",
        }
    )
    return labels


def _base_labels(resource: str, count: int, product_parts: Sequence[str], sharing: Sharing) -> Labels:
    strategy = sharing.strategy if sharing.shared else "none"
    labels = {
        f"{resource}.count": str(count),
        f"{resource}.replicas": str(sharing.replicas),
        f"{resource}.sharing-strategy": strategy,
    }
    product = product_name(product_parts, sharing.shared and not sharing.renamed)
    if product:
        labels[f"{resource}.product"] = product
    return labels


def full_gpu_labels(gpu: Gpu, count: int, sharing: Sharing, resource: str = GPU_RESOURCE) -> Labels:
    """Labels for the `count` GPUs of `gpu`'s model (GFD labels one model per node; see
    node_labels)."""
    if count == 0:
        return {}
    labels = _base_labels(resource, count, (gpu.name,), sharing)
    if gpu.memory_mib:
        labels[f"{resource}.memory"] = str(gpu.memory_mib)
    major, minor = gpu.compute_capability
    if major:
        labels[f"{resource}.family"] = arch_family(major, minor)
        labels[f"{resource}.compute.major"] = str(major)
        labels[f"{resource}.compute.minor"] = str(minor)
    return labels


def mig_labels(resource: str, parent_model: str, migs: Sequence[MigProfileFacts], sharing: Sharing) -> Labels:
    """Labels for MIG devices of one profile advertised as `resource` (nvidia.com/gpu under the
    single strategy, nvidia.com/mig-<profile> under mixed)."""
    if not migs:
        return {}
    mig = migs[0]
    labels = _base_labels(resource, len(migs), (parent_model, "MIG", mig_profile_name(mig.profile)), sharing)
    engines = {
        "copy": mig.copy_engines,
        "decoder": mig.decoders,
        "encoder": mig.encoders,
        "jpeg": mig.jpeg_decoders,
        "ofa": mig.ofa_engines,
    }
    labels.update(
        {
            f"{resource}.memory": str(mig.memory_mib),
            f"{resource}.multiprocessors": str(mig.multiprocessors),
            f"{resource}.slices.gi": str(mig.gi_slices),
            f"{resource}.slices.ci": str(mig.ci_slices),
        }
    )
    for engine in MIG_ENGINES:
        labels[f"{resource}.engines.{engine}"] = str(engines[engine])
    return labels


MigGpu = tuple[str, Sequence[MigProfileFacts]]


def mig_strategy_labels(
    strategy: str,
    mig_gpus: Sequence[MigGpu],
    has_full_gpus: bool,
    sharing_for: Callable[[str], Sharing],
) -> Labels:
    """GFD's MIG labeler. `mig_gpus`: (model, MIG devices) of each MIG-enabled GPU in index
    order. single: one profile on every GPU labels nvidia.com/gpu, anything else (full GPUs
    too, an empty MIG GPU, several profiles) the MIG-INVALID set; mixed: one resource per
    profile, empty MIG GPUs ignored; none: nothing."""
    if strategy == "single":
        if not mig_gpus:
            return {}
        model = mig_gpus[0][0]
        migs = [m for _, devices in mig_gpus for m in devices]
        profiles = {mig_profile_name(m.profile) for m in migs}
        if has_full_gpus or any(not devices for _, devices in mig_gpus) or len(profiles) != 1:
            return invalid_single_strategy_labels(model)
        return mig_labels(GPU_RESOURCE, model, migs, sharing_for(GPU_RESOURCE))
    if strategy == "mixed":
        groups: dict[str, tuple[str, list[MigProfileFacts]]] = {}
        for model, devices in mig_gpus:
            for mig in devices:
                name = f"nvidia.com/mig-{mig_profile_name(mig.profile)}"
                groups.setdefault(name, (model, []))[1].append(mig)
        labels: Labels = {}
        for name, (model, group) in groups.items():
            labels.update(mig_labels(name, model, group, sharing_for(name)))
        return labels
    return {}


def invalid_single_strategy_labels(parent_model: str) -> Labels:
    """What GFD writes when mig-strategy=single cannot be honoured (mixed MIG and full GPUs,
    an empty MIG GPU, several profiles): product <model>-MIG-INVALID, zero counts and an
    empty sharing strategy."""
    labels = {
        f"{GPU_RESOURCE}.count": "0",
        f"{GPU_RESOURCE}.replicas": "0",
        f"{GPU_RESOURCE}.sharing-strategy": "",
        f"{GPU_RESOURCE}.memory": "0",
    }
    product = product_name((parent_model, "MIG", "INVALID"), shared=False)
    if product:
        labels[f"{GPU_RESOURCE}.product"] = product
    return labels


def machine_label(machine: str) -> str:
    name = fit_label_value(sanitise(machine.strip()))
    return name or MACHINE_UNKNOWN


def sharing_of(resource: Resource, strategy: str = "time-slicing") -> Sharing:
    """Replicas per device, counted from the advertised devices (IDs `<UUID>::<n>`), and whether
    the resource was renamed (`<name>.shared`)."""
    per_uuid = Counter(d.uuid for d in resource.devices)
    replicas = max(per_uuid.values(), default=1)
    renamed = getattr(resource, "renamed_from", None) is not None or resource.name.endswith(SHARED_SUFFIX)
    return Sharing(replicas=replicas, strategy=strategy, renamed=renamed)


def base_resource_name(resource: Resource) -> str:
    """GFD labels a renamed resource under its original name."""
    original = getattr(resource, "renamed_from", None)
    if isinstance(original, str):
        return original
    name = resource.name
    return name[: -len(SHARED_SUFFIX)] if name.endswith(SHARED_SUFFIX) else name


def sharing_for(
    name: str, resources: Sequence[Resource], config: Config, strategy: str = "time-slicing"
) -> Sharing:
    """How resource `name` (its unrenamed name) is shared: from the advertised resource when
    there is one (its replica IDs and rename are what the kubelet sees), else from the config's
    sharing entry for it (sharing.mps, else sharing.timeSlicing), as GFD reads it."""
    for resource in resources:
        if base_resource_name(resource) == name:
            return sharing_of(resource, strategy)
    sharing = getattr(config, "sharing", None)
    replicated = getattr(sharing, "active", None) or getattr(sharing, "time_slicing", None)
    if replicated is not None:
        wanted = replicated.for_resource(name)
        if wanted is not None and wanted.replicas > 1:
            return Sharing(
                replicas=int(wanted.replicas), strategy=strategy, renamed=wanted.rename is not None
            )
    return NOT_SHARED


def _majority_model(gpus: Sequence[Gpu]) -> Gpu:
    """The first GPU of the most common model (ties: the model of the lowest index). GFD writes
    one set of nvidia.com/gpu labels; with several models its choice is random, ours is stable."""
    counts = Counter(g.name for g in gpus)
    best = max(counts.values())
    return next(g for g in gpus if counts[g.name] == best)


def node_labels(
    inventory: Inventory,
    resources: Sequence[Resource],
    config: Config,
    facts: NodeFacts,
    sharing_strategy: str | None = None,
) -> Labels:
    """Every label this node should carry. No GPUs: what GFD writes then (no_gpu_labels), so a
    node whose GPUs are gone loses the GPU labels. Full-GPU labels first, then MIG labels over
    them (GFD's order). `sharing_strategy`: time-slicing or mps for shared resources (default:
    the config's, else time-slicing)."""
    if not inventory.gpus:
        return no_gpu_labels(facts)
    labels: Labels = {}
    strategy = sharing_strategy or _config_sharing_strategy(config)
    full = [g for g in inventory.gpus if not g.mig_enabled]
    mig_mode = [g for g in inventory.gpus if g.mig_enabled]
    # GFD counts every GPU of a model, MIG-enabled or not, in <model>'s gpu.count.
    per_model = Counter(g.name for g in inventory.gpus)
    # MIG-enabled GPUs first so full GPUs override them, as GFD does.
    if mig_mode:
        model = _majority_model(mig_mode)
        labels.update(full_gpu_labels(model, per_model[model.name], SHARING_DISABLED))
    if full:
        model = _majority_model(full)
        sharing = sharing_for(GPU_RESOURCE, resources, config, strategy)
        labels.update(full_gpu_labels(model, per_model[model.name], sharing))
    mig_gpus = [(g.name, g.mig_devices) for g in mig_mode]
    labels.update(
        mig_strategy_labels(
            config.mig_strategy,
            mig_gpus,
            bool(full),
            lambda name: sharing_for(name, resources, config, strategy),
        )
    )
    labels.update(version_labels(inventory.driver_version, inventory.cuda_version))
    labels["nvidia.com/mig.capable"] = _bool(facts.mig_capable or bool(mig_mode))
    labels["nvidia.com/mps.capable"] = _bool(strategy == "mps" and not mig_mode)
    labels["nvidia.com/gpu.mode"] = gpu_mode(facts.pci_classes)
    if config.mig_strategy in ("single", "mixed"):
        labels["nvidia.com/mig.strategy"] = config.mig_strategy
    labels[MACHINE_LABEL] = machine_label(facts.machine)
    labels.update(clique_label(facts.fabrics))
    labels[PRESENT_LABEL] = "true"
    labels.update(no_gpu_labels(facts))
    return labels


def no_gpu_labels(facts: NodeFacts) -> Labels:
    """What GFD writes on a node without GPUs (its device labeler is empty then): the vGPU
    labels (vgpu.present=false where the PCI scan found no vGPU) and the timestamp. Every GPU
    node carries these too."""
    labels = vgpu_labels(facts.vgpu)
    if facts.timestamp is not None:
        labels[TIMESTAMP_LABEL] = str(facts.timestamp)
    return labels


def _config_sharing_strategy(config: Config) -> str:
    strategy = getattr(getattr(config, "sharing", None), "strategy", None)
    return strategy if isinstance(strategy, str) and strategy != "none" else "time-slicing"


def _bool(value: bool) -> str:
    return "true" if value else "false"


def invalid_values(labels: Mapping[str, str]) -> list[str]:
    """Keys whose values the API server would refuse, with the value, for an error message."""
    return [f"{k}={v!r}" for k, v in sorted(labels.items()) if not is_valid_label_value(v)]


def valid_only(labels: Mapping[str, str]) -> tuple[Labels, list[str]]:
    """Split off values that are not valid label values, so one bad value (a driver version
    with a '+', an odd product name) cannot make the API server refuse every label."""
    good = {k: v for k, v in labels.items() if is_valid_label_value(v)}
    return good, invalid_values(labels)


def feature_file(labels: Mapping[str, str]) -> str:
    """NFD's features.d format: one `key=value` per line, sorted."""
    return "".join(f"{k}={v}\n" for k, v in sorted(labels.items()))


def keep_nothing(key: str) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class DesiredLabels:
    """What the node should carry: `labels` are set; every other owned key is deleted, except
    the keys `keep` accepts, which stay as the node has them (neither deleted nor changed)."""

    labels: Mapping[str, str] = field(default_factory=dict)
    keep: Callable[[str], bool] = keep_nothing


def desired_when_nvml_failed() -> DesiredLabels:
    """NVML could not be read (init or discovery failed): the GPUs are unknown, not gone. Every
    owned label stays as the node has it until NVML answers again, above all
    nvidia.com/gpu.present, which DaemonSets (this agent's too) select nodes by: deleting it on
    a transient failure would evict them. Only the timestamp may still be written."""
    return DesiredLabels(labels={}, keep=is_owned_key)


def desired_labels(
    inventory: Inventory | None,
    resources: Sequence[Resource],
    config: Config,
    facts: NodeFacts,
    sharing_strategy: str | None = None,
) -> DesiredLabels:
    """What to reconcile the node to. `inventory` None (nvmlInit or discovery failed), or one
    where NVML saw GPUs but could read none of them: desired_when_nvml_failed(). Otherwise
    node_labels, a node without GPUs included."""
    if inventory is None or (not inventory.gpus and inventory.problems):
        return desired_when_nvml_failed()
    return DesiredLabels(node_labels(inventory, resources, config, facts, sharing_strategy))


def label_diff(
    desired: Mapping[str, str],
    actual: Mapping[str, str],
    *,
    timestamp: str | None = None,
    owned: Callable[[str], bool] = is_owned_key,
    keep: Callable[[str], bool] = keep_nothing,
    refresh_timestamp: bool = False,
) -> dict[str, str | None]:
    """The JSON merge patch of metadata.labels that makes `actual` carry `desired`: changed or
    missing keys with their value, owned keys no longer desired with None (delete). Keys `keep`
    accepts (DesiredLabels.keep: their true value is unknown now) are neither changed nor
    deleted; keys not owned are never deleted. The timestamp is not compared: it is written (as
    `timestamp`) only when something else changes, when it is missing, or when the relabel
    period asks for it (`refresh_timestamp`); with `timestamp` None an existing timestamp label
    is removed."""
    changes: dict[str, str | None] = {
        k: v for k, v in desired.items() if k != TIMESTAMP_LABEL and actual.get(k) != v and not keep(k)
    }
    for key in actual:
        if key not in desired and key != TIMESTAMP_LABEL and owned(key) and not keep(key):
            changes[key] = None
    if timestamp is None:
        if TIMESTAMP_LABEL in actual:
            changes[TIMESTAMP_LABEL] = None
    elif changes or refresh_timestamp or TIMESTAMP_LABEL not in actual:
        changes[TIMESTAMP_LABEL] = timestamp
    return changes
