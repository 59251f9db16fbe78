"""MPS, the pure part: NVIDIA's directory layout, what each control daemon is started with
(cmd/mps-control-daemon/mps/daemon.go) and what Allocate adds (internal/plugin/mps.go)."""

from __future__ import annotations

import pytest

from nvplugin.core.allocation import AllocationError, Mount, check_request, container_allocation
from nvplugin.core.config import (
    Config,
    DeviceListStrategy,
    ReplicatedResource,
    ReplicatedResources,
    Sharing,
)
from nvplugin.core.inventory import Gpu, Inventory
from nvplugin.core.mps import MpsRoot, is_mps_shared, plan_mps_daemons
from nvplugin.core.resources import GPU_RESOURCE, Resource, build_resources
from tests.unit.mig_layouts import sharing

MIB = 1024 * 1024


def inventory(*memory_mib: int) -> Inventory:
    gpus = tuple(
        Gpu(
            index=i,
            uuid=f"GPU-{i}",
            minor=i,
            name="NVIDIA H200",
            memory_bytes=mib * MIB,
            compute_capability=(9, 0),
            pci_bus_id=f"00000000:{i + 1:02x}:00.0",
        )
        for i, mib in enumerate(memory_mib)
    )
    return Inventory(gpus=gpus, driver_version="580.95.05", cuda_driver_version=13000)


def mps_config(replicas: int, *, rename: bool = False, fail_gt_one: bool = True, **changes: object) -> Config:
    shared = ReplicatedResource(GPU_RESOURCE, replicas, f"{GPU_RESOURCE}.shared" if rename else None)
    return Config(
        mps_root="/run/nvidia/mps",
        sharing=Sharing(
            mps=ReplicatedResources(
                rename_by_default=rename, fail_requests_greater_than_one=fail_gt_one, resources=(shared,)
            )
        ),
    ).with_changes(**changes)


def resource(inv: Inventory, config: Config) -> Resource:
    (only,) = build_resources(inv, config)
    return only


def test_layout_is_nvidias_root() -> None:
    root = MpsRoot("/run/nvidia/mps/")
    assert root.pipe_dir("nvidia.com/gpu") == "/run/nvidia/mps/nvidia.com/gpu/pipe"
    assert root.log_dir("nvidia.com/gpu.shared") == "/run/nvidia/mps/nvidia.com/gpu.shared/log"
    assert root.started_file("nvidia.com/gpu") == "/run/nvidia/mps/nvidia.com/gpu/.started"
    assert root.shm_dir() == "/run/nvidia/mps/shm"


def test_one_daemon_per_shared_resource_with_nvidias_limits() -> None:
    inv = inventory(143771, 143771)
    (plan,) = plan_mps_daemons((resource(inv, mps_config(4)),), inv, MpsRoot("/mps"))
    assert (plan.resource, plan.gpu_uuids, plan.replicas) == (GPU_RESOURCE, ("GPU-0", "GPU-1"), 4)
    assert plan.active_thread_percentage == 25
    # The GPU's memory split between its replicas, in MiB, by CUDA ordinal.
    assert plan.pinned_memory_limits == ((0, "35942M"), (1, "35942M"))
    assert plan.environment() == {
        "CUDA_MPS_PIPE_DIRECTORY": "/mps/nvidia.com/gpu/pipe",
        "CUDA_MPS_LOG_DIRECTORY": "/mps/nvidia.com/gpu/log",
        "CUDA_VISIBLE_DEVICES": "GPU-0,GPU-1",
    }
    assert plan.settings() == (
        "set_default_device_pinned_mem_limit 0 35942M",
        "set_default_device_pinned_mem_limit 1 35942M",
        "set_default_active_thread_percentage 25",
    )
    assert plan.pid_file == "/mps/nvidia.com/gpu/pipe/nvidia-cuda-mps-control.pid"


def test_thread_percentage_is_nvidias_integer_division_and_unknown_memory_sets_no_limit() -> None:
    inv = inventory(81559, 0)
    (plan,) = plan_mps_daemons((resource(inv, mps_config(3)),), inv, MpsRoot("/mps"))
    assert plan.active_thread_percentage == 33
    assert plan.pinned_memory_limits == ((0, "27186M"),)


def test_renamed_resources_live_under_their_advertised_name() -> None:
    inv = inventory(81559)
    (plan,) = plan_mps_daemons((resource(inv, mps_config(2, rename=True)),), inv, MpsRoot("/mps"))
    assert plan.pipe_dir == "/mps/nvidia.com/gpu.shared/pipe"


def test_no_daemon_without_mps_sharing() -> None:
    inv = inventory(81559, 81559)
    plain = resource(inv, Config())
    sliced = resource(inv, Config(sharing=sharing((GPU_RESOURCE, 4))))
    assert not is_mps_shared(plain) and not is_mps_shared(sliced)
    assert plan_mps_daemons((plain,), inv, MpsRoot("/mps")) == ()
    assert plan_mps_daemons((sliced,), inv, MpsRoot("/mps")) == ()


# --- Allocate


def test_allocate_gives_the_pipe_directory_and_the_shared_shm() -> None:
    inv = inventory(81559, 81559)
    config = mps_config(4)
    shared = resource(inv, config)
    devices = check_request(shared, ["GPU-1::2"], {})
    allocation = container_allocation(devices, config, mps_resource=shared.name)
    assert allocation.envs == {
        "CUDA_MPS_PIPE_DIRECTORY": "/mps/nvidia.com/gpu/pipe",
        "NVIDIA_VISIBLE_DEVICES": "GPU-1",
    }
    assert allocation.mounts == (
        Mount(container_path="/mps/nvidia.com/gpu/pipe", host_path="/run/nvidia/mps/nvidia.com/gpu/pipe"),
        Mount(container_path="/dev/shm", host_path="/run/nvidia/mps/shm"),
    )
    # Not shared with MPS: nothing of it.
    plain = container_allocation(devices, config)
    assert plain.mounts == () and "CUDA_MPS_PIPE_DIRECTORY" not in plain.envs


def test_mps_mounts_come_first_and_survive_cdi_only_strategies() -> None:
    inv = inventory(81559)
    mounts_config = mps_config(2, device_list_strategy=(DeviceListStrategy.VOLUME_MOUNTS,))
    devices = check_request(resource(inv, mounts_config), ["GPU-0::0"], {})
    allocation = container_allocation(devices, mounts_config, mps_resource=GPU_RESOURCE)
    assert [m.container_path for m in allocation.mounts] == [
        "/mps/nvidia.com/gpu/pipe",
        "/dev/shm",
        "/var/run/nvidia-container-devices/GPU-0",
    ]
    assert allocation.envs["NVIDIA_VISIBLE_DEVICES"] == "/var/run/nvidia-container-devices"
    cdi_config = mps_config(2, device_list_strategy=(DeviceListStrategy.CDI_CRI,))
    cdi = container_allocation(devices, cdi_config, mps_resource=GPU_RESOURCE)
    assert cdi.cdi_devices == ("k8s.device-plugin.nvidia.com/gpu=GPU-0",)
    assert cdi.envs == {"CUDA_MPS_PIPE_DIRECTORY": "/mps/nvidia.com/gpu/pipe"}
    assert len(cdi.mounts) == 2


def test_allocate_for_a_renamed_resource_uses_its_advertised_name() -> None:
    inv = inventory(81559)
    config = mps_config(2, rename=True)
    shared = resource(inv, config)
    allocation = container_allocation(
        check_request(shared, ["GPU-0::1"], {}), config, mps_resource=shared.name
    )
    assert allocation.envs["CUDA_MPS_PIPE_DIRECTORY"] == "/mps/nvidia.com/gpu.shared/pipe"
    assert allocation.mounts[0].host_path == "/run/nvidia/mps/nvidia.com/gpu.shared/pipe"


def test_without_an_mps_root_allocate_says_so() -> None:
    inv = inventory(81559)
    config = mps_config(2)
    devices = check_request(resource(inv, config), ["GPU-0::1"], {})
    with pytest.raises(
        AllocationError, match=r"nvidia.com/gpu: shared with MPS but no MPS root is set \(--mps-root\)"
    ):
        container_allocation(devices, config.with_changes(mps_root=None), mps_resource=GPU_RESOURCE)


def test_more_than_one_replica_is_refused_naming_the_mps_section() -> None:
    inv = inventory(81559)
    with pytest.raises(
        AllocationError, match=r"found 2 \(sharing\.mps\.failRequestsGreaterThanOne is true\)"
    ):
        check_request(resource(inv, mps_config(4)), ["GPU-0::0", "GPU-0::1"], {})
    sliced = resource(inv, Config(sharing=sharing((GPU_RESOURCE, 4), fail_gt_one=True)))
    with pytest.raises(AllocationError, match=r"sharing\.timeSlicing\.failRequestsGreaterThanOne"):
        check_request(sliced, ["GPU-0::0", "GPU-0::1"], {})
    assert (
        len(check_request(resource(inv, mps_config(4, fail_gt_one=False)), ["GPU-0::0", "GPU-0::1"], {})) == 2
    )
