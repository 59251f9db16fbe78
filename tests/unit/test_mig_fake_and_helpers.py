"""MIG in the fake backend, discovery and the pure MIG helpers."""

from __future__ import annotations

import pytest

from nvplugin.core import mig
from nvplugin.nvml.base import NvmlGpuLost
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.fake import FakeLayout, FakeNvml, LayoutError, parse_layout
from tests.unit.mig_layouts import inventory


def test_layout_builds_h100_like_mig_devices() -> None:
    inv = inventory("mig-mixed-2gpu")
    gpu = inv.gpus[1]
    assert gpu.mig_enabled
    assert [m.profile for m in gpu.mig_devices] == ["4g.40gb", "1g.20gb", "1g.10gb+me", "1g.10gb"]
    me = gpu.mig_devices[2]
    assert me.uuid.startswith("MIG-") and len(me.uuid) == 40
    assert (me.memory_mib, me.multiprocessors, me.gi_slices, me.ci_slices) == (9856, 16, 1, 1)
    assert (me.copy_engines, me.decoders, me.encoders, me.jpeg_decoders, me.ofa_engines) == (1, 1, 0, 1, 1)
    assert me.nvidia_index == "1:2"
    # nvidia-cap minors as /proc/driver/nvidia-caps/mig-minors numbers them
    assert me.device_nodes == (
        "/dev/nvidia1",
        "/dev/nvidia-caps/nvidia-cap165",
        "/dev/nvidia-caps/nvidia-cap166",
    )
    uuids = [m.uuid for g in inv.gpus for m in g.mig_devices]
    assert len(set(uuids)) == len(uuids)


def test_full_gpu_instance_is_gi_zero() -> None:
    layout = parse_layout({"gpus": [{"migDevices": ["7g.80gb"]}]})
    (device,) = layout.gpus[0].mig_devices
    assert (device.gi_id, device.ci_id, device.profile, device.multiprocessors) == (0, 0, "7g.80gb", 132)
    assert device.device_nodes[1:] == ("/dev/nvidia-caps/nvidia-cap3", "/dev/nvidia-caps/nvidia-cap4")


def test_mig_enabled_without_devices_and_disabled_gpus() -> None:
    inv = inventory("mig-enabled-empty")
    assert [(g.mig_enabled, g.mig_devices) for g in inv.gpus] == [(False, ()), (True, ())]


@pytest.mark.parametrize(
    ("gpu", "message"),
    [
        ({"migDevices": ["1g.5gb"]}, "layout: gpus[0].migDevices[0]: expected a MIG profile among 1g.10gb, "),
        ({"migDevices": "1g.10gb"}, "layout: gpus[0].migDevices: expected a list of MIG profile names"),
        (
            {"migDevices": ["4g.40gb", "4g.40gb"]},
            "layout: gpus[0].migDevices: expected MIG devices using at most 7",
        ),
        (
            {"migDevices": ["1g.10gb+me", "1g.10gb+me"]},
            "at most 1 MIG device(s) of profile 1g.10gb+me on one GPU",
        ),
        ({"migEnabled": "yes"}, "layout: gpus[0].migEnabled: expected true or false, got 'yes'"),
        (
            {"migEnabled": False, "migDevices": ["1g.10gb"]},
            "layout: gpus[0].migEnabled: expected true (or no migEnabled)",
        ),
    ],
)
def test_bad_mig_layouts(gpu: dict[str, object], message: str) -> None:
    with pytest.raises(LayoutError) as caught:
        parse_layout({"gpus": [gpu]})
    assert message in str(caught.value)


def test_mig_faults_leave_the_gpu_out() -> None:
    nvml = FakeNvml(FakeLayout.of(2, mig_enabled=True, mig_profiles=("3g.40gb", "3g.40gb")))
    nvml.init()
    nvml.inject_device_fault(1, "device_mig_devices", "gpu-lost")
    inv = discover(nvml)
    assert [g.index for g in inv.gpus] == [0]
    assert "GPU 1 left out" in inv.problems[0]
    with pytest.raises(NvmlGpuLost):
        nvml.device_mig_devices(1)


def test_mig_not_supported_means_disabled() -> None:
    nvml = FakeNvml(FakeLayout.of(1))
    nvml.init()
    nvml.inject_device_fault(0, "device_mig_enabled", "not-supported")
    (gpu,) = discover(nvml).gpus
    assert not gpu.mig_enabled


def test_profile_names_follow_go_nvlib() -> None:
    h100 = 81559 * 1024 * 1024
    for profile in mig.H100_PROFILES.values():
        attrs = ("me",) if profile.name.endswith("+me") else ()
        name = mig.profile_name(
            profile.gi_slices, profile.ci_slices, mig.memory_size_gb(h100, profile.memory_mib), attrs
        )
        assert name == profile.name
    assert mig.profile_name(2, 1, 20) == "1c.2g.20gb"
    assert mig.profile_name(1, 1, 10, ("me",), negative=True) == "1g.10gb-me"
    a100_40 = 40960 * 1024 * 1024
    assert mig.profile_name(1, 1, mig.memory_size_gb(a100_40, 4864)) == "1g.5gb"
    assert mig.memory_size_gb(0, 100) == 0


def test_resource_suffix() -> None:
    assert mig.resource_suffix("1g.10gb+me") == "mig-1g.10gb.me"
    assert mig.resource_suffix("3g.40gb") == "mig-3g.40gb"


def test_parse_mig_minors() -> None:
    text = (
        "config 1\nmonitor 2\ngpu0/gi0/access 3\ngpu0/gi0/ci0/access 4\n"
        "gpu1/gi2/ci7/access 164\ngarbage line\n"
    )
    assert mig.parse_mig_minors(text) == {(0, 0, None): 3, (0, 0, 0): 4, (1, 2, 7): 164}
    assert mig.ci_cap_minor(1, 2, 7) == 164
