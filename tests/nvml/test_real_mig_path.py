"""The real backend's MIG code.

On a real GPU (marked nvml, skipped without one) only the MIG-disabled path runs: nvplugin
never changes MIG mode, so the test asserts the mode is read, unchanged, and the GPUs are
advertised whole under every strategy. The MIG-enabled enumeration cannot run on the shared
H100 (MIG stays disabled there), so it runs against a stand-in pynvml that answers the same
calls NVML would for a MIG-enabled H100 - the one place nothing real can run.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from nvplugin.core.config import Config
from nvplugin.core.resources import GPU_RESOURCE, build_resources
from nvplugin.nvml.base import NvmlError
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.real import RealNvml


def real_nvml() -> RealNvml:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception as exc:  # no driver, no GPU
        pytest.skip(f"no NVIDIA GPU here: {exc}")
    nvml = RealNvml()
    nvml.init()
    return nvml


@pytest.mark.nvml
def test_real_gpus_mig_disabled_path_and_mode_untouched() -> None:
    import pynvml

    nvml = real_nvml()
    try:
        before = [
            pynvml.nvmlDeviceGetMigMode(pynvml.nvmlDeviceGetHandleByIndex(i))
            for i in range(nvml.device_count())
        ]
        inventory = discover(nvml)
        after = [
            pynvml.nvmlDeviceGetMigMode(pynvml.nvmlDeviceGetHandleByIndex(i))
            for i in range(nvml.device_count())
        ]
    finally:
        nvml.shutdown()
    assert before == after, "MIG mode must never change"
    assert inventory.gpus, inventory.problems
    disabled = [g for g in inventory.gpus if not g.mig_enabled]
    if len(disabled) != len(inventory.gpus):
        pytest.skip("a GPU here has MIG enabled; this test proves the MIG-disabled path")
    assert all(g.mig_devices == () for g in inventory.gpus)
    for strategy in ("none", "single", "mixed"):
        (gpu,) = build_resources(inventory, Config(mig_strategy=strategy))
        assert gpu.name == GPU_RESOURCE
        assert [d.id for d in gpu.devices] == [g.uuid for g in inventory.gpus]
        assert all(
            d.id.startswith("GPU-") and d.device_nodes == (f"/dev/nvidia{g.minor}",)
            for d, g in zip(gpu.devices, inventory.gpus, strict=True)
        )


class _NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


def _stand_in_pynvml() -> SimpleNamespace:
    """NVML's answers for an H100 with MIG devices 3g.40gb (GI 1) and 1g.10gb+me (GI 5) in
    slots 0 and 2 (slot 1 empty)."""
    migs = {
        0: dict(
            uuid="MIG-11111111-2222-4333-8444-555555555555",
            gi=1,
            ci=0,
            profile_id=9,
            mem=40448,
            sm=60,
            slices=3,
        ),
        2: dict(
            uuid="MIG-66666666-7777-4888-8999-000000000000",
            gi=5,
            ci=0,
            profile_id=20,
            mem=9856,
            sm=16,
            slices=1,
        ),
    }

    def mig_handle(parent: str, j: int) -> object:
        if j not in migs:
            raise _NVMLError(6)  # NVML_ERROR_NOT_FOUND
        return ("mig", j)

    def attributes(handle: tuple[str, int]) -> SimpleNamespace:
        m = migs[handle[1]]
        n = m["slices"]
        return SimpleNamespace(
            multiprocessorCount=m["sm"],
            sharedCopyEngineCount=n,
            sharedDecoderCount=n,
            sharedEncoderCount=0,
            sharedJpegCount=n,
            sharedOfaCount=1 if m["profile_id"] == 20 else 0,
            gpuInstanceSliceCount=n,
            computeInstanceSliceCount=n,
            memorySizeMB=m["mem"],
        )

    profile_ids = {0: 19, 2: 9, 7: 20, 9: 15}  # profile index -> id (1g.10gb, 3g.40gb, 1g.10gb+me, 1g.20gb)

    def profile_info(handle: object, index: int) -> SimpleNamespace:
        if index not in profile_ids:
            raise _NVMLError(3)  # NOT_SUPPORTED
        return SimpleNamespace(id=profile_ids[index])

    return SimpleNamespace(
        NVMLError=_NVMLError,
        NVML_ERROR_NOT_FOUND=6,
        NVML_ERROR_LIBRARY_NOT_FOUND=12,
        NVML_ERROR_DRIVER_NOT_LOADED=9,
        NVML_ERROR_NOT_SUPPORTED=3,
        NVML_ERROR_TIMEOUT=10,
        NVML_ERROR_GPU_IS_LOST=15,
        NVML_DEVICE_MIG_ENABLE=1,
        nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}",
        nvmlDeviceGetMinorNumber=lambda h: 0,
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=81559 * 1024 * 1024),
        nvmlDeviceGetMigMode=lambda h: (1, 1),
        nvmlDeviceGetMaxMigDeviceCount=lambda h: 7,
        nvmlDeviceGetMigDeviceHandleByIndex=mig_handle,
        nvmlDeviceGetUUID=lambda h: migs[h[1]]["uuid"],
        nvmlDeviceGetGpuInstanceId=lambda h: migs[h[1]]["gi"],
        nvmlDeviceGetComputeInstanceId=lambda h: migs[h[1]]["ci"],
        nvmlDeviceGetAttributes=attributes,
        nvmlDeviceGetGpuInstanceById=lambda h, gi: ("gi", gi),
        nvmlGpuInstanceGetInfo=lambda g: SimpleNamespace(
            profileId=next(m["profile_id"] for m in migs.values() if m["gi"] == g[1])
        ),
        nvmlDeviceGetGpuInstanceProfileInfo=profile_info,
    )


def _stand_in(tmp_path: Path, minors: str) -> RealNvml:
    (tmp_path / "driver/nvidia-caps").mkdir(parents=True)
    (tmp_path / "driver/nvidia-caps/mig-minors").write_text(minors)
    nvml = RealNvml(proc_root=str(tmp_path))
    nvml._pynvml = _stand_in_pynvml()
    return nvml


MINORS = (
    "config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n"
    "gpu0/gi5/access 48\ngpu0/gi5/ci0/access 49\n"
)


def test_mig_enabled_enumeration_with_stand_in_nvml(tmp_path: Path) -> None:
    nvml = _stand_in(tmp_path, MINORS)
    assert nvml.device_mig_enabled(0)
    first, second = nvml.device_mig_devices(0)
    assert (first.profile, first.index, first.gi_id, first.ci_id) == ("3g.40gb", 0, 1, 0)
    assert first.device_nodes == (
        "/dev/nvidia0",
        "/dev/nvidia-caps/nvidia-cap12",
        "/dev/nvidia-caps/nvidia-cap13",
    )
    assert (second.profile, second.index, second.nvidia_index) == ("1g.10gb+me", 2, "0:2")
    assert second.device_nodes[1:] == ("/dev/nvidia-caps/nvidia-cap48", "/dev/nvidia-caps/nvidia-cap49")
    assert (second.multiprocessors, second.ofa_engines, second.memory_mib) == (16, 1, 9856)


def test_missing_capability_node_is_a_clear_error(tmp_path: Path) -> None:
    nvml = _stand_in(tmp_path, "gpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n")
    with pytest.raises(NvmlError, match=r"no capability node for MIG device MIG-6666.* \(gpu0/gi5/ci0\)"):
        nvml.device_mig_devices(0)


def test_unreadable_mig_minors_is_a_clear_error(tmp_path: Path) -> None:
    nvml = RealNvml(proc_root=str(tmp_path))
    nvml._pynvml = _stand_in_pynvml()
    with pytest.raises(NvmlError, match=r"cannot read .*mig-minors to find MIG capability nodes"):
        nvml.device_mig_devices(0)
