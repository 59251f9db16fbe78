"""The fabric and vGPU rules of core.gpufacts, against GFD v0.20's (internal/vgpu, go-nvlib)."""

from __future__ import annotations

import pytest

from nvplugin.core import gpufacts as G
from tests.pciconfig import config_space, passthrough_capability, vgpu_capability

CLUSTER = "0b1f0a54-7a2c-4d8e-9c7e-3f2a1b0c9d8e"


def test_vgpu_capability_gives_the_host_driver() -> None:
    config = config_space(vgpu_capability("460.16", "r460_00"))
    capability = G.vendor_capability(config)
    assert capability is not None
    # GFD's own fixture has these figures: a 27-byte capability, id 9, "VF" at 3-4.
    assert len(capability) == 27 and capability[0] == 9 and G.is_vgpu_capability(capability)
    assert G.host_driver(capability) == G.VgpuHostDriver("460.16", "r460_00")
    assert G.vgpu_device("0000:00:05.0", config) == G.VgpuDevice(
        "0000:00:05.0", G.VgpuHostDriver("460.16", "r460_00")
    )


def test_host_driver_record_after_other_records() -> None:
    capability = G.vendor_capability(config_space(vgpu_capability(records=bytes([7, 4, 0xAA, 0xBB]))))
    assert capability is not None
    assert G.host_driver(capability) == G.VgpuHostDriver("550.90.05", "r550_00")


def test_passthrough_gpu_is_not_a_vgpu() -> None:
    config = config_space(passthrough_capability())
    capability = G.vendor_capability(config)
    assert capability is not None and len(capability) == 20
    assert not G.is_vgpu_capability(capability)
    assert G.vgpu_device("0000:18:00.0", config) is None


def test_no_vendor_capability() -> None:
    assert G.vendor_capability(config_space(None)) is None
    # the status register says there is no capability list at all
    assert G.vendor_capability(config_space(vgpu_capability(), capability_list=False)) is None


def test_capability_walk_stops_at_loops_and_broken_chains() -> None:
    looped = bytearray(config_space(None))
    looped[0x69] = 0x60  # MSI points back to power management
    assert G.vendor_capability(bytes(looped)) is None
    broken = bytearray(config_space(vgpu_capability()))
    broken[0x68] = 0xFF
    assert G.vendor_capability(bytes(broken)) is None


def test_malformed_host_driver_records_give_none() -> None:
    def capability(records: bytes) -> bytes:
        body = b"VF" + records
        return bytes([9, 0, 3 + len(body)]) + body

    assert G.host_driver(capability(bytes([7, 0]))) is None  # a zero-length record (GFD spins)
    assert G.host_driver(capability(bytes([7, 40]))) is None  # a record running past the end
    assert G.host_driver(capability(bytes([0, 22]) + b"550")) is None  # a truncated host record
    assert G.host_driver(capability(b"")) is None


def test_partial_config_space_is_refused() -> None:
    with pytest.raises(ValueError, match="256 bytes or more, got 64"):
        G.vendor_capability(config_space(vgpu_capability(), size=64))


def test_vgpu_of_devices() -> None:
    driver = G.VgpuHostDriver("550.90.05", "r550_00")
    assert G.vgpu_of(()) == G.Vgpu(present=False)
    assert G.vgpu_of((G.VgpuDevice("a", driver),)) == G.Vgpu(True, driver)
    assert G.vgpu_of((G.VgpuDevice("a", None), G.VgpuDevice("b", driver))) == G.Vgpu(True, None)


@pytest.mark.parametrize(
    ("info", "attached"),
    [
        (G.FabricInfo(CLUSTER, 1, G.FABRIC_STATE_COMPLETED, 0), True),
        (G.FabricInfo(CLUSTER, 1, G.FABRIC_STATE_IN_PROGRESS, 0), False),
        (G.FabricInfo(CLUSTER, 1, G.FABRIC_STATE_NOT_STARTED, 0), False),
        (G.FabricInfo(CLUSTER, 1, G.FABRIC_STATE_COMPLETED, 999), False),  # registration failed
        (G.FabricInfo(G.ZERO_UUID, 0, G.FABRIC_STATE_COMPLETED, 0), False),  # single-node NVSwitch
        (G.FabricInfo(), False),
    ],
)
def test_fabric_attached(info: G.FabricInfo, attached: bool) -> None:
    assert info.attached is attached
