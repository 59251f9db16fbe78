"""Allocate with NVIDIA's optional features: GDS / MOFED / GDRCopy and IMEX channels, field for
field as NVIDIA's getAllocateResponse builds them (internal/plugin/server.go v0.20:
updateResponseForCDI with imex-channel and <mode>=all devices, the NVIDIA_GDS / NVIDIA_MOFED /
NVIDIA_GDRCOPY envs set whatever the strategy, updateResponseForImexChannelsEnvVar with envvar
only, updateResponseForDeviceMounts' imex mounts, apiDeviceSpecs' channel nodes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nvplugin.core.allocation import container_allocation
from nvplugin.core.config import Config, ConfigError
from nvplugin.core.imex import ImexChannel, select_imex_channels
from nvplugin.core.resources import build_resources
from nvplugin.imex import discover_imex_channels
from tests.unit.mig_layouts import config, inventory
from tests.unit.test_allocate_golden import as_fields

CHANNEL0 = ImexChannel("0")
GPU0 = "GPU-3a6fb882-2a7b-4f06-b687-cb5077d1bd5c"
RESPONSE_ID = "7c5b5b8e-2f0e-4a0a-9d38-6f1b1c9a1e01"
FEATURES = {"gds_enabled": True, "mofed_enabled": True, "gdrcopy_enabled": True}
FEATURE_ENVS = {"NVIDIA_GDRCOPY": "enabled", "NVIDIA_GDS": "enabled", "NVIDIA_MOFED": "enabled"}


def allocate(cfg: Config, **kwargs: object) -> dict[str, object]:
    (gpus,) = build_resources(inventory("h100-8gpu"), cfg)
    devices = [gpus.devices[0]]
    assert devices[0].uuid == GPU0
    return as_fields(container_allocation(devices, cfg, response_id=RESPONSE_ID, **kwargs))  # type: ignore[arg-type]


def test_feature_envs_with_envvar() -> None:
    assert allocate(config(**FEATURES)) == {"envs": {**FEATURE_ENVS, "NVIDIA_VISIBLE_DEVICES": GPU0}}
    assert allocate(config(gds_enabled=True)) == {
        "envs": {"NVIDIA_GDS": "enabled", "NVIDIA_VISIBLE_DEVICES": GPU0}
    }


def test_feature_envs_are_set_even_with_cdi_only() -> None:
    cfg = config(device_list_strategy=("cdi-cri",), **FEATURES)
    assert allocate(cfg) == {
        "envs": FEATURE_ENVS,
        "cdi_devices": [{"name": f"k8s.device-plugin.nvidia.com/gpu={GPU0}"}],
    }
    assert allocate(config(device_list_strategy=(), mofed_enabled=True)) == {
        "envs": {"NVIDIA_MOFED": "enabled"}
    }


def test_feature_cdi_devices_only_where_a_spec_was_written() -> None:
    cfg = config(device_list_strategy=("cdi-annotations", "cdi-cri"), **FEATURES)
    names = [
        f"k8s.device-plugin.nvidia.com/gpu={GPU0}",
        "k8s.device-plugin.nvidia.com/imex-channel=0",
        "k8s.device-plugin.nvidia.com/gdrcopy=all",
        "k8s.device-plugin.nvidia.com/mofed=all",
    ]
    assert allocate(cfg, imex_channels=[CHANNEL0], cdi_modes={"gdrcopy", "mofed"}) == {
        "envs": FEATURE_ENVS,
        "annotations": {f"cdi.k8s.io/nvidia-device-plugin_{RESPONSE_ID}": ",".join(names)},
        "cdi_devices": [{"name": n} for n in names],
    }


def test_imex_channel_with_envvar_and_device_specs() -> None:
    cfg = config(pass_device_specs=True, nvidia_driver_root="/run/nvidia/driver")
    fields = allocate(cfg, imex_channels=[CHANNEL0], existing_control_nodes=frozenset())
    assert fields["envs"] == {"NVIDIA_VISIBLE_DEVICES": GPU0, "NVIDIA_IMEX_CHANNELS": "0"}
    assert fields["devices"] == [
        {
            "container_path": "/dev/nvidia0",
            "host_path": "/run/nvidia/driver/dev/nvidia0",
            "permissions": "rw",
        },
        {
            "container_path": "/dev/nvidia-caps-imex-channels/channel0",
            "host_path": "/run/nvidia/driver/dev/nvidia-caps-imex-channels/channel0",
            "permissions": "rw",
        },
    ]


def test_imex_channel_with_volume_mounts_has_no_env() -> None:
    fields = allocate(config(device_list_strategy=("volume-mounts",)), imex_channels=[CHANNEL0])
    assert fields == {
        "envs": {"NVIDIA_VISIBLE_DEVICES": "/var/run/nvidia-container-devices"},
        "mounts": [
            {"container_path": f"/var/run/nvidia-container-devices/{GPU0}", "host_path": "/dev/null"},
            {"container_path": "/var/run/nvidia-container-devices/imex/0", "host_path": "/dev/null"},
        ],
    }


def test_no_channels_no_imex_fields() -> None:
    assert allocate(config()) == {"envs": {"NVIDIA_VISIBLE_DEVICES": GPU0}}


# --- which channels exist


def test_channels_found_missing_and_required() -> None:
    cfg = config(imex_channel_ids=(0,))
    seen: list[str] = []

    def exists(path: str) -> bool:
        seen.append(path)
        return path == "/dev/nvidia-caps-imex-channels/channel0"

    selection = select_imex_channels(cfg, "/driver-root", exists)
    assert selection.channels == (CHANNEL0,) and selection.warnings == ()
    assert seen == [
        "/driver-root/dev/nvidia-caps-imex-channels/channel0",
        "/dev/nvidia-caps-imex-channels/channel0",
    ]
    missing = select_imex_channels(cfg, "/", lambda path: False)
    assert missing.channels == ()
    assert missing.warnings == (
        "IMEX channel 0: no character device at /dev/nvidia-caps-imex-channels/channel0; containers are started "
        "without it (imex.required is false)",
    )
    with pytest.raises(ConfigError, match=r"IMEX channel 0: no character device at .*imex\.required is set"):
        select_imex_channels(config(imex_channel_ids=(0,), imex_required=True), "/", lambda path: False)
    assert select_imex_channels(config(imex_required=True), "/", lambda path: False).channels == ()


def test_discovery_looks_under_the_mounted_driver_root(tmp_path: Path) -> None:
    channels = tmp_path / "dev" / "nvidia-caps-imex-channels"
    channels.mkdir(parents=True)
    cfg = config(imex_channel_ids=(0,), imex_required=True, container_driver_root=str(tmp_path))
    (channels / "channel0").write_text("")  # a regular file is not a channel
    with pytest.raises(ConfigError, match="no character device"):
        discover_imex_channels(cfg)
    (channels / "channel0").unlink()
    os.symlink("/dev/null", channels / "channel0")  # a character device, as the real node is
    assert discover_imex_channels(cfg).channels == (CHANNEL0,)
