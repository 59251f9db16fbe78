"""Golden tests for the GFD-compatible labels (rules from NVIDIA's internal/lm, v0.20)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvplugin.core import labels as L
from nvplugin.core.config import Config
from nvplugin.core.gpufacts import (
    FABRIC_STATE_COMPLETED,
    FABRIC_STATE_IN_PROGRESS,
    FabricInfo,
    Vgpu,
    VgpuHostDriver,
)
from nvplugin.core.inventory import Gpu, Inventory
from nvplugin.core.resources import AdvertisedDevice, Resource, build_resources

H100 = "NVIDIA H100 80GB HBM3"


def gpu(index: int, name: str = H100, memory_mib: int = 81559, cc: tuple[int, int] = (9, 0)) -> Gpu:
    return Gpu(
        index=index,
        uuid=f"GPU-{index:08d}-0000-0000-0000-000000000000",
        minor=index,
        name=name,
        memory_bytes=memory_mib * 1024 * 1024,
        compute_capability=cc,
        pci_bus_id=f"00000000:{index:02X}:00.0",
    )


def inventory(*gpus: Gpu, driver: str = "580.159.04", cuda: int = 13000) -> Inventory:
    return Inventory(gpus=gpus, driver_version=driver, cuda_driver_version=cuda)


FACTS = L.NodeFacts(
    machine="PowerEdge XE9680",
    timestamp=1764115200,
    mig_capable=True,
    pci_classes=(0x030200,) * 8,
    vgpu=Vgpu(present=False),
)


def test_h100_node_golden() -> None:
    inv = inventory(*(gpu(i) for i in range(8)))
    labels = L.node_labels(inv, build_resources(inv, Config()), Config(), FACTS)
    assert labels == {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "nvidia.com/gpu.count": "8",
        "nvidia.com/gpu.replicas": "1",
        "nvidia.com/gpu.sharing-strategy": "none",
        "nvidia.com/gpu.memory": "81559",
        "nvidia.com/gpu.family": "hopper",
        "nvidia.com/gpu.compute.major": "9",
        "nvidia.com/gpu.compute.minor": "0",
        "nvidia.com/cuda.driver.major": "580",
        "nvidia.com/cuda.driver.minor": "159",
        "nvidia.com/cuda.driver.rev": "04",
        "nvidia.com/cuda.runtime.major": "13",
        "nvidia.com/cuda.runtime.minor": "0",
        "nvidia.com/cuda.driver-version.major": "580",
        "nvidia.com/cuda.driver-version.minor": "159",
        "nvidia.com/cuda.driver-version.revision": "04",
        "nvidia.com/cuda.driver-version.full": "580.159.04",
        "nvidia.com/cuda.runtime-version.major": "13",
        "nvidia.com/cuda.runtime-version.minor": "0",
        "nvidia.com/cuda.runtime-version.full": "13.0",
        "nvidia.com/mig.capable": "true",
        "nvidia.com/mps.capable": "false",
        "nvidia.com/gpu.mode": "compute",
        "nvidia.com/gpu.machine": "PowerEdge-XE9680",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/vgpu.present": "false",
        "nvidia.com/gfd.timestamp": "1764115200",
    }
    assert all(L.is_owned_key(k) for k in labels)
    assert L.invalid_values(labels) == []


@pytest.mark.parametrize(
    ("name", "product"),
    [
        (H100, "NVIDIA-H100-80GB-HBM3"),
        ("NVIDIA A100-SXM4-40GB", "NVIDIA-A100-SXM4-40GB"),
        ("Tesla V100-SXM2-16GB", "Tesla-V100-SXM2-16GB"),
        ("NVIDIA GeForce RTX 4090", "NVIDIA-GeForce-RTX-4090"),
        # Characters outside [A-Za-z0-9-_. ] are dropped, whitespace runs become one '-'.
        ("NVIDIA  RTX A6000 (rev 2)", "NVIDIA-RTX-A6000-rev-2"),
        ("Quadro RTX 8000/Mobile", "Quadro-RTX-8000Mobile"),
        # a tab is not in the kept set: GFD drops it before splitting on spaces
        ("  NVIDIA\tL40S  ", "NVIDIAL40S"),
    ],
)
def test_product_sanitising(name: str, product: str) -> None:
    assert L.product_name([name], shared=False) == product


def test_product_parts_and_shared_suffix() -> None:
    assert (
        L.product_name(["NVIDIA A100-SXM4-40GB", "MIG", "1g.5gb"], False)
        == "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"
    )
    assert L.product_name([H100], shared=True) == "NVIDIA-H100-80GB-HBM3-SHARED"
    assert L.product_name(["", "%%"], shared=True) == ""


@pytest.mark.parametrize(
    ("cc", "family"),
    [
        ((1, 3), "tesla"),
        ((2, 1), "fermi"),
        ((3, 7), "kepler"),
        ((4, 0), "undefined"),
        ((5, 2), "maxwell"),
        ((6, 1), "pascal"),
        ((7, 0), "volta"),
        ((7, 2), "volta"),
        ((7, 4), "volta"),
        ((7, 5), "turing"),
        ((8, 0), "ampere"),
        ((8, 6), "ampere"),
        ((8, 8), "ampere"),
        ((8, 9), "ada-lovelace"),
        ((9, 0), "hopper"),
        ((10, 0), "blackwell"),
        ((11, 0), "undefined"),
        ((12, 0), "blackwell"),
        ((13, 0), "rubin"),
        ((14, 0), "undefined"),
    ],
)
def test_family(cc: tuple[int, int], family: str) -> None:
    assert L.arch_family(*cc) == family


def test_a100_family_and_memory() -> None:
    inv = inventory(gpu(0, "NVIDIA A100-SXM4-40GB", 40960, (8, 0)))
    labels = L.node_labels(inv, build_resources(inv, Config()), Config(), L.NodeFacts())
    assert labels["nvidia.com/gpu.family"] == "ampere"
    assert labels["nvidia.com/gpu.memory"] == "40960"
    assert labels["nvidia.com/gpu.count"] == "1"
    assert labels["nvidia.com/gpu.machine"] == "unknown"
    assert labels["nvidia.com/gpu.mode"] == "unknown"
    assert labels["nvidia.com/mig.capable"] == "false"
    assert "nvidia.com/gfd.timestamp" not in labels


def test_compute_zero_gives_no_architecture_labels() -> None:
    labels = L.full_gpu_labels(gpu(0, cc=(0, 0)), 1, L.NOT_SHARED)
    assert not any("family" in k or "compute" in k for k in labels)


def test_driver_version_forms() -> None:
    two = L.version_labels("535.54", (12, 2))
    assert two["nvidia.com/cuda.driver.rev"] == ""
    assert two["nvidia.com/cuda.driver-version.full"] == "535.54"
    assert two["nvidia.com/cuda.runtime-version.full"] == "12.2"
    bad = L.version_labels("weird", (12, 2))
    assert "nvidia.com/cuda.driver.major" not in bad
    assert bad["nvidia.com/cuda.runtime.major"] == "12"


def test_cuda_version_from_nvml_encoding() -> None:
    labels = L.node_labels(inventory(gpu(0), cuda=12040), (), Config(), L.NodeFacts())
    assert labels["nvidia.com/cuda.runtime-version.full"] == "12.4"


def test_mig_strategy_label_only_for_single_and_mixed() -> None:
    inv = inventory(gpu(0))
    for strategy, expected in (("none", None), ("single", "single"), ("mixed", "mixed")):
        labels = L.node_labels(inv, (), Config(mig_strategy=strategy), L.NodeFacts())
        assert labels.get("nvidia.com/mig.strategy") == expected


def test_no_gpus_gives_what_gfd_writes_without_devices() -> None:
    facts = L.NodeFacts(timestamp=5, vgpu=Vgpu(present=False), mig_capable=True, pci_classes=(0x030200,))
    expected = {"nvidia.com/gfd.timestamp": "5", "nvidia.com/vgpu.present": "false"}
    assert L.no_gpu_labels(facts) == expected
    assert L.node_labels(inventory(), (), Config(mig_strategy="mixed"), facts) == expected
    # vGPU unknown (GFD's PCI scan failed) and the timestamp disabled: nothing at all
    assert L.node_labels(inventory(), (), Config(), L.NodeFacts()) == {}


@pytest.mark.parametrize(
    ("classes", "mode"),
    [
        ((0x030200,), "compute"),
        ((0x030200,) * 3, "compute"),
        ((0x030000, 0x030000), "graphics"),
        ((0x068000,), "unknown"),  # an NVSwitch's class
        ((0x030000, 0x030200, 0x030000), "unknown"),  # mixed classes: GFD says unknown
        ((0x030200, None), "unknown"),  # one class unreadable: GFD gives up
        ((), "unknown"),
    ],
)
def test_gpu_mode(classes: tuple[int | None, ...], mode: str) -> None:
    assert L.gpu_mode(classes) == mode


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("PowerEdge XE9680", "PowerEdge-XE9680"),
        ("DGX H100\n", "DGX-H100"),
        ("HGX (8x H100) / SXM5", "HGX-8x-H100-SXM5"),
        ("", "unknown"),
        ("((()))", "unknown"),
        ("x" * 80, "x" * 63),
    ],
)
def test_machine_label(raw: str, label: str) -> None:
    assert L.machine_label(raw) == label
    assert L.is_valid_label_value(L.machine_label(raw))


# --- time-slicing replicas (IDs <UUID>::<n>) and renaming


def replicated(inv: Inventory, replicas: int, name: str = "nvidia.com/gpu") -> Resource:
    devices = tuple(
        AdvertisedDevice(
            id=f"{g.uuid}::{n}",
            uuid=g.uuid,
            index=str(g.index),
            gpu_uuid=g.uuid,
            numa_node=None,
            device_nodes=(g.device_node,),
            replica=n,
        )
        for g in inv.gpus
        for n in range(replicas)
    )
    return Resource(name, devices)


def test_time_sliced_gpu_is_shared() -> None:
    inv = inventory(gpu(0), gpu(1))
    labels = L.node_labels(inv, (replicated(inv, 4),), Config(), L.NodeFacts())
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3-SHARED"
    assert labels["nvidia.com/gpu.replicas"] == "4"
    assert labels["nvidia.com/gpu.count"] == "2"
    assert labels["nvidia.com/gpu.sharing-strategy"] == "time-slicing"
    assert labels["nvidia.com/mps.capable"] == "false"


def test_renamed_shared_resource_keeps_keys_and_loses_suffix() -> None:
    inv = inventory(gpu(0))
    labels = L.node_labels(inv, (replicated(inv, 2, "nvidia.com/gpu.shared"),), Config(), L.NodeFacts())
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.replicas"] == "2"
    assert not any(k.startswith("nvidia.com/gpu.shared") for k in labels)


def test_mps_sharing() -> None:
    inv = inventory(gpu(0))
    labels = L.node_labels(inv, (replicated(inv, 3),), Config(), L.NodeFacts(), sharing_strategy="mps")
    assert labels["nvidia.com/gpu.sharing-strategy"] == "mps"
    assert labels["nvidia.com/mps.capable"] == "true"


def test_mig_enabled_gpus_are_labelled_without_sharing() -> None:
    inv = inventory(gpu(0), replace(gpu(1, "NVIDIA A100-SXM4-40GB", 40960, (8, 0)), mig_enabled=True))
    facts = L.NodeFacts()
    labels = L.node_labels(inv, (replicated(inv, 2),), Config(), facts, sharing_strategy="mps")
    # the full GPU overrides the MIG-enabled one (GFD order) and keeps its sharing
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3-SHARED"
    assert labels["nvidia.com/gpu.replicas"] == "2"
    assert labels["nvidia.com/mps.capable"] == "false"
    only_mig = L.node_labels(inventory(inv.gpus[1]), (), Config(), facts)
    assert only_mig["nvidia.com/gpu.replicas"] == "0"
    assert only_mig["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB"
    assert only_mig["nvidia.com/gpu.family"] == "ampere"


def test_count_includes_mig_enabled_gpus_of_the_model() -> None:
    """GFD counts every GPU of a model in gpu.count, MIG-enabled ones too (its "sharing is
    applied to MIG device and non-MIG device" case: two GPUs, count 2, replicas from the
    config)."""
    inv = inventory(replace(gpu(0), mig_enabled=True), gpu(1), gpu(2))
    labels = L.node_labels(inv, (replicated(inventory(gpu(1), gpu(2)), 2),), Config(), L.NodeFacts())
    assert labels["nvidia.com/gpu.count"] == "3"
    assert labels["nvidia.com/gpu.replicas"] == "2"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3-SHARED"
    only_mig = L.node_labels(
        inventory(*(replace(gpu(i), mig_enabled=True) for i in range(2))), (), Config(), L.NodeFacts()
    )
    assert only_mig["nvidia.com/gpu.count"] == "2"
    assert only_mig["nvidia.com/gpu.replicas"] == "0"
    assert only_mig["nvidia.com/gpu.sharing-strategy"] == "none"


def test_mixed_models_pick_the_most_common_then_lowest_index() -> None:
    a100 = ("NVIDIA A100-SXM4-40GB", 40960, (8, 0))
    labels = L.node_labels(inventory(gpu(0, *a100), gpu(1), gpu(2)), (), Config(), L.NodeFacts())
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.count"] == "2"
    tie = L.node_labels(inventory(gpu(0, *a100), gpu(1)), (), Config(), L.NodeFacts())
    assert tie["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB"


# --- MIG, against a test double shaped like core.inventory.MigDevice


@dataclass(frozen=True)
class FakeMig:
    profile: str
    memory_mib: int
    multiprocessors: int
    gi_slices: int
    ci_slices: int
    copy_engines: int = 0
    decoders: int = 0
    encoders: int = 0
    jpeg_decoders: int = 0
    ofa_engines: int = 0


MIG_1G10 = FakeMig("1g.10gb", 9728, 16, 1, 1, copy_engines=1, decoders=1, jpeg_decoders=1, ofa_engines=1)
MIG_3G40 = FakeMig("3g.40gb", 40192, 60, 3, 3, copy_engines=3, decoders=3, jpeg_decoders=3)
MIG_1G10_ME = FakeMig(
    "1g.10gb+me", 9728, 16, 1, 1, copy_engines=1, decoders=1, jpeg_decoders=1, ofa_engines=1
)


def test_mig_mixed_labels_golden() -> None:
    labels = L.mig_labels("nvidia.com/mig-1g.10gb", H100, [MIG_1G10] * 7, L.NOT_SHARED)
    assert labels == {
        "nvidia.com/mig-1g.10gb.product": "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb",
        "nvidia.com/mig-1g.10gb.count": "7",
        "nvidia.com/mig-1g.10gb.replicas": "1",
        "nvidia.com/mig-1g.10gb.sharing-strategy": "none",
        "nvidia.com/mig-1g.10gb.memory": "9728",
        "nvidia.com/mig-1g.10gb.multiprocessors": "16",
        "nvidia.com/mig-1g.10gb.slices.gi": "1",
        "nvidia.com/mig-1g.10gb.slices.ci": "1",
        "nvidia.com/mig-1g.10gb.engines.copy": "1",
        "nvidia.com/mig-1g.10gb.engines.decoder": "1",
        "nvidia.com/mig-1g.10gb.engines.encoder": "0",
        "nvidia.com/mig-1g.10gb.engines.jpeg": "1",
        "nvidia.com/mig-1g.10gb.engines.ofa": "1",
    }
    assert all(L.is_owned_key(k) for k in labels)


def test_mig_single_labels_and_sharing() -> None:
    labels = L.mig_labels("nvidia.com/gpu", H100, [MIG_3G40] * 2, L.Sharing(replicas=2))
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3-MIG-3g.40gb-SHARED"
    assert labels["nvidia.com/gpu.engines.ofa"] == "0"
    assert labels["nvidia.com/gpu.sharing-strategy"] == "time-slicing"
    assert L.mig_labels("nvidia.com/gpu", H100, [], L.NOT_SHARED) == {}


def test_mig_plus_profile_is_labelled_with_a_dot() -> None:
    labels = L.mig_strategy_labels("mixed", [(H100, [MIG_1G10_ME])], False, lambda n: L.NOT_SHARED)
    assert labels["nvidia.com/mig-1g.10gb.me.product"] == "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb.me"
    assert all(L.is_owned_key(k) for k in labels)


def test_mig_strategy_single() -> None:
    def unshared(name: str) -> L.Sharing:
        return L.NOT_SHARED

    good = L.mig_strategy_labels("single", [(H100, [MIG_1G10] * 7)] * 2, False, unshared)
    assert good["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb"
    assert good["nvidia.com/gpu.count"] == "14"
    assert good["nvidia.com/gpu.slices.gi"] == "1"
    invalid = L.invalid_single_strategy_labels(H100)
    # full GPUs beside MIG GPUs, an empty MIG GPU, or two profiles: GFD's MIG-INVALID set
    assert L.mig_strategy_labels("single", [(H100, [MIG_1G10])], True, unshared) == invalid
    assert L.mig_strategy_labels("single", [(H100, [MIG_1G10]), (H100, [])], False, unshared) == invalid
    assert L.mig_strategy_labels("single", [(H100, [MIG_1G10, MIG_3G40])], False, unshared) == invalid
    assert L.mig_strategy_labels("single", [], True, unshared) == {}
    assert L.mig_strategy_labels("none", [(H100, [MIG_1G10])], False, unshared) == {}


def test_mig_strategy_mixed_one_resource_per_profile() -> None:
    seen: list[str] = []

    def sharing(name: str) -> L.Sharing:
        seen.append(name)
        return L.Sharing(replicas=4) if name == "nvidia.com/mig-3g.40gb" else L.NOT_SHARED

    labels = L.mig_strategy_labels(
        "mixed", [(H100, [MIG_1G10, MIG_1G10, MIG_3G40]), ("NVIDIA A100-SXM4-40GB", [])], True, sharing
    )
    assert labels["nvidia.com/mig-1g.10gb.count"] == "2"
    assert labels["nvidia.com/mig-3g.40gb.count"] == "1"
    assert labels["nvidia.com/mig-3g.40gb.product"] == "NVIDIA-H100-80GB-HBM3-MIG-3g.40gb-SHARED"
    assert labels["nvidia.com/mig-3g.40gb.replicas"] == "4"
    assert sorted(seen) == ["nvidia.com/mig-1g.10gb", "nvidia.com/mig-3g.40gb"]


def test_invalid_single_strategy() -> None:
    assert L.invalid_single_strategy_labels(H100) == {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-MIG-INVALID",
        "nvidia.com/gpu.count": "0",
        "nvidia.com/gpu.replicas": "0",
        # GFD writes an empty sharing strategy here (a valid label value)
        "nvidia.com/gpu.sharing-strategy": "",
        "nvidia.com/gpu.memory": "0",
    }
    assert L.invalid_values(L.invalid_single_strategy_labels(H100)) == []


# --- IMEX clique and vGPU

CLUSTER = "0b1f0a54-7a2c-4d8e-9c7e-3f2a1b0c9d8e"
OTHER_CLUSTER = "5d0c2f7e-11aa-4b0e-8f3c-2b9e6d1a4c70"


def fabric(cluster: str = CLUSTER, clique: int = 32766, state: int = FABRIC_STATE_COMPLETED) -> FabricInfo:
    return FabricInfo(cluster, clique, state, 0)


@pytest.mark.parametrize(
    ("fabrics", "clique"),
    [
        ((fabric(),) * 4, f"{CLUSTER}.32766"),
        # GPUs not attached (still registering, or no cluster) are left out of the vote
        ((fabric(), fabric(state=FABRIC_STATE_IN_PROGRESS, clique=1)), f"{CLUSTER}.32766"),
        ((fabric(), FabricInfo()), f"{CLUSTER}.32766"),
        ((fabric(), fabric(clique=1)), None),  # two cliques
        ((fabric(), fabric(cluster=OTHER_CLUSTER)), None),  # two clusters
        ((fabric(state=FABRIC_STATE_IN_PROGRESS),), None),
        ((), None),  # no GPU has a fabric
        (None, None),  # a GPU's fabric could not be read
    ],
)
def test_clique_label(fabrics: tuple[FabricInfo, ...] | None, clique: str | None) -> None:
    labels = L.clique_label(fabrics)
    assert labels.get("nvidia.com/gpu.clique") == clique
    assert L.invalid_values(labels) == []


def test_clique_on_the_node() -> None:
    facts = L.NodeFacts(fabrics=(fabric(),) * 2)
    labels = L.node_labels(inventory(gpu(0), gpu(1)), (), Config(), facts)
    assert labels["nvidia.com/gpu.clique"] == f"{CLUSTER}.32766"
    assert L.is_owned_key("nvidia.com/gpu.clique")


def test_vgpu_labels() -> None:
    driver = VgpuHostDriver("550.90.05", "r550_00")
    assert L.vgpu_labels(None) == {}
    assert L.vgpu_labels(Vgpu(present=False)) == {"nvidia.com/vgpu.present": "false"}
    assert L.vgpu_labels(Vgpu(present=True)) == {"nvidia.com/vgpu.present": "true"}
    assert L.vgpu_labels(Vgpu(True, driver)) == {
        "nvidia.com/vgpu.present": "true",
        "nvidia.com/vgpu.host-driver-version": "550.90.05",
        "nvidia.com/vgpu.host-driver-branch": "r550_00",
    }
    assert all(L.is_owned_key(k) for k in L.vgpu_labels(Vgpu(True, driver)))


def test_sharing_from_config_when_it_has_a_sharing_section() -> None:
    """After the time-slicing work, Config.sharing.time_slicing decides (as in GFD)."""

    @dataclass(frozen=True)
    class Replicated:
        name: str
        replicas: int
        rename: str | None = None

    @dataclass(frozen=True)
    class TimeSlicing:
        resources: tuple[Replicated, ...]

        def for_resource(self, name: str) -> Replicated | None:
            return next((r for r in self.resources if r.name == name), None)

    @dataclass(frozen=True)
    class SharingSection:
        time_slicing: TimeSlicing

    @dataclass(frozen=True)
    class ConfigWithSharing:
        sharing: SharingSection
        mig_strategy: str = "none"

    config = ConfigWithSharing(
        SharingSection(TimeSlicing((Replicated("nvidia.com/gpu", 4, "nvidia.com/gpu.shared"),)))
    )
    sharing = L.sharing_for("nvidia.com/gpu", (), config)  # type: ignore[arg-type]
    assert sharing == L.Sharing(replicas=4, strategy="time-slicing", renamed=True)
    assert L.sharing_for("nvidia.com/mig-1g.10gb", (), config) == L.NOT_SHARED  # type: ignore[arg-type]


# --- ownership and validity


@pytest.mark.parametrize(
    ("key", "owned"),
    [
        ("nvidia.com/gpu.product", True),
        ("nvidia.com/gpu.engines.ofa", True),
        ("nvidia.com/mig-1g.10gb.count", True),
        ("nvidia.com/mig-1g.10gb.me.product", True),
        ("nvidia.com/gfd.timestamp", True),
        ("nvidia.com/device-plugin.config", False),
        ("nvidia.com/gpu.deploy.device-plugin", False),
        ("nvidia.com/mig.config", False),
        ("nvidia.com/mig.config.state", False),
        ("nvidia.com/gpu.product.extra", False),
        ("example.com/gpu.product", False),
        ("kubernetes.io/hostname", False),
    ],
)
def test_owned_keys(key: str, owned: bool) -> None:
    assert L.is_owned_key(key) is owned


def test_valid_only_drops_values_the_api_would_refuse() -> None:
    good, bad = L.valid_only({"a": "ok", "b": "not ok", "c": "x" * 64, "d": "", "e": "-x"})
    assert good == {"a": "ok", "d": ""}
    assert bad == ["b='not ok'", "c='" + "x" * 64 + "'", "e='-x'"]


def test_feature_file_format() -> None:
    assert L.feature_file({"b": "2", "a": "1"}) == "a=1\nb=2\n"


@given(st.text(max_size=80))
def test_sanitised_products_are_valid_label_values(name: str) -> None:
    product = L.product_name([name], shared=False)
    assert all(c.isascii() and (c.isalnum() or c in "-_.") for c in product)


# --- the diff the reconciler sends


def test_diff_sets_changed_and_deletes_only_owned_keys() -> None:
    actual = {
        "nvidia.com/gpu.product": "OLD",
        "nvidia.com/gpu.count": "8",
        "nvidia.com/gpu.family": "hopper",  # ours, no longer wanted
        "nvidia.com/device-plugin.config": "a",  # the user's
        "kubernetes.io/hostname": "n1",
    }
    desired = {"nvidia.com/gpu.product": "NEW", "nvidia.com/gpu.count": "8", "nvidia.com/gpu.memory": "1"}
    assert L.label_diff(desired, actual) == {
        "nvidia.com/gpu.product": "NEW",
        "nvidia.com/gpu.memory": "1",
        "nvidia.com/gpu.family": None,
    }


def test_desired_labels_keep_what_the_node_has() -> None:
    actual = {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "nvidia.com/gpu.count": "8",
        L.TIMESTAMP_LABEL: "100",
    }
    desired = L.DesiredLabels({"nvidia.com/gpu.count": "7"}, keep=lambda k: k == "nvidia.com/gpu.present")
    assert L.label_diff(desired.labels, actual, timestamp="200", keep=desired.keep) == {
        "nvidia.com/gpu.count": "7",
        "nvidia.com/gpu.product": None,
        L.TIMESTAMP_LABEL: "200",
    }
    assert L.DesiredLabels({"a": "1"}).keep("nvidia.com/gpu.present") is False


def test_nvml_failure_keeps_every_gpu_label() -> None:
    """A transient NVML failure must not delete nvidia.com/gpu.present (DaemonSets select on
    it) nor any other label: the GPUs are unknown, not gone."""
    inv = inventory(*(gpu(i) for i in range(8)))
    actual = {**L.node_labels(inv, (), Config(), FACTS), "kubernetes.io/hostname": "n1"}
    failed = L.desired_when_nvml_failed()
    assert L.label_diff(failed.labels, actual, timestamp="200", keep=failed.keep) == {}
    # a node that never had labels gets none but the timestamp
    assert L.label_diff(failed.labels, {}, timestamp="200", keep=failed.keep) == {L.TIMESTAMP_LABEL: "200"}
    # while the same empty label set without `keep` would wipe them all
    assert L.label_diff({}, actual)[L.PRESENT_LABEL] is None


def test_desired_labels_tell_an_nvml_failure_from_a_node_without_gpus() -> None:
    facts = L.NodeFacts(vgpu=Vgpu(present=False))
    assert L.desired_labels(None, (), Config(), facts) == L.desired_when_nvml_failed()
    # NVML counted GPUs but could read none: unknown, not gone
    unreadable = Inventory(
        gpus=(),
        driver_version="580.159.04",
        cuda_driver_version=13000,
        problems=("GPU 0 left out: gpu-lost",),
    )
    assert L.desired_labels(unreadable, (), Config(), facts) == L.desired_when_nvml_failed()
    none = L.desired_labels(inventory(), (), Config(), facts)
    assert none == L.DesiredLabels({"nvidia.com/vgpu.present": "false"})
    inv = inventory(gpu(0))
    assert L.desired_labels(inv, (), Config(), facts).labels == L.node_labels(inv, (), Config(), facts)


def test_diff_timestamp_only_with_other_changes_or_when_missing() -> None:
    desired = {"nvidia.com/gpu.count": "1"}
    steady = {"nvidia.com/gpu.count": "1", L.TIMESTAMP_LABEL: "100"}
    assert L.label_diff(desired, steady, timestamp="200") == {}
    assert L.label_diff(desired, {"nvidia.com/gpu.count": "1"}, timestamp="200") == {L.TIMESTAMP_LABEL: "200"}
    changed = {"nvidia.com/gpu.count": "2", L.TIMESTAMP_LABEL: "100"}
    assert L.label_diff(desired, changed, timestamp="200") == {
        "nvidia.com/gpu.count": "1",
        L.TIMESTAMP_LABEL: "200",
    }
    # disabled: an old timestamp label is removed, none is written
    assert L.label_diff(desired, steady) == {L.TIMESTAMP_LABEL: None}
    assert L.label_diff({}, {}) == {}
