from __future__ import annotations

import json
from pathlib import Path

import pytest

from nvplugin.core.config import Config
from nvplugin.core.gpufacts import (
    FABRIC_STATE_COMPLETED,
    FABRIC_STATE_IN_PROGRESS,
    VIRTUALIZATION_NONE,
    VIRTUALIZATION_PASSTHROUGH,
    VIRTUALIZATION_VGPU,
    FabricInfo,
    Vgpu,
    VgpuDevice,
    VgpuHostDriver,
)
from nvplugin.nodefacts import read_node_facts
from nvplugin.nvml import open_backend
from nvplugin.nvml.base import NvmlError, NvmlGpuLost, NvmlLibraryNotFound, NvmlNotSupported
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.fake import FakeLayout, FakeNvml, LayoutError, load_layout, parse_layout
from nvplugin.nvml.layouts import LAYOUTS


def test_default_is_an_h100_80gb_like_card() -> None:
    nvml = FakeNvml(FakeLayout.of(1))
    nvml.init()
    inv = discover(nvml)
    (gpu,) = inv.gpus
    assert gpu.name == "NVIDIA H100 80GB HBM3" and gpu.memory_bytes == 85520809984
    assert gpu.compute_capability == (9, 0) and gpu.uuid.startswith("GPU-") and len(gpu.uuid) == 40
    assert gpu.device_node == "/dev/nvidia0" and gpu.memory_mib == 81559
    assert inv.driver_version == "580.159.04" and inv.cuda_version == (13, 0)


def test_uuids_are_stable_per_seed_and_differ_between_seeds() -> None:
    a1 = [g.uuid for g in FakeLayout.of(4, seed="a").gpus]
    a2 = [g.uuid for g in FakeLayout.of(4, seed="a").gpus]
    b = [g.uuid for g in FakeLayout.of(4, seed="b").gpus]
    assert a1 == a2 and len(set(a1)) == 4 and not set(a1) & set(b)


def test_described_layout_overrides_the_template() -> None:
    layout = parse_layout(
        {
            "driverVersion": "550.54.15",
            "cudaDriverVersion": 12040,
            "gpu": {"name": "NVIDIA A100-SXM4-40GB", "memoryMiB": 40960, "computeCapability": "8.0"},
            "gpus": [{"numaNode": 0}, {"numaNode": 1, "name": "NVIDIA A100-SXM4-80GB", "memoryMiB": 81920}],
        }
    )
    nvml = FakeNvml(layout)
    nvml.init()
    inv = discover(nvml)
    assert [g.name for g in inv.gpus] == ["NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-80GB"]
    assert [g.numa_node for g in inv.gpus] == [0, 1]
    assert inv.gpus[0].compute_capability == (8, 0)
    assert inv.cuda_version == (12, 4)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "layout: expected a mapping at the top level"),
        ({"gpuz": 1}, "layout: unknown key(s) gpuz"),
        ({"count": 65}, "layout: count: expected a GPU count from 0 to 64"),
        ({"gpus": [{"memoryMiB": -1}]}, "layout: gpus[0].memoryMiB: expected a positive integer, got -1"),
        (
            {"gpus": [{"computeCapability": "nine"}]},
            'gpus[0].computeCapability: expected a version such as "9.0"',
        ),
        ({"gpus": [{"uuid": "abc"}]}, "gpus[0].uuid: expected a UUID starting with GPU-"),
        ({"gpus": [{}], "count": 2}, "layout: count: expected 1 (the length of gpus) or no count, got 2"),
        ({"faults": {"library": "gone"}}, "layout: faults.library: expected missing or init-error"),
        ({"count": 1, "faults": {"devices": {"3": {}}}}, "faults.devices: expected GPU indexes below 1"),
        (
            {"count": 1, "faults": {"devices": {"0": {"device_color": "gpu-lost"}}}},
            "expected NVML calls among",
        ),
        (
            {"count": 1, "faults": {"devices": {"0": {"device_uuid": "boom"}}}},
            "expected one of not-supported",
        ),
        ({"faults": {"node": {"vgpu_scan": "unknown"}}}, "faults.node: expected calls among vgpu_devices"),
        ({"faults": {"node": {"vgpu_devices": "boom"}}}, "faults.node.vgpu_devices: expected one of"),
        ({"gpus": [{"migCapable": "yes"}]}, "gpus[0].migCapable: expected true or false, got 'yes'"),
        (
            {"gpus": [{"migDevices": ["1g.10gb"], "migCapable": False}]},
            "gpus[0].migCapable: expected true (or no migCapable) for a MIG-enabled GPU",
        ),
        ({"gpus": [{"pciClass": "0xVGA"}]}, 'gpus[0].pciClass: expected a class code such as "0x030200"'),
        ({"gpus": [{"pciClass": -1}]}, 'gpus[0].pciClass: expected a class code such as "0x030200"'),
        ({"gpus": [{"fabric": 1}]}, "gpus[0].fabric: expected a mapping with clusterUuid"),
        ({"gpus": [{"fabric": {"clusterUuid": "nope"}}]}, "gpus[0].fabric.clusterUuid: expected a UUID"),
        (
            {"gpus": [{"fabric": {"clusterUuid": "0b1f0a54-7a2c-4d8e-9c7e-3f2a1b0c9d8e", "state": "done"}}]},
            "gpus[0].fabric.state: expected one of not-supported, not-started, in-progress, completed",
        ),
        (
            {"gpus": [{"fabric": {"clusterUuid": "0b1f0a54-7a2c-4d8e-9c7e-3f2a1b0c9d8e", "cliqueId": -1}}]},
            "gpus[0].fabric.cliqueId: expected an integer from 0 to 4294967295",
        ),
        ({"gpus": [{"virtualizationMode": "vm"}]}, "gpus[0].virtualizationMode: expected one of none,"),
        ({"gpus": [{"vgpuHostDriver": {"version": "550.90.05"}}]}, "gpus[0].vgpuHostDriver.branch: expected"),
        (
            {"gpus": [{"vgpuHostDriver": {"version": "550.90.05.123", "branch": "r550"}}]},
            "gpus[0].vgpuHostDriver.version: expected ASCII text of 1 to 10 characters",
        ),
        (
            {
                "gpus": [
                    {"virtualizationMode": "passthrough", "vgpuHostDriver": {"version": "5", "branch": "r"}}
                ]
            },
            "gpus[0].virtualizationMode: expected vgpu (or no virtualizationMode) beside vgpuHostDriver",
        ),
    ],
)
def test_layout_errors_name_the_field(data: object, message: str) -> None:
    with pytest.raises(LayoutError) as err:
        parse_layout(data)
    assert message in str(err.value)


def test_layout_files_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "l.yaml").write_text("count: 3\ngpu:\n  numaNode: 1\n")
    (tmp_path / "l.json").write_text(json.dumps({"count": 2}))
    (tmp_path / "bad.yaml").write_text("count: [\n")
    assert len(load_layout(str(tmp_path / "l.yaml")).gpus) == 3
    assert load_layout(str(tmp_path / "l.yaml")).gpus[2].numa_node == 1
    assert len(load_layout(str(tmp_path / "l.json")).gpus) == 2
    with pytest.raises(LayoutError, match=r"bad\.yaml: not valid YAML/JSON"):
        load_layout(str(tmp_path / "bad.yaml"))
    with pytest.raises(LayoutError, match="cannot read the fake GPU layout"):
        load_layout(str(tmp_path / "missing.yaml"))


def test_library_faults() -> None:
    with pytest.raises(NvmlLibraryNotFound, match="container toolkit"):
        FakeNvml(parse_layout({"faults": {"library": "missing"}})).init()
    with pytest.raises(NvmlError, match="nvmlInit"):
        FakeNvml(parse_layout({"faults": {"library": "init-error"}})).init()


def test_a_failing_gpu_is_left_out_and_reported() -> None:
    nvml = FakeNvml(
        parse_layout({"count": 3, "faults": {"devices": {"1": {"device_memory_total": "gpu-lost"}}}})
    )
    nvml.init()
    inv = discover(nvml)
    assert [g.index for g in inv.gpus] == [0, 2]
    assert len(inv.problems) == 1 and "GPU 1 left out" in inv.problems[0] and "gpu-lost" in inv.problems[0]


def test_runtime_fault_injection_and_clearing() -> None:
    nvml = FakeNvml(FakeLayout.of(2))
    nvml.init()
    nvml.inject_device_fault(0, "device_name", "not-supported")
    with pytest.raises(NvmlNotSupported):
        nvml.device_name(0)
    assert nvml.device_name(1) == "NVIDIA H100 80GB HBM3"
    nvml.inject_device_fault(1, "device_uuid", "gpu-lost")
    with pytest.raises(NvmlGpuLost):
        nvml.device_uuid(1)
    nvml.clear_device_faults()
    assert nvml.device_name(0)
    with pytest.raises(ValueError):
        nvml.inject_device_fault(0, "device_color", "gpu-lost")


def test_calls_before_init_fail_like_nvml() -> None:
    with pytest.raises(NvmlError, match="Uninitialized"):
        FakeNvml(FakeLayout.of(1)).device_uuid(0)


def test_open_backend_chooses_fake_or_real() -> None:
    assert isinstance(open_backend(Config(fake_gpus="2")), FakeNvml)
    from nvplugin.nvml.real import RealNvml

    assert isinstance(open_backend(Config()), RealNvml)


def test_real_backend_reports_a_missing_library_clearly() -> None:
    """Where no driver is installed (CI), the real backend must fail with the hint, not a traceback."""
    from nvplugin.nvml.real import RealNvml

    nvml = RealNvml(driver_root="/nonexistent-driver-root")
    try:
        nvml.init()
    except NvmlLibraryNotFound as exc:
        assert "libnvidia-ml.so.1" in str(exc) and "container toolkit" in str(exc)
    else:  # a GPU machine: the library is there, so discovery must work
        assert discover(nvml).driver_version
        nvml.shutdown()


def test_shipped_layouts_by_name() -> None:
    layout = load_layout("hgx-h100-nvswitch")
    assert len(layout.gpus) == 8
    with pytest.raises(LayoutError, match=r"one of .*hgx-h100-nvswitch"):
        load_layout("hgx-h200-imaginary")


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_shipped_layout_is_valid_and_discoverable(name: str) -> None:
    nvml = FakeNvml(load_layout(name))
    nvml.init()
    inventory = discover(nvml)
    assert inventory.gpus and not inventory.problems
    facts = read_node_facts(nvml, inventory, machine_type_file="/nonexistent", timestamp=False)
    assert facts.pci_classes == (0x030200,) * len(inventory.gpus)
    assert facts.vgpu == Vgpu(present=False)


def test_mig_capability_defaults_from_compute_capability() -> None:
    layout = parse_layout(
        {
            "gpus": [
                {},  # H100, 9.0
                {"name": "NVIDIA A100-SXM4-40GB", "computeCapability": "8.0"},
                {"name": "NVIDIA L40S", "computeCapability": "8.9"},
                {"name": "Tesla V100-SXM2-32GB", "computeCapability": "7.0"},
                {"name": "NVIDIA B200", "computeCapability": "10.0"},
                {"name": "NVIDIA RTX PRO 6000", "computeCapability": "12.0", "migCapable": True},
                {"migCapable": False},
            ]
        }
    )
    nvml = FakeNvml(layout)
    nvml.init()
    capable = []
    for index in range(len(layout.gpus)):
        try:
            assert nvml.device_mig_enabled(index) is False
            capable.append(True)
        except NvmlNotSupported:
            capable.append(False)
    assert capable == [True, True, False, False, True, True, False]
    # a MIG-enabled GPU is MIG-capable whatever its compute capability
    assert FakeLayout.of(1, compute_capability=(7, 0), mig_enabled=True).gpus[0].mig_capable


def test_label_facts_from_a_layout() -> None:
    cluster = "0b1f0a54-7a2c-4d8e-9c7e-3f2a1b0c9d8e"
    layout = parse_layout(
        {
            "gpu": {"fabric": {"clusterUuid": cluster.upper(), "cliqueId": 7}},
            "gpus": [
                {"pciClass": "0x030000"},
                {
                    "pciClass": 0x030200,
                    "fabric": {"clusterUuid": cluster, "state": "in-progress", "status": 3},
                },
                {"vgpuHostDriver": {"version": "550.90.05", "branch": "r550_00"}},
                {"virtualizationMode": "passthrough"},
            ],
        }
    )
    nvml = _initialised(layout)
    assert [nvml.device_pci_class(i) for i in range(4)] == [0x030000, 0x030200, 0x030200, 0x030200]
    assert nvml.device_fabric_info(0) == FabricInfo(cluster, 7, FABRIC_STATE_COMPLETED, 0)
    assert nvml.device_fabric_info(1) == FabricInfo(cluster, 0, FABRIC_STATE_IN_PROGRESS, 3)
    assert [nvml.device_virtualization_mode(i) for i in range(4)] == [
        VIRTUALIZATION_NONE,
        VIRTUALIZATION_NONE,
        VIRTUALIZATION_VGPU,
        VIRTUALIZATION_PASSTHROUGH,
    ]
    assert nvml.vgpu_devices() == (VgpuDevice("0000:38:00.0", VgpuHostDriver("550.90.05", "r550_00")),)
    assert layout.gpus[3].fabric == FabricInfo(cluster, 7, FABRIC_STATE_COMPLETED, 0)  # the template's
    with pytest.raises(NvmlNotSupported, match="no GPU fabric"):
        _initialised(FakeLayout.of(1)).device_fabric_info(0)


def _initialised(layout: FakeLayout) -> FakeNvml:
    nvml = FakeNvml(layout)
    nvml.init()
    return nvml


def test_label_fact_faults() -> None:
    nvml = _initialised(parse_layout({"count": 2, "faults": {"node": {"vgpu_devices": "not-supported"}}}))
    with pytest.raises(NvmlNotSupported, match="injected fault"):
        nvml.vgpu_devices()
    for call in ("device_pci_class", "device_fabric_info", "device_virtualization_mode"):
        nvml.inject_device_fault(1, call, "unknown")
        with pytest.raises(NvmlError, match=r"injected fault .* on GPU 1"):
            getattr(nvml, call)(1)
    nvml.lose_gpu(0)
    with pytest.raises(NvmlGpuLost):
        nvml.device_pci_class(0)
