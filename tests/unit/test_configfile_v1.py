"""The v1 config file: every NVIDIA v0.20 key accepted with NVIDIA's meaning, unknown keys warned
about (refused in strict mode), every error naming file, path and expectation."""

from __future__ import annotations

import math

import pytest

from nvplugin.core.config import (
    MAX_REPLICAS,
    ConfigError,
    ReplicatedResource,
    ReplicatedResources,
    Sharing,
    SharingStrategy,
    resolve_settings,
)
from nvplugin.core.configfile import ConfigFile, parse_config_file

F = "config.yaml"


def parsed(doc: object, strict: bool = False) -> ConfigFile:
    return parse_config_file(doc, F, strict=strict)


def values(doc: object) -> dict[str, object]:
    return dict(parsed(doc).values)


def error(doc: object, strict: bool = False) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config_file(doc, F, strict=strict)
    return str(caught.value)


EVERY_V020_FLAG = {
    "version": "v1",
    "flags": {
        "migStrategy": "mixed",
        "failOnInitError": False,
        "mpsRoot": "/run/nvidia/mps",
        "nvidiaDriverRoot": "/run/nvidia/driver",
        "nvidiaDevRoot": "/",
        "gdrcopyEnabled": True,
        "gdsEnabled": True,
        "mofedEnabled": True,
        "useNodeFeatureAPI": False,
        "deviceDiscoveryStrategy": "nvml",
        "plugin": {
            "passDeviceSpecs": True,
            "deviceListStrategy": ["envvar", "cdi-cri"],
            "deviceIDStrategy": "index",
            "cdiAnnotationPrefix": "nvidia.cdi.k8s.io/",
            "nvidiaCTKPath": "/usr/local/nvidia/toolkit/nvidia-ctk",
            "containerDriverRoot": "/host-driver",
            "sharedDevicesAllocationPolicy": "packed",
        },
        "gfd": {
            "oneshot": True,
            "noTimestamp": True,
            "sleepInterval": "1m30s",
            "outputFile": "/etc/kubernetes/node-feature-discovery/features.d/gfd",
            "machineTypeFile": "/sys/class/dmi/id/product_name",
        },
    },
    "imex": {"channelIDs": [0], "required": True},
}


def test_every_v020_flag_key() -> None:
    result = parsed(EVERY_V020_FLAG)
    assert result.warnings == ()
    assert dict(result.values) == {
        "mig_strategy": "mixed",
        "fail_on_init_error": False,
        "mps_root": "/run/nvidia/mps",
        "nvidia_driver_root": "/run/nvidia/driver",
        "dev_root": "/",
        "gdrcopy_enabled": True,
        "gds_enabled": True,
        "mofed_enabled": True,
        "gfd_use_node_feature_api": False,
        "device_discovery_strategy": "nvml",
        "pass_device_specs": True,
        "device_list_strategy": ("envvar", "cdi-cri"),
        "device_id_strategy": "index",
        "cdi_annotation_prefix": "nvidia.cdi.k8s.io/",
        "nvidia_cdi_hook_path": "/usr/local/nvidia/toolkit/nvidia-ctk",
        "container_driver_root": "/host-driver",
        "shared_devices_allocation_policy": "packed",
        "gfd_oneshot": True,
        "gfd_no_timestamp": True,
        "gfd_sleep_interval_s": 90.0,
        "gfd_output_file": "/etc/kubernetes/node-feature-discovery/features.d/gfd",
        "machine_type_file": "/sys/class/dmi/id/product_name",
        "imex_channel_ids": (0,),
        "imex_required": True,
    }
    assert result.sources["mig_strategy"] == "config.yaml: flags.migStrategy"


def test_nvplugin_extension_keys() -> None:
    doc = {
        "flags": {
            "plugin": {
                "kubeletSocket": "/var/lib/kubelet/device-plugins/kubelet.sock",
                "nvidiaCDIHookPath": "/usr/bin/nvidia-cdi-hook",
                "cdiFeatureFlags": ["disable-multiple-csv-devices"],
                "cdiDisableHooks": "all",
                "cdiSpecDir": "/etc/cdi",
            }
        }
    }
    assert values(doc) == {
        "kubelet_socket": "/var/lib/kubelet/device-plugins/kubelet.sock",
        "nvidia_cdi_hook_path": "/usr/bin/nvidia-cdi-hook",
        "cdi_feature_flags": ("disable-multiple-csv-devices",),
        "cdi_disable_hooks": ("all",),
        "cdi_spec_dir": "/etc/cdi",
    }


def test_nvidias_key_beats_nvplugins_alias() -> None:
    doc = {"flags": {"plugin": {"nvidiaCDIHookPath": "/alias", "nvidiaCTKPath": "/nvidia"}}}
    assert values(doc) == {"nvidia_cdi_hook_path": "/nvidia"}
    doc = {"flags": {"plugin": {"nvidiaCTKPath": "/nvidia", "nvidiaCDIHookPath": "/alias"}}}
    result = parsed(doc)
    assert result.values == {"nvidia_cdi_hook_path": "/nvidia"}
    assert result.warnings == (
        "config.yaml: flags.plugin.nvidiaCDIHookPath: ignored: flags.plugin.nvidiaCTKPath is set too and wins",
    )


def test_device_list_strategy_may_be_one_string() -> None:
    assert values({"flags": {"plugin": {"deviceListStrategy": "volume-mounts"}}}) == {
        "device_list_strategy": ("volume-mounts",)
    }


def test_time_slicing() -> None:
    doc = {
        "version": "v1",
        "sharing": {
            "timeSlicing": {
                "renameByDefault": True,
                "failRequestsGreaterThanOne": True,
                "resources": [
                    {"name": "nvidia.com/gpu", "replicas": 4},
                    {"name": "mig-1g.10gb", "replicas": 2.0, "devices": "all"},
                ],
            }
        },
    }
    sharing = values(doc)["sharing"]
    assert isinstance(sharing, Sharing)
    ts = sharing.time_slicing
    assert ts.rename_by_default and ts.fail_requests_greater_than_one
    assert ts.resources == (
        ReplicatedResource("nvidia.com/gpu", 4, "nvidia.com/gpu.shared"),
        ReplicatedResource("nvidia.com/mig-1g.10gb", 2, "nvidia.com/mig-1g.10gb.shared"),
    )
    assert sharing.strategy is SharingStrategy.TIME_SLICING and sharing.mps is None


def test_mps_refuses_requests_for_more_than_one_unless_told_otherwise() -> None:
    resources = [{"name": "nvidia.com/gpu", "replicas": 2}]
    sharing = values({"sharing": {"mps": {"resources": resources}}})["sharing"]
    assert sharing == Sharing(
        mps=ReplicatedResources(
            fail_requests_greater_than_one=True, resources=(ReplicatedResource("nvidia.com/gpu", 2),)
        )
    )
    assert sharing.strategy is SharingStrategy.MPS  # type: ignore[attr-defined]
    relaxed = values({"sharing": {"mps": {"failRequestsGreaterThanOne": False, "resources": resources}}})
    assert relaxed["sharing"].mps.fail_requests_greater_than_one is False  # type: ignore[attr-defined]


def test_mps_wins_over_time_slicing_as_in_nvidia() -> None:
    resources = [{"name": "nvidia.com/gpu", "replicas": 2}]
    result = parsed({"sharing": {"timeSlicing": {"resources": resources}, "mps": {"resources": resources}}})
    sharing = result.values["sharing"]
    assert isinstance(sharing, Sharing) and sharing.strategy is SharingStrategy.MPS
    assert sharing.time_slicing == ReplicatedResources()
    assert result.warnings == (
        "config.yaml: sharing.timeSlicing: ignored: sharing.mps is set too; the two are mutually exclusive and "
        "NVIDIA's plugin uses MPS",
    )


def test_empty_file_and_missing_version_are_v1() -> None:
    assert parse_config_file(None, F).values == {}
    assert values({"flags": {"migStrategy": "single"}}) == {"mig_strategy": "single"}
    assert values({"version": "v1", "flags": None, "sharing": None}) == {}
    assert values({"version": ""}) == {}


def test_nulls_and_empty_strings_mean_not_set() -> None:
    assert values({"flags": {"migStrategy": None, "mpsRoot": "", "plugin": {"passDeviceSpecs": None}}}) == {}


def test_unknown_keys_are_warned_about_with_their_path() -> None:
    doc = {
        "version": "v1",
        "flag": {},
        "flags": {"migStrategy": "none", "plugin": {"passDeviceSpec": True}, "gfd": {"sleep": "1s"}},
        "imex": {"channels": [0]},
        "sharing": {
            "timeSlicing": {"resources": [{"name": "gpu", "replicas": 2, "replica": 3}], "rename": 1}
        },
    }
    result = parsed(doc)
    assert result.unknown_keys == (
        "flag",
        "flags.plugin.passDeviceSpec",
        "flags.gfd.sleep",
        "imex.channels",
        "sharing.timeSlicing.rename",
        "sharing.timeSlicing.resources[0].replica",
    )
    assert result.warnings[0] == (
        "config.yaml: flag: unknown key, ignored (as NVIDIA ignores it); did you mean flags? expected one of "
        "version, flags, resources, sharing, imex, health"
    )
    assert result.warnings[1].startswith(
        "config.yaml: flags.plugin.passDeviceSpec: unknown key, ignored (as NVIDIA ignores it); did you mean "
        "passDeviceSpecs? expected one of passDeviceSpecs, deviceListStrategy,"
    )
    assert result.values == {"mig_strategy": "none", "sharing": result.values["sharing"]}


def test_strict_mode_refuses_unknown_keys() -> None:
    assert error({"flags": {"plugin": {"passDeviceSpec": True}}}, strict=True).startswith(
        "config.yaml: flags.plugin.passDeviceSpec: unknown key; did you mean passDeviceSpecs? expected one of "
    )
    assert error({"sharing": {"timeSlicing": {"resources": [], "Resources": []}}}, strict=True).startswith(
        "config.yaml: sharing.timeSlicing.Resources: unknown key; did you mean resources?"
    )
    assert parsed(EVERY_V020_FLAG, strict=True).warnings == ()


def test_keys_match_ignoring_case_like_go_structs_but_not_in_sharing_entries() -> None:
    result = parsed(
        {
            "Flags": {"MIGStrategy": "single", "Plugin": {"passdevicespecs": True}},
            "Sharing": {"TimeSlicing": None},
        }
    )
    assert result.values == {"mig_strategy": "single", "pass_device_specs": True}
    assert result.warnings == (
        "config.yaml: Flags: read as flags (NVIDIA matches these keys ignoring case)",
        "config.yaml: Sharing: read as sharing (NVIDIA matches these keys ignoring case)",
        "config.yaml: flags.MIGStrategy: read as migStrategy (NVIDIA matches these keys ignoring case)",
        "config.yaml: flags.Plugin: read as plugin (NVIDIA matches these keys ignoring case)",
        "config.yaml: flags.plugin.passdevicespecs: read as passDeviceSpecs (NVIDIA matches these keys ignoring case)",
        "config.yaml: sharing.TimeSlicing: read as timeSlicing (NVIDIA matches these keys ignoring case)",
    )
    # NVIDIA looks sharing entries up by exact name: RenameByDefault is not renameByDefault.
    resources = [{"name": "gpu", "replicas": 2}]
    result = parsed({"sharing": {"timeSlicing": {"RenameByDefault": True, "resources": resources}}})
    assert result.values["sharing"].time_slicing.rename_by_default is False  # type: ignore[attr-defined]
    assert result.unknown_keys == ("sharing.timeSlicing.RenameByDefault",)


def test_numbers_and_booleans_for_string_settings_become_text_as_in_go() -> None:
    assert values(
        {"flags": {"nvidiaDriverRoot": 1.5, "plugin": {"cdiAnnotationPrefix": True}, "mpsRoot": 7}}
    ) == {
        "nvidia_driver_root": "1.5",
        "cdi_annotation_prefix": "true",
        "mps_root": "7",
    }
    assert "flags.migStrategy: expected one of none, single, mixed; got '1'" in error(
        {"flags": {"migStrategy": 1}}
    )


def test_durations_are_go_durations_and_a_bare_number_is_nanoseconds() -> None:
    assert values({"flags": {"gfd": {"sleepInterval": "infinite"}}}) == {"gfd_sleep_interval_s": math.inf}
    assert values({"flags": {"gfd": {"sleepInterval": 60}}}) == {"gfd_sleep_interval_s": 60e-9}
    file = parsed({"flags": {"gfd": {"sleepInterval": 60}}})
    resolved = resolve_settings({}, {}, file.values, file.sources)
    assert resolved.config.gfd_sleep_interval_s == 1.0
    assert resolved.notes == (
        "config.yaml: flags.gfd.sleepInterval: 60ns is shorter than 1s; labels are refreshed every 1s (a bare "
        "number there is nanoseconds, as NVIDIA reads it: write 60s)",
    )


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"version": "v2"}, "config.yaml: version: unknown version 'v2'; expected v1"),
        ({"version": 1}, "config.yaml: version: unknown version 1; expected v1"),
        (
            ["version", "v1"],
            "config.yaml: (top level): expected a mapping of version, flags, sharing, ...; got a list",
        ),
        ("v1", "config.yaml: (top level): expected a mapping of version, flags, sharing, ...; got 'v1'"),
        (
            {"flags": {"migStrategy": "double"}},
            "config.yaml: flags.migStrategy: expected one of none, single, mixed; got 'double'",
        ),
        (
            {"flags": {"failOnInitError": "true"}},
            "config.yaml: flags.failOnInitError: expected true or false, got 'true' (quoted text is not a boolean to "
            "NVIDIA: write true or false without quotes)",
        ),
        (
            {"flags": {"plugin": {"passDeviceSpecs": 1}}},
            "config.yaml: flags.plugin.passDeviceSpecs: expected true or false, got 1",
        ),
        (
            {"flags": {"plugin": {"deviceListStrategy": ["envvar", "tarball"]}}},
            "config.yaml: flags.plugin.deviceListStrategy: expected one or more of envvar, volume-mounts, "
            "cdi-annotations, cdi-cri; got 'tarball'",
        ),
        (
            {"flags": {"plugin": {"deviceListStrategy": [3]}}},
            "config.yaml: flags.plugin.deviceListStrategy[0]: expected a string, got 3",
        ),
        (
            {"flags": {"plugin": {"deviceIDStrategy": "serial"}}},
            "config.yaml: flags.plugin.deviceIDStrategy: expected one of uuid, index; got 'serial'",
        ),
        (
            {"flags": {"plugin": {"sharedDevicesAllocationPolicy": "spread"}}},
            "config.yaml: flags.plugin.sharedDevicesAllocationPolicy: expected one of distributed, packed; got 'spread'",
        ),
        (
            {"flags": {"deviceDiscoveryStrategy": "wsl"}},
            "config.yaml: flags.deviceDiscoveryStrategy: expected one of auto, nvml, tegra, vfio; got 'wsl'",
        ),
        (
            {"flags": {"gfd": {"sleepInterval": "soon"}}},
            "config.yaml: flags.gfd.sleepInterval: expected a duration such as 60s, 1m30s, 500ms or infinite, got 'soon'",
        ),
        (
            {"flags": {"gfd": {"sleepInterval": "1e400"}}},
            "config.yaml: flags.gfd.sleepInterval: expected a duration",
        ),
        ({"flags": {"gfd": {"sleepInterval": 1e300}}}, "(a number is nanoseconds: out of range)"),
        (
            {"flags": {"gfd": {"sleepInterval": True}}},
            "config.yaml: flags.gfd.sleepInterval: expected a duration",
        ),
        ({"flags": {"plugin": "envvar"}}, "config.yaml: flags.plugin: expected a mapping, got 'envvar'"),
        (
            {"flags": {"mofedEnabled": "no"}},
            "config.yaml: flags.mofedEnabled: expected true or false, got 'no'",
        ),
        (
            {"flags": {"plugin": {"kubeletSocket": "/run/k\0.sock"}}},
            "flags.plugin.kubeletSocket: contains a NUL byte",
        ),
        (
            {"flags": {"plugin": {"kubeletSocket": ""}}},
            "flags.plugin.kubeletSocket: expected the kubelet's socket path",
        ),
        (
            {"flags": {"plugin": {"kubeletSocket": "/k/" + "s" * 110}}},
            "is longer than a unix socket allows (107)",
        ),
        (
            {"flags": {"nvidiaDriverRoot": ["/"]}},
            "config.yaml: flags.nvidiaDriverRoot: expected a string, got a list",
        ),
        ({"imex": {"channelIDs": [1]}}, "config.yaml: imex.channelIDs: expected no channels or channel 0"),
        (
            {"imex": {"channelIDs": 0}},
            "config.yaml: imex.channelIDs: expected a list of whole numbers such as [0], got 0",
        ),
        (
            {"imex": {"channelIDs": ["0"]}},
            "config.yaml: imex.channelIDs[0]: expected a whole number, got '0'",
        ),
        (
            {"imex": {"channelIDs": [2**70]}},
            "imex.channelIDs[0]: expected a whole number within the 64-bit range",
        ),
        ({"imex": {"required": "yes"}}, "config.yaml: imex.required: expected true or false, got 'yes'"),
        (
            {"sharing": {"timeSlicing": {"resources": []}}},
            "config.yaml: sharing.timeSlicing.resources: expected a non-empty list of resources to share, "
            "such as [{name: nvidia.com/gpu, replicas: 4}], got an empty list",
        ),
        (
            {"sharing": {"timeSlicing": {}}},
            "config.yaml: sharing.timeSlicing.resources: expected a non-empty list",
        ),
        (
            {"sharing": {"mps": {"resources": None}}},
            "config.yaml: sharing.mps.resources: expected a non-empty list",
        ),
        (
            {"sharing": {"timeSlicing": {"resources": [{"name": "nvidia.com/gpu", "replicas": 1}]}}},
            "config.yaml: sharing.timeSlicing.resources[0].replicas: must be >= 2, got 1",
        ),
        (
            {"sharing": {"timeSlicing": {"resources": [{"name": "nvidia.com/gpu", "replicas": 1000000000}]}}},
            f"config.yaml: sharing.timeSlicing.resources[0].replicas: must be at most {MAX_REPLICAS} (nvplugin's "
            "bound), got 1000000000",
        ),
        (
            {"sharing": {"timeSlicing": {"resources": [{"name": "nvidia.com/gpu", "replicas": 10**30}]}}},
            "sharing.timeSlicing.resources[0].replicas: expected a whole number from 2 to 4096 within the 64-bit range",
        ),
        (
            {"sharing": {"mps": {"resources": [{"name": "nvidia.com/gpu", "replicas": 2.5}]}}},
            "config.yaml: sharing.mps.resources[0].replicas: expected a whole number from 2 to 4096, got 2.5",
        ),
        (
            {"sharing": {"timeSlicing": {"resources": [{"name": "nvidia.com/gpu"}]}}},
            "config.yaml: sharing.timeSlicing.resources[0].replicas: expected a whole number from 2 to 4096, got nothing",
        ),
        (
            {"sharing": {"timeSlicing": {"resources": [{"name": "nvidia.com/gpu", "replicas": "4"}]}}},
            "config.yaml: sharing.timeSlicing.resources[0].replicas: expected a whole number from 2 to 4096, got '4'",
        ),
        (
            {"sharing": {"timeSlicing": {"resources": [{"replicas": 4}]}}},
            "config.yaml: sharing.timeSlicing.resources[0].name: expected a resource name such as "
            "nvidia.com/gpu, got nothing",
        ),
        (
            {"sharing": {"timeSlicing": {"resources": [{"name": 7, "replicas": 4}]}}},
            "config.yaml: sharing.timeSlicing.resources[0].name: expected a string, got 7",
        ),
        (
            {"sharing": {"timeSlicing": {"resources": [{"name": "nvidia.com/GPU", "replicas": 4}]}}},
            "config.yaml: sharing.timeSlicing.resources[0].name: expected a resource name such as nvidia.com/gpu "
            "(lower-case letters, digits, '-' and '.'), got 'nvidia.com/GPU'",
        ),
        (
            {"sharing": {"timeSlicing": {"resources": [{"name": "gpu-" + "x" * 60, "replicas": 4}]}}},
            "config.yaml: sharing.timeSlicing.resources[0].name: expected a resource name of at most 63 characters",
        ),
        (
            {
                "sharing": {
                    "timeSlicing": {
                        "resources": [{"name": "nvidia.com/gpu", "replicas": 2, "devices": "some"}]
                    }
                }
            },
            'config.yaml: sharing.timeSlicing.resources[0].devices: expected "all", a device count or a '
            "list of devices, got 'some'",
        ),
        (
            {
                "sharing": {
                    "timeSlicing": {"resources": [{"name": "nvidia.com/gpu", "replicas": 2, "devices": 0}]}
                }
            },
            "config.yaml: sharing.timeSlicing.resources[0].devices: a count of devices must be > 0, got 0",
        ),
        (
            {
                "sharing": {
                    "timeSlicing": {
                        "resources": [{"name": "nvidia.com/gpu", "replicas": 2, "devices": ["0", "GPU-x"]}]
                    }
                }
            },
            "config.yaml: sharing.timeSlicing.resources[0].devices[1]: expected a GPU index, a MIG index (0:1) "
            "or a GPU/MIG UUID, got 'GPU-x'",
        ),
        (
            {"sharing": {"timeSlicing": {"renameByDefault": "yes", "resources": []}}},
            "config.yaml: sharing.timeSlicing.renameByDefault: expected true or false, got 'yes'",
        ),
        (
            {"sharing": {"timeSlicing": "gpu"}},
            "config.yaml: sharing.timeSlicing: expected a mapping, got 'gpu'",
        ),
    ],
)
def test_errors_name_file_path_and_expectation(doc: object, message: str) -> None:
    assert error(doc).startswith(message) or message in error(doc)


def test_duplicate_shared_resources_keep_the_largest_replica_count() -> None:
    doc = {
        "sharing": {
            "timeSlicing": {
                "resources": [{"name": "nvidia.com/gpu", "replicas": 4}, {"name": "gpu", "replicas": 2}]
            }
        }
    }
    result = parsed(doc)
    assert result.values["sharing"].time_slicing.resources == (ReplicatedResource("nvidia.com/gpu", 4),)  # type: ignore[attr-defined]
    assert result.warnings == (
        "config.yaml: sharing.timeSlicing.resources[1].name: nvidia.com/gpu is listed more than once; its largest "
        "replica count is used (what NVIDIA's plugin ends up advertising)",
    )


def test_settings_nvidia_ignores_are_reported() -> None:
    uuid = "b1028956-cfa2-0990-bf4a-5da9abb51763"
    doc = {
        "resources": {"gpus": [{"pattern": "*", "name": "gpu"}]},
        "sharing": {
            "timeSlicing": {
                "resources": [
                    {
                        "name": "nvidia.com/gpu",
                        "replicas": 2,
                        "rename": "gpu-shared",
                        "devices": [
                            0,
                            "1:0",
                            f"GPU-{uuid}",
                            f"MIG-GPU-{uuid}/3/0",
                            "GPU-" + uuid.replace("-", ""),
                        ],
                    }
                ]
            }
        },
        "health": {"disabled": True},
    }
    result = parsed(doc)
    assert result.values["sharing"].time_slicing.resources == (ReplicatedResource("nvidia.com/gpu", 2),)  # type: ignore[attr-defined]
    assert result.warnings == (
        "config.yaml: sharing.timeSlicing.resources[0].rename: ignored: only renameByDefault renames shared "
        "resources (NVIDIA's plugin ignores rename too)",
        "config.yaml: sharing.timeSlicing.resources[0].devices: ignored: every device of nvidia.com/gpu is "
        "shared (NVIDIA's plugin ignores devices too)",
        "config.yaml: resources: ignored: custom resource names are not supported (NVIDIA's plugin ignores "
        "them too)",
    )
    # nvplugin's own `health:` section is kept for the XID policy, not ignored.
    assert result.health == {"disabled": True}


def test_a_rename_matching_rename_by_default_is_not_warned_about() -> None:
    doc = {
        "sharing": {
            "timeSlicing": {
                "renameByDefault": True,
                "resources": [{"name": "gpu", "replicas": 2, "rename": "gpu.shared"}],
            }
        }
    }
    assert parsed(doc).warnings == ()


@pytest.mark.parametrize(
    ("health", "message"),
    [
        ({"ignoredXids": ["many"]}, "config.yaml: health.ignoredXids: expected XID numbers"),
        ({"ignoredXids": ["9" * 5000]}, "config.yaml: health: not a valid health section: "),
    ],
)
def test_a_bad_health_section_is_refused_with_its_path(health: object, message: str) -> None:
    assert error({"version": "v1", "health": health}).startswith(message)


def test_precedence_flag_over_env_over_file() -> None:
    file = parsed({"flags": {"migStrategy": "mixed", "plugin": {"deviceIDStrategy": "index"}}})
    config = resolve_settings({}, {}, file.values, file.sources).config
    assert (config.mig_strategy, config.device_id_strategy) == ("mixed", "index")
    config = resolve_settings({}, {"MIG_STRATEGY": "single"}, file.values, file.sources).config
    assert (config.mig_strategy, config.device_id_strategy) == ("single", "index")
    config = resolve_settings(
        {"mig_strategy": "none"}, {"MIG_STRATEGY": "single"}, file.values, file.sources
    ).config
    assert config.mig_strategy == "none"


def test_file_values_name_their_path_in_later_errors() -> None:
    file = parsed(
        {
            "flags": {"migStrategy": "mixed"},
            "sharing": {"mps": {"resources": [{"name": "gpu", "replicas": 2}]}},
        }
    )
    with pytest.raises(ConfigError, match=r"mig-strategy mixed \(config\.yaml: flags\.migStrategy\)"):
        resolve_settings({}, {"MPS_ROOT": "/run/nvidia/mps"}, file.values, file.sources)


def test_warnings_are_bounded_and_long_keys_shortened() -> None:
    result = parsed({"flags": {f"unknown{i}": i for i in range(200)} | {"k" * 5000: 1}})
    assert len(result.unknown_keys) == 201
    assert len(result.warnings) == 51
    assert result.warnings[-1] == "config.yaml: 151 more warnings not shown"
    assert "flags." + "k" * 77 + "..." in result.unknown_keys
    assert parsed({"flags": {1: "a"}}).unknown_keys == ("flags.1",)
