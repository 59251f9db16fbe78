"""MPS sharing in the resource plan, with NVIDIA's semantics: replicas as `<UUID>::<n>` like
time-slicing, `sharing-strategy=mps` labels, and NVIDIA's refusals (MIG devices: its plugin's
getMPSOptions; more replicas than an MPS server takes clients: its mps-control-daemon)."""

from __future__ import annotations

import pytest

from nvplugin.core import labels as L
from nvplugin.core.config import (
    ConfigError,
    ReplicatedResource,
    ReplicatedResources,
    Sharing,
    SharingStrategy,
)
from nvplugin.core.resources import (
    GPU_RESOURCE,
    MAX_DEVICES_PER_RESOURCE,
    MigConfigurationError,
    build_resources,
)
from tests.unit.mig_layouts import config, inventory, sharing


def mps(replicas: int, name: str = GPU_RESOURCE, rename: bool = False) -> Sharing:
    resource = ReplicatedResource(name, replicas, f"{name}.shared" if rename else None)
    return Sharing(mps=ReplicatedResources(fail_requests_greater_than_one=True, resources=(resource,)))


def test_mps_replicas_look_like_time_slicing_and_say_mps() -> None:
    inv = inventory("h100-8gpu")
    (gpus,) = build_resources(inv, config(sharing=mps(4), mps_root="/run/nvidia/mps"))
    assert gpus.name == GPU_RESOURCE and len(gpus.devices) == 32
    assert [d.id for d in gpus.devices[:2]] == [f"{inv.gpus[0].uuid}::0", f"{inv.gpus[0].uuid}::1"]
    assert gpus.sharing_strategy is SharingStrategy.MPS
    assert (gpus.replicas, gpus.fail_requests_greater_than_one) == (4, True)
    (renamed,) = build_resources(inv, config(sharing=mps(2, rename=True)))
    assert (renamed.name, renamed.renamed_from) == ("nvidia.com/gpu.shared", GPU_RESOURCE)


def test_time_slicing_replicas_say_time_slicing() -> None:
    (gpus,) = build_resources(inventory("h100-8gpu"), config(sharing=sharing((GPU_RESOURCE, 2))))
    assert gpus.sharing_strategy is SharingStrategy.TIME_SLICING
    (plain,) = build_resources(inventory("h100-8gpu"), config())
    assert plain.sharing_strategy is SharingStrategy.NONE


def test_labels_say_mps_and_shared() -> None:
    inv = inventory("h100-8gpu")
    cfg = config(sharing=mps(4))
    labels = L.node_labels(inv, build_resources(inv, cfg), cfg, L.NodeFacts())
    assert labels["nvidia.com/gpu.sharing-strategy"] == "mps"
    assert labels["nvidia.com/gpu.replicas"] == "4"
    assert labels["nvidia.com/gpu.product"].endswith("-SHARED")
    assert labels["nvidia.com/mps.capable"] == "true"


def test_mps_with_mig_devices_is_refused_as_nvidia_does() -> None:
    with pytest.raises(
        MigConfigurationError, match=r"sharing\.mps: MPS sharing is not supported for MIG devices"
    ):
        build_resources(inventory("mig-single-8gpu"), config(mig_strategy="single", sharing=mps(2)))
    # mig-strategy none advertises MIG-enabled GPUs whole: MPS applies to them.
    (gpus,) = build_resources(inventory("mig-and-full"), config(sharing=mps(2)))
    assert len(gpus.devices) == 8


@pytest.mark.parametrize(("layout", "limit"), [("h100-8gpu", 48), ("dgx1-v100-cube-mesh", 16)])
def test_mps_replicas_are_bounded_by_the_servers_clients(layout: str, limit: int) -> None:
    inv = inventory(layout)
    assert len(build_resources(inv, config(sharing=mps(limit)))[0].devices) == limit * len(inv.gpus)
    with pytest.raises(
        ConfigError, match=rf"sharing.mps: nvidia.com/gpu: {limit + 1} replicas exceed the {limit} clients"
    ):
        build_resources(inv, config(sharing=mps(limit + 1)))


def test_advertised_devices_are_bounded() -> None:
    inv = inventory("mig-single-8gpu")
    with pytest.raises(ConfigError) as caught:
        build_resources(inv, config(mig_strategy="single", sharing=sharing((GPU_RESOURCE, 1024))))
    assert str(caught.value) == (
        f"sharing.timeSlicing: nvidia.com/gpu: 56 devices x 1024 replicas would advertise 57344 devices; at most "
        f"{MAX_DEVICES_PER_RESOURCE} fit in one kubelet message: lower replicas"
    )
