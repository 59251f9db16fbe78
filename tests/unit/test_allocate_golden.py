"""Allocate responses, field for field against what NVIDIA's plugin (v0.17-v0.20) returns.

Each golden below is NVIDIA's ContainerAllocateResponse for the same inputs, derived from its
internal/plugin/server.go: getAllocateResponse, uniqueDeviceIDsFromAnnotatedDeviceIDs (replica
suffix "::n" stripped, IDs de-duplicated), updateResponseForCDI (device names
"k8s.device-plugin.nvidia.com/gpu=<id>", annotation key "cdi.k8s.io/nvidia-device-plugin_<response
id>", custom prefix swapped in), updateResponseForDeviceListEnvVar, updateResponseForDeviceMounts
and apiDeviceSpecs (optional control nodes only when present, then the devices' paths, host
path = devRoot joined with the path, permissions "rw").

Two deliberate differences, both where NVIDIA's output depends on Go map iteration order:
with DEVICE_ID_STRATEGY=index NVIDIA lists indexes in map order (we keep request order), and
its DeviceSpecs list each device's paths in map order with a copy per replica (we keep request
order and list each node once).
Fields are written as the protobuf message carries them; empty fields are left out.
"""

from __future__ import annotations

import pytest

from nvplugin.api import v1beta1
from nvplugin.core.allocation import (
    AllocationError,
    ContainerAllocation,
    check_request,
    container_allocation,
)
from nvplugin.core.resources import GPU_RESOURCE, build_resources
from nvplugin.plugin.server import to_proto_allocation
from tests.unit.mig_layouts import config, inventory, sharing

GPU0 = "GPU-3a6fb882-2a7b-4f06-b687-cb5077d1bd5c"
GPU1 = "GPU-085b8856-4e14-4bdf-b19f-d40919904be8"
GPU2 = "GPU-dc8e90f9-f0d8-4457-9163-698482b31214"
MIG_0_2 = "MIG-934096bd-fdff-4267-af6d-a1a2a0434e0e"  # 1g.10gb on GPU 0 (minor 0), GI 3
MIG_1_3 = "MIG-f898257f-87a6-4670-8dd4-e1d5de6267bb"  # 1g.10gb on GPU 1 (minor 1), GI 4
RESPONSE_ID = "7c5b5b8e-2f0e-4a0a-9d38-6f1b1c9a1e01"
CDI = "k8s.device-plugin.nvidia.com/gpu"
ROOT = "/var/run/nvidia-container-devices"


def to_message(allocation: ContainerAllocation) -> v1beta1.ContainerAllocateResponse:
    """What the server sends: the plugin server's own mapping."""
    return to_proto_allocation(allocation)


def as_fields(allocation: ContainerAllocation) -> dict[str, object]:
    message = to_message(allocation)
    # Round-trip through the wire format: what the kubelet decodes is what we compare.
    decoded = v1beta1.ContainerAllocateResponse.parse(bytes(message))
    fields: dict[str, object] = {}
    if decoded.envs:
        fields["envs"] = dict(decoded.envs)
    if decoded.mounts:
        fields["mounts"] = [
            {"container_path": m.container_path, "host_path": m.host_path}
            | ({"read_only": True} if m.read_only else {})
            for m in decoded.mounts
        ]
    if decoded.devices:
        fields["devices"] = [
            {"container_path": d.container_path, "host_path": d.host_path, "permissions": d.permissions}
            for d in decoded.devices
        ]
    if decoded.annotations:
        fields["annotations"] = dict(decoded.annotations)
    if decoded.cdi_devices:
        fields["cdi_devices"] = [{"name": c.name} for c in decoded.cdi_devices]
    return fields


def spec(path: str, root: str = "") -> dict[str, str]:
    return {"container_path": path, "host_path": root + path, "permissions": "rw"}


FULL = ("h100-8gpu", "none", None)
SHARED = ("h100-8gpu", "none", (GPU_RESOURCE, 4))
MIXED = ("mig-mixed-2gpu", "mixed", None)

GOLDENS = [
    pytest.param(
        FULL,
        GPU_RESOURCE,
        [GPU0, GPU2],
        {},
        {"envs": {"NVIDIA_VISIBLE_DEVICES": f"{GPU0},{GPU2}"}},
        id="envvar-uuid",
    ),
    pytest.param(
        FULL,
        GPU_RESOURCE,
        [GPU2, GPU0],
        {"device_id_strategy": "index"},
        {"envs": {"NVIDIA_VISIBLE_DEVICES": "2,0"}},
        id="envvar-index",
    ),
    pytest.param(
        SHARED,
        GPU_RESOURCE,
        [f"{GPU0}::1", f"{GPU0}::3", f"{GPU1}::0"],
        {},
        {"envs": {"NVIDIA_VISIBLE_DEVICES": f"{GPU0},{GPU1}"}},
        id="replicas-stripped-deduplicated",
    ),
    pytest.param(
        SHARED,
        GPU_RESOURCE,
        [f"{GPU1}::2", f"{GPU1}::0"],
        {"device_id_strategy": "index"},
        {"envs": {"NVIDIA_VISIBLE_DEVICES": "1"}},
        id="replicas-index",
    ),
    pytest.param(
        MIXED,
        "nvidia.com/mig-1g.10gb",
        [MIG_0_2, MIG_1_3],
        {"device_list_strategy": ("volume-mounts",)},
        {
            "envs": {"NVIDIA_VISIBLE_DEVICES": ROOT},
            "mounts": [
                {"container_path": f"{ROOT}/{MIG_0_2}", "host_path": "/dev/null"},
                {"container_path": f"{ROOT}/{MIG_1_3}", "host_path": "/dev/null"},
            ],
        },
        id="volume-mounts-mig",
    ),
    pytest.param(
        SHARED,
        GPU_RESOURCE,
        [f"{GPU0}::0", f"{GPU0}::2"],
        {"device_list_strategy": ("envvar", "volume-mounts")},
        {
            "envs": {"NVIDIA_VISIBLE_DEVICES": ROOT},
            "mounts": [{"container_path": f"{ROOT}/{GPU0}", "host_path": "/dev/null"}],
        },
        id="envvar-and-volume-mounts",
    ),
    pytest.param(
        MIXED,
        "nvidia.com/mig-1g.10gb",
        [MIG_0_2, MIG_1_3],
        {"device_list_strategy": ("cdi-annotations",), "pass_device_specs": True},
        {
            "annotations": {
                f"cdi.k8s.io/nvidia-device-plugin_{RESPONSE_ID}": f"{CDI}={MIG_0_2},{CDI}={MIG_1_3}"
            }
        },
        id="cdi-annotations-only",
    ),
    pytest.param(
        FULL,
        GPU_RESOURCE,
        [GPU1],
        {"device_list_strategy": ("cdi-annotations",), "cdi_annotation_prefix": "nvidia.cdi.k8s.io/"},
        {"annotations": {f"nvidia.cdi.k8s.io/nvidia-device-plugin_{RESPONSE_ID}": f"{CDI}={GPU1}"}},
        id="cdi-annotations-custom-prefix",
    ),
    pytest.param(
        SHARED,
        GPU_RESOURCE,
        [f"{GPU2}::3", f"{GPU0}::0"],
        {"device_list_strategy": ("cdi-cri",)},
        {"cdi_devices": [{"name": f"{CDI}={GPU2}"}, {"name": f"{CDI}={GPU0}"}]},
        id="cdi-cri",
    ),
    pytest.param(
        MIXED,
        "nvidia.com/mig-1g.10gb",
        [MIG_1_3, MIG_0_2],
        {"device_list_strategy": ("envvar", "cdi-cri", "cdi-annotations"), "device_id_strategy": "index"},
        {
            "envs": {"NVIDIA_VISIBLE_DEVICES": "1:3,0:2"},
            "annotations": {f"cdi.k8s.io/nvidia-device-plugin_{RESPONSE_ID}": f"{CDI}=1:3,{CDI}=0:2"},
            "cdi_devices": [{"name": f"{CDI}=1:3"}, {"name": f"{CDI}=0:2"}],
        },
        id="envvar-cdi-both-index",
    ),
    pytest.param(
        MIXED,
        "nvidia.com/mig-1g.10gb",
        [MIG_0_2, MIG_1_3],
        {"pass_device_specs": True, "nvidia_driver_root": "/run/nvidia/driver"},
        {
            "envs": {"NVIDIA_VISIBLE_DEVICES": f"{MIG_0_2},{MIG_1_3}"},
            "devices": [
                spec("/dev/nvidiactl", "/run/nvidia/driver"),
                spec("/dev/nvidia-uvm", "/run/nvidia/driver"),
                spec("/dev/nvidia0", "/run/nvidia/driver"),
                spec("/dev/nvidia-caps/nvidia-cap30", "/run/nvidia/driver"),
                spec("/dev/nvidia-caps/nvidia-cap31", "/run/nvidia/driver"),
                spec("/dev/nvidia1", "/run/nvidia/driver"),
                spec("/dev/nvidia-caps/nvidia-cap174", "/run/nvidia/driver"),
                spec("/dev/nvidia-caps/nvidia-cap175", "/run/nvidia/driver"),
            ],
        },
        id="pass-device-specs-mig-driver-root",
    ),
    pytest.param(
        SHARED,
        GPU_RESOURCE,
        [f"{GPU0}::0", f"{GPU0}::1"],
        {"pass_device_specs": True, "nvidia_driver_root": "/run/nvidia/driver", "dev_root": "/"},
        {
            "envs": {"NVIDIA_VISIBLE_DEVICES": GPU0},
            "devices": [spec("/dev/nvidiactl"), spec("/dev/nvidia-uvm"), spec("/dev/nvidia0")],
        },
        id="pass-device-specs-replicas-dev-root",
    ),
]


@pytest.mark.parametrize(("setup", "resource_name", "request_ids", "changes", "golden"), GOLDENS)
def test_allocate_response_matches_nvidia(setup, resource_name, request_ids, changes, golden) -> None:
    layout, strategy, shared = setup
    cfg = config(mig_strategy=strategy, sharing=sharing(shared) if shared else sharing(), **changes)
    resources = {r.name: r for r in build_resources(inventory(layout), cfg)}
    devices = check_request(resources[resource_name], request_ids, {})
    allocation = container_allocation(
        devices,
        cfg,
        existing_control_nodes={"/dev/nvidiactl", "/dev/nvidia-uvm"},  # no uvm-tools, no modeset
        response_id=RESPONSE_ID,
    )
    assert as_fields(allocation) == golden


def test_all_control_nodes_when_all_exist_and_none_when_none_do() -> None:
    cfg = config(pass_device_specs=True)
    (gpu,) = build_resources(inventory("h100-8gpu"), cfg)
    devices = check_request(gpu, [GPU1], {})
    every = container_allocation(devices, cfg)
    assert [d.container_path for d in every.devices] == [
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
        "/dev/nvidia-modeset",
        "/dev/nvidia1",
    ]
    bare = container_allocation(devices, cfg, existing_control_nodes=frozenset())
    assert [d.container_path for d in bare.devices] == ["/dev/nvidia1"]


def test_cdi_annotation_gets_a_fresh_response_id_each_time() -> None:
    cfg = config(device_list_strategy=("cdi-annotations",))
    (gpu,) = build_resources(inventory("h100-8gpu"), cfg)
    devices = check_request(gpu, [GPU0], {})
    first = container_allocation(devices, cfg).annotations
    second = container_allocation(devices, cfg).annotations
    assert len(first) == len(second) == 1
    assert first.keys() != second.keys()
    (key,) = first
    assert key.startswith("cdi.k8s.io/nvidia-device-plugin_") and len(key.partition("/")[2]) <= 63


def test_fail_requests_greater_than_one_refuses_two_replicas() -> None:
    cfg = config(sharing=sharing((GPU_RESOURCE, 4), fail_gt_one=True))
    (gpu,) = build_resources(inventory("h100-8gpu"), cfg)
    with pytest.raises(AllocationError) as caught:
        check_request(gpu, [f"{GPU0}::0", f"{GPU1}::0"], {})
    assert str(caught.value) == (
        "nvidia.com/gpu: cannot allocate: maximum request size for shared resources is 1; found 2 "
        "(sharing.timeSlicing.failRequestsGreaterThanOne is true)"
    )
    assert [d.id for d in check_request(gpu, [f"{GPU0}::2"], {})] == [f"{GPU0}::2"]


def test_without_fail_requests_greater_than_one_two_replicas_are_fine() -> None:
    cfg = config(sharing=sharing((GPU_RESOURCE, 4)))
    (gpu,) = build_resources(inventory("h100-8gpu"), cfg)
    assert len(check_request(gpu, [f"{GPU0}::0", f"{GPU0}::1"], {})) == 2


def test_bare_uuid_is_unknown_when_the_resource_is_shared() -> None:
    cfg = config(sharing=sharing((GPU_RESOURCE, 2)))
    (gpu,) = build_resources(inventory("h100-8gpu"), cfg)
    with pytest.raises(AllocationError, match=f"unknown device ID .*: '{GPU0}'"):
        check_request(gpu, [GPU0], {})


def test_unhealthy_gpu_refuses_its_replicas_and_mig_devices() -> None:
    cfg = config(mig_strategy="mixed", sharing=sharing(("nvidia.com/mig-1g.10gb", 2)))
    inv = inventory("mig-mixed-2gpu")
    resources = {r.name: r for r in build_resources(inv, cfg)}
    shared = resources["nvidia.com/mig-1g.10gb"]
    with pytest.raises(AllocationError, match=r"unhealthy device: .*XID 79"):
        check_request(shared, [f"{MIG_0_2}::1"], {inv.gpus[0].uuid: "XID 79"})
    assert len(check_request(shared, [f"{MIG_1_3}::1"], {inv.gpus[0].uuid: "XID 79"})) == 1
