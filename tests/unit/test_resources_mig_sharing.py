"""build_resources over every MIG strategy x sharing combination on the shipped fake layouts."""

from __future__ import annotations

import pytest

from nvplugin.core.config import ConfigError
from nvplugin.core.resources import (
    GPU_RESOURCE,
    MigConfigurationError,
    build_resources,
    device_health,
    plan_resources,
)
from tests.unit.mig_layouts import config, inventory, sharing

LAYOUT_NAMES = ("h100-8gpu", "mig-mixed-2gpu", "mig-and-full", "mig-single-8gpu", "mig-enabled-empty")


def names_and_counts(resources):
    return {r.name: len(r.devices) for r in resources}


# (layout, strategy) -> the resources NVIDIA advertises, or the error it refuses with.
EXPECTED = {
    ("h100-8gpu", "none"): {GPU_RESOURCE: 8},
    ("h100-8gpu", "single"): {GPU_RESOURCE: 8},
    ("h100-8gpu", "mixed"): {GPU_RESOURCE: 8},
    ("mig-mixed-2gpu", "none"): {GPU_RESOURCE: 2},
    ("mig-mixed-2gpu", "single"): "all MIG devices on the node must be identical",
    ("mig-mixed-2gpu", "mixed"): {
        "nvidia.com/mig-1g.10gb": 3,
        "nvidia.com/mig-1g.10gb.me": 1,
        "nvidia.com/mig-1g.20gb": 1,
        "nvidia.com/mig-2g.20gb": 1,
        "nvidia.com/mig-3g.40gb": 1,
        "nvidia.com/mig-4g.40gb": 1,
    },
    ("mig-and-full", "none"): {GPU_RESOURCE: 4},
    ("mig-and-full", "single"): "all GPUs on the node must have the same MIG mode",
    ("mig-and-full", "mixed"): {GPU_RESOURCE: 2, "nvidia.com/mig-1g.10gb": 14},
    ("mig-single-8gpu", "none"): {GPU_RESOURCE: 8},
    ("mig-single-8gpu", "single"): {GPU_RESOURCE: 56},
    ("mig-single-8gpu", "mixed"): {"nvidia.com/mig-1g.10gb": 56},
    ("mig-enabled-empty", "none"): {GPU_RESOURCE: 2},
    ("mig-enabled-empty", "single"): "has MIG enabled but no MIG devices configured",
    ("mig-enabled-empty", "mixed"): {GPU_RESOURCE: 1},
}

SHARINGS = {
    "no-sharing": lambda names: sharing(),
    "replicas-4": lambda names: sharing(*((n, 4) for n in names)),
    "renamed-2": lambda names: sharing(*((n, 2) for n in names), rename=True),
    "gpu-only-3": lambda names: sharing((GPU_RESOURCE, 3)),
}


@pytest.mark.parametrize("sharing_name", SHARINGS)
@pytest.mark.parametrize("strategy", ("none", "single", "mixed"))
@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_every_strategy_and_sharing(layout: str, strategy: str, sharing_name: str) -> None:
    inv = inventory(layout)
    expected = EXPECTED[(layout, strategy)]
    if isinstance(expected, str):
        with pytest.raises(MigConfigurationError, match=expected) as caught:
            build_resources(inv, config(mig_strategy=strategy, sharing=SHARINGS[sharing_name]([])))
        assert "GPU" in str(caught.value)  # names the GPU(s) at fault
        return
    shared = SHARINGS[sharing_name](list(expected))
    resources = build_resources(inv, config(mig_strategy=strategy, sharing=shared))
    want: dict[str, int] = {}
    for name, count in expected.items():
        rule = shared.time_slicing.for_resource(name)
        if rule is None:
            want[name] = count
        else:
            want[rule.advertised_name] = count * rule.replicas
    assert names_and_counts(resources) == want
    for resource in resources:
        ids = [d.id for d in resource.devices]
        assert len(set(ids)) == len(ids)
        rule = shared.time_slicing.for_resource(resource.renamed_from or resource.name)
        assert resource.replicas == (rule.replicas if rule else 1)
        assert resource.sharing_strategy == ("time-slicing" if rule else "none")
        if rule:
            # <UUID>::<n>, n from 0, every replica keeps its device's facts
            for device in resource.devices:
                assert device.id == f"{device.uuid}::{device.replica}"
                assert 0 <= device.replica < rule.replicas
        else:
            assert all(d.id == d.uuid and d.replica == 0 for d in resource.devices)


def test_none_advertises_mig_enabled_gpus_whole() -> None:
    inv = inventory("mig-mixed-2gpu")
    (gpu,) = build_resources(inv, config(mig_strategy="none"))
    assert [d.id for d in gpu.devices] == [g.uuid for g in inv.gpus]
    assert [d.device_nodes for d in gpu.devices] == [("/dev/nvidia0",), ("/dev/nvidia1",)]


def test_mixed_mig_devices_carry_index_parent_and_cap_nodes() -> None:
    inv = inventory("mig-mixed-2gpu")
    resources = {r.name: r for r in build_resources(inv, config(mig_strategy="mixed"))}
    (three_g,) = resources["nvidia.com/mig-3g.40gb"].devices
    mig = inv.gpus[0].mig_devices[0]
    assert three_g.id == mig.uuid and three_g.uuid.startswith("MIG-")
    assert three_g.index == "0:0"
    assert three_g.gpu_uuid == inv.gpus[0].uuid
    assert three_g.numa_node == 0
    assert three_g.device_nodes == (
        "/dev/nvidia0",
        "/dev/nvidia-caps/nvidia-cap12",
        "/dev/nvidia-caps/nvidia-cap13",
    )
    (me,) = resources["nvidia.com/mig-1g.10gb.me"].devices
    assert me.index == "1:2" and me.numa_node == 1


def test_single_error_names_the_differing_devices() -> None:
    with pytest.raises(MigConfigurationError) as caught:
        build_resources(inventory("mig-mixed-2gpu"), config(mig_strategy="single"))
    message = str(caught.value)
    assert "MIG device 0:1 on GPU 0" in message
    assert "is 2g.20gb while MIG device 0:0 on GPU 0 is 3g.40gb" in message
    assert "mig-strategy mixed" in message


def test_single_error_names_mig_and_full_gpus() -> None:
    inv = inventory("mig-and-full")
    with pytest.raises(MigConfigurationError) as caught:
        build_resources(inv, config(mig_strategy="single"))
    message = str(caught.value)
    assert f"GPU 0 ({inv.gpus[0].uuid}), 1 ({inv.gpus[1].uuid}) has MIG disabled" in message
    assert f"GPU 2 ({inv.gpus[2].uuid}), 3 ({inv.gpus[3].uuid}) has MIG enabled" in message


def test_single_refuses_a_mig_gpu_without_mig_devices_mixed_warns() -> None:
    inv = inventory("mig-enabled-empty")
    with pytest.raises(MigConfigurationError, match=f"GPU 1 \\({inv.gpus[1].uuid}\\) has MIG enabled"):
        build_resources(inv, config(mig_strategy="single"))
    plan = plan_resources(inv, config(mig_strategy="mixed"))
    assert [d.id for d in plan.resources[0].devices] == [inv.gpus[0].uuid]
    assert plan.warnings == (
        f"GPU 1 ({inv.gpus[1].uuid}) has MIG enabled but no MIG devices configured: nothing on it is "
        f"advertised",
    )


def test_single_is_a_config_error_so_start_and_reload_refuse_it() -> None:
    assert issubclass(MigConfigurationError, ConfigError)


def test_single_refuses_same_profile_with_different_attributes() -> None:
    from dataclasses import replace

    inv = inventory("mig-single-8gpu")
    gpu = inv.gpus[3]
    odd = replace(gpu.mig_devices[2], multiprocessors=14)
    inv = replace(
        inv,
        gpus=(
            *inv.gpus[:3],
            replace(gpu, mig_devices=(*gpu.mig_devices[:2], odd, *gpu.mig_devices[3:])),
            *inv.gpus[4:],
        ),
    )
    with pytest.raises(
        MigConfigurationError, match=r"3:2 on GPU 3 .* is 1g.10gb .* with different attributes"
    ):
        build_resources(inv, config(mig_strategy="single"))


def test_mixed_refuses_compute_instance_smaller_than_its_gpu_instance() -> None:
    from dataclasses import replace

    inv = inventory("mig-mixed-2gpu")
    gpu = inv.gpus[0]
    split = replace(gpu.mig_devices[1], profile="1c.2g.20gb", ci_slices=1)
    inv = replace(inv, gpus=(replace(gpu, mig_devices=(gpu.mig_devices[0], split)), inv.gpus[1]))
    with pytest.raises(MigConfigurationError, match=r"MIG device 0:1 .* has profile 1c.2g.20gb"):
        build_resources(inv, config(mig_strategy="mixed"))
    # single takes it as long as every device is alike; none ignores MIG devices
    assert len(build_resources(inv, config(mig_strategy="none"))[0].devices) == 2


def test_replicas_are_numbered_from_zero_and_grouped_by_device() -> None:
    inv = inventory("h100-8gpu")
    (gpu,) = build_resources(inv, config(sharing=sharing((GPU_RESOURCE, 2))))
    first = inv.gpus[0].uuid
    assert [d.id for d in gpu.devices[:3]] == [f"{first}::0", f"{first}::1", f"{inv.gpus[1].uuid}::0"]
    assert gpu.devices[1].index == "0" and gpu.devices[1].device_nodes == ("/dev/nvidia0",)
    assert gpu.devices[5].numa_node == 0 and gpu.devices[9].numa_node == 1


def test_rename_by_default_advertises_dot_shared_only() -> None:
    resources = build_resources(
        inventory("h100-8gpu"), config(sharing=sharing((GPU_RESOURCE, 4), rename=True))
    )
    assert [r.name for r in resources] == ["nvidia.com/gpu.shared"]
    assert resources[0].renamed_from == GPU_RESOURCE


def test_per_resource_replicas_in_mixed() -> None:
    shared = sharing(("nvidia.com/mig-1g.10gb", 4), (GPU_RESOURCE, 2), fail_gt_one=True)
    resources = {
        r.name: r
        for r in build_resources(inventory("mig-and-full"), config(mig_strategy="mixed", sharing=shared))
    }
    assert len(resources[GPU_RESOURCE].devices) == 4
    assert len(resources["nvidia.com/mig-1g.10gb"].devices) == 56
    assert resources["nvidia.com/mig-1g.10gb"].fail_requests_greater_than_one


def test_sharing_a_resource_the_node_lacks_warns() -> None:
    plan = plan_resources(inventory("h100-8gpu"), config(sharing=sharing(("nvidia.com/mig-1g.10gb", 2))))
    assert plan.resources[0].replicas == 1
    assert plan.warnings == (
        "sharing.timeSlicing: resource nvidia.com/mig-1g.10gb has no devices on this node "
        "(advertised: nvidia.com/gpu); nothing to share",
    )


def test_replicas_share_the_health_of_their_gpu_and_mig_device() -> None:
    inv = inventory("mig-single-8gpu")
    (gpu,) = build_resources(inv, config(mig_strategy="single", sharing=sharing((GPU_RESOURCE, 16))))
    assert len(gpu.devices) == 896
    mig = inv.gpus[2].mig_devices[3]
    sick = {mig.uuid: "XID 48"}
    unhealthy = [d.id for d in gpu.devices if device_health(d, sick) == "Unhealthy"]
    assert unhealthy == [f"{mig.uuid}::{n}" for n in range(16)]
    whole_gpu = {inv.gpus[5].uuid: "fell off the bus"}
    assert sum(device_health(d, whole_gpu) == "Unhealthy" for d in gpu.devices) == 7 * 16


def test_no_gpus_still_gives_an_empty_gpu_resource() -> None:
    from nvplugin.core.inventory import EMPTY_INVENTORY

    for strategy in ("none", "single", "mixed"):
        assert names_and_counts(build_resources(EMPTY_INVENTORY, config(mig_strategy=strategy))) == {
            GPU_RESOURCE: 0
        }
