"""The real backend's NVLink walk over a scripted pynvml: the driver answers no machine here gives.

No GPU can run here, and the NVSwitch, old-driver and IBM NPU cases exist on no test machine,
so the pynvml module itself is replaced by a script of NVML's answers (a stand-in for the
library, not for our code: RealNvml runs unchanged).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from nvplugin.nvml.base import (
    NVLINK_REMOTE_GPU,
    NVLINK_REMOTE_SWITCH,
    NVLINK_REMOTE_UNKNOWN,
    NvLinkRemote,
    NvmlGpuLost,
)
from nvplugin.nvml.real import RealNvml

NOT_SUPPORTED, INVALID_ARGUMENT, GPU_IS_LOST, UNKNOWN = 3, 2, 15, 999


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


def scripted_pynvml(links: dict[int, Any], remote_type: bool = True) -> SimpleNamespace:
    """links: link -> (active, type or error code, bus id or error code), or an error code."""

    def state(handle: object, link: int) -> int:
        entry = links.get(link, INVALID_ARGUMENT)
        if isinstance(entry, int):
            raise NVMLError(entry)
        return entry[0]

    def answer(value: Any) -> Any:
        if isinstance(value, int) and value >= 100:  # an error code
            raise NVMLError(value - 100)
        return value

    module = SimpleNamespace(
        NVMLError=NVMLError,
        NVML_ERROR_LIBRARY_NOT_FOUND=12,
        NVML_ERROR_DRIVER_NOT_LOADED=9,
        NVML_ERROR_NOT_SUPPORTED=NOT_SUPPORTED,
        NVML_ERROR_TIMEOUT=10,
        NVML_ERROR_GPU_IS_LOST=GPU_IS_LOST,
        NVML_ERROR_INVALID_ARGUMENT=INVALID_ARGUMENT,
        NVML_FEATURE_ENABLED=1,
        NVML_NVLINK_MAX_LINKS=36,
        NVML_NVLINK_DEVICE_TYPE_GPU=0,
        NVML_NVLINK_DEVICE_TYPE_IBMNPU=1,
        NVML_NVLINK_DEVICE_TYPE_SWITCH=2,
        nvmlDeviceGetHandleByIndex=lambda index: f"handle{index}",
        nvmlDeviceGetNvLinkState=state,
        nvmlDeviceGetNvLinkRemotePciInfo=lambda h, link: SimpleNamespace(busId=answer(links[link][2])),
        nvmlDeviceGetTopologyCommonAncestor=lambda a, b: 20,
    )
    if remote_type:
        module.nvmlDeviceGetNvLinkRemoteDeviceType = lambda h, link: answer(links[link][1])
    return module


def real_nvml(module: SimpleNamespace) -> RealNvml:
    nvml = RealNvml()
    nvml._pynvml = module  # what init() would have imported
    return nvml


def test_links_are_classified() -> None:
    gpu_bus = b"00000000:19:00.0"
    module = scripted_pynvml(
        {
            0: (1, 0, gpu_bus),  # another GPU
            1: (1, 2, b"00000000:C1:00.0"),  # an NVSwitch
            2: (0, 0, gpu_bus),  # inactive: not counted
            3: (1, 1, b"00000000:00:00.0"),  # the CPU (IBM NPU): not a GPU link
            4: (1, 100 + NOT_SUPPORTED, gpu_bus),  # the driver cannot tell the remote's type
            5: (1, 2, 100 + UNKNOWN),  # a switch whose bus id cannot be read
            6: UNKNOWN,  # a link whose state cannot be read: skipped
        }
    )
    assert real_nvml(module).device_nvlink_remotes(0) == [
        NvLinkRemote("00000000:19:00.0", NVLINK_REMOTE_GPU),
        NvLinkRemote("00000000:C1:00.0", NVLINK_REMOTE_SWITCH),
        NvLinkRemote("00000000:19:00.0", NVLINK_REMOTE_UNKNOWN),
        NvLinkRemote("", NVLINK_REMOTE_SWITCH),
    ]


def test_eighteen_switch_links_then_the_end() -> None:
    module = scripted_pynvml({link: (1, 2, b"00000000:C1:00.0") for link in range(18)})
    remotes = real_nvml(module).device_nvlink_remotes(3)
    assert len(remotes) == 18 and {r.kind for r in remotes} == {NVLINK_REMOTE_SWITCH}


def test_no_nvlink_and_old_libraries() -> None:
    assert real_nvml(scripted_pynvml({0: NOT_SUPPORTED})).device_nvlink_remotes(0) == []
    old = scripted_pynvml({0: (1, 0, b"00000000:19:00.0")}, remote_type=False)
    assert real_nvml(old).device_nvlink_remotes(0) == [
        NvLinkRemote("00000000:19:00.0", NVLINK_REMOTE_UNKNOWN)
    ]


def test_a_lost_gpu_is_reported_not_hidden() -> None:
    with pytest.raises(NvmlGpuLost):
        real_nvml(scripted_pynvml({0: GPU_IS_LOST})).device_nvlink_remotes(0)


def test_common_ancestor() -> None:
    assert real_nvml(scripted_pynvml({})).device_topology_common_ancestor(0, 1) == 20


def fabric_pynvml(cluster: bytes, state: int) -> SimpleNamespace:
    """The v1 fabric query, answered as the driver fills the real nvidia-ml-py struct."""
    import ctypes

    import pynvml

    def query(handle: object, info: Any) -> int:
        struct = info._obj
        offset = type(struct).clusterUuid.offset
        ctypes.memmove(ctypes.addressof(struct) + offset, cluster, 16)
        struct.state = state
        return 0

    return SimpleNamespace(
        NVMLError=NVMLError,
        nvmlDeviceGetHandleByIndex=lambda index: f"handle{index}",
        nvmlDeviceGetGpuFabricInfo=query,
        c_nvmlGpuFabricInfo_t=pynvml.c_nvmlGpuFabricInfo_t,
    )


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        # A GPU with no fabric (the H200 test machine): the all-zero UUID, not a crash.
        (b"\x00" * 16, "00000000-0000-0000-0000-000000000000"),
        # A zero byte inside: ctypes would cut the field there.
        (bytes.fromhex("0b1f0a547a2c4d8e9c00000000000001"), "0b1f0a54-7a2c-4d8e-9c00-000000000001"),
    ],
)
def test_fabric_cluster_uuid_keeps_all_sixteen_bytes(cluster: bytes, expected: str) -> None:
    info = real_nvml(fabric_pynvml(cluster, state=3)).device_fabric_info(0)
    assert info.cluster_uuid == expected and info.state == 3
