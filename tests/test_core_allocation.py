from __future__ import annotations

import pytest

from nvplugin.core.allocation import (
    AllocationError,
    check_request,
    container_allocation,
    preferred_in_order,
)
from nvplugin.core.config import Config
from nvplugin.core.inventory import Gpu, Inventory
from nvplugin.core.resources import GPU_RESOURCE, HEALTHY, UNHEALTHY, build_resources, device_health


def inventory(n: int = 4) -> Inventory:
    gpus = tuple(
        Gpu(
            index=i,
            uuid=f"GPU-{i}",
            minor=i,
            name="NVIDIA H100 80GB HBM3",
            memory_bytes=85520809984,
            compute_capability=(9, 0),
            pci_bus_id=f"00000000:{i:02x}:00.0",
            numa_node=i % 2,
        )
        for i in range(n)
    )
    return Inventory(gpus=gpus, driver_version="580.159.04", cuda_driver_version=13000)


def test_full_gpus_become_nvidia_com_gpu() -> None:
    (resource,) = build_resources(inventory(3), Config())
    assert resource.name == GPU_RESOURCE and resource.short_name == "gpu"
    assert [d.id for d in resource.devices] == ["GPU-0", "GPU-1", "GPU-2"]
    assert [d.index for d in resource.devices] == ["0", "1", "2"]
    assert resource.devices[1].device_nodes == ("/dev/nvidia1",)
    assert resource.devices[1].numa_node == 1
    assert resource.device("GPU-2") is resource.devices[2]
    assert resource.device("GPU-9") is None


def test_health_follows_the_device_or_its_gpu() -> None:
    (resource,) = build_resources(inventory(2), Config())
    assert device_health(resource.devices[0], {}) == HEALTHY
    assert device_health(resource.devices[0], {"GPU-0": "XID 79"}) == UNHEALTHY
    assert device_health(resource.devices[1], {"GPU-0": "XID 79"}) == HEALTHY


def test_check_request_returns_devices_in_request_order() -> None:
    (resource,) = build_resources(inventory(), Config())
    chosen = check_request(resource, ["GPU-3", "GPU-1"], {})
    assert [d.id for d in chosen] == ["GPU-3", "GPU-1"]


def test_check_request_names_every_problem() -> None:
    (resource,) = build_resources(inventory(), Config())
    with pytest.raises(AllocationError) as err:
        check_request(resource, ["GPU-0", "GPU-x", "GPU-0", "GPU-2", "GPU-y", "GPU-x"], {"GPU-2": "XID 48"})
    message = str(err.value)
    assert message == (
        "nvidia.com/gpu: cannot allocate: 2 unknown device IDs (not advertised by this plugin): "
        "'GPU-x', 'GPU-y'; 1 unhealthy device: 'GPU-2' (XID 48)"
    )


def test_check_request_counts_duplicates_once_as_nvidia_does() -> None:
    # NVIDIA's own test: `foo,bar,foo` gives NVIDIA_VISIBLE_DEVICES=foo,bar.
    (resource,) = build_resources(inventory(), Config())
    chosen = check_request(resource, ["GPU-2", "GPU-1", "GPU-2"], {})
    assert [d.id for d in chosen] == ["GPU-2", "GPU-1"]
    assert container_allocation(chosen, Config()).envs == {"NVIDIA_VISIBLE_DEVICES": "GPU-2,GPU-1"}


def test_check_request_quotes_a_bounded_excerpt_of_any_request() -> None:
    (resource,) = build_resources(inventory(), Config())
    huge = "GPU-" + "a" * 262_144
    many = [f"GPU-unknown-{i}" for i in range(10_000)]
    with pytest.raises(AllocationError) as err:
        check_request(resource, [huge, *many, "GPU-1"], {"GPU-1": "XID 79 " + "x" * 10})
    message = str(err.value)
    assert len(message) < 600
    assert "10001 unknown device IDs" in message
    assert f"'GPU-{'a' * 60}…' (262148 characters)" in message
    assert "'GPU-unknown-0', 'GPU-unknown-1' and 9998 more" in message
    assert "1 unhealthy device: 'GPU-1' (XID 79 xxxxxxxxxx)" in message


def test_check_request_refuses_an_empty_request() -> None:
    (resource,) = build_resources(inventory(), Config())
    with pytest.raises(AllocationError, match="names no device IDs"):
        check_request(resource, [], {})


def test_envvar_strategy_by_uuid_and_by_index() -> None:
    (resource,) = build_resources(inventory(), Config())
    devices = check_request(resource, ["GPU-2", "GPU-0"], {})
    assert container_allocation(devices, Config()).envs == {"NVIDIA_VISIBLE_DEVICES": "GPU-2,GPU-0"}
    by_index = container_allocation(devices, Config(device_id_strategy="index"))
    assert by_index.envs == {"NVIDIA_VISIBLE_DEVICES": "2,0"}
    assert by_index.mounts == () and by_index.devices == () and by_index.cdi_devices == ()


@pytest.mark.parametrize(
    ("available", "must", "size", "expected"),
    [
        (["GPU-0", "GPU-1", "GPU-2"], [], 2, ["GPU-0", "GPU-1"]),
        (["GPU-0", "GPU-1", "GPU-2"], ["GPU-2"], 2, ["GPU-2", "GPU-0"]),
        (["GPU-0", "GPU-1", "GPU-2"], ["GPU-2", "GPU-2"], 1, ["GPU-2"]),
        (["GPU-0", "GPU-1"], [], 5, ["GPU-0", "GPU-1"]),
        (["GPU-0", "GPU-0", "GPU-1"], [], 2, ["GPU-0", "GPU-1"]),
        ([], [], 0, []),
        # Must-include IDs outside `available`, and unknown IDs anywhere, are ignored.
        (["GPU-0"], ["GPU-3", "GPU-z"], 2, ["GPU-0"]),
        (["GPU-z", "GPU-1"], [], 2, ["GPU-1"]),
        # Never more than asked, whatever must_include holds.
        (["GPU-0", "GPU-1", "GPU-2"], ["GPU-2", "GPU-1"], 1, ["GPU-2"]),
        (["GPU-0", "GPU-1"], ["GPU-1"], -3, []),
    ],
)
def test_preferred_in_order_keeps_the_promises(
    available: list[str], must: list[str], size: int, expected: list[str]
) -> None:
    (resource,) = build_resources(inventory(), Config())
    assert preferred_in_order(resource, available, must, size) == expected
