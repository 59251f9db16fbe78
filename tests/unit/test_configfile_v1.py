"""The v1 config file: every field, every error naming file, path and expectation."""

from __future__ import annotations

import pytest

from nvplugin.core.config import ConfigError, ReplicatedResource, resolve
from nvplugin.core.configfile import parse_config_file

F = "config.yaml"


def values(doc: object) -> dict[str, object]:
    return dict(parse_config_file(doc, F).values)


def error(doc: object) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config_file(doc, F)
    return str(caught.value)


def test_every_supported_flag() -> None:
    doc = {
        "version": "v1",
        "flags": {
            "migStrategy": "mixed",
            "failOnInitError": False,
            "nvidiaDriverRoot": "/run/nvidia/driver",
            "nvidiaDevRoot": "/",
            "plugin": {
                "passDeviceSpecs": True,
                "deviceListStrategy": ["envvar", "cdi-cri"],
                "deviceIDStrategy": "index",
                "cdiAnnotationPrefix": "nvidia.cdi.k8s.io/",
                "kubeletSocket": "/var/lib/kubelet/device-plugins/kubelet.sock",
            },
            "gfd": {"oneshot": True, "noTimestamp": True, "sleepInterval": "1m30s"},
        },
    }
    assert values(doc) == {
        "mig_strategy": "mixed",
        "fail_on_init_error": False,
        "nvidia_driver_root": "/run/nvidia/driver",
        "dev_root": "/",
        "pass_device_specs": True,
        "device_list_strategy": ("envvar", "cdi-cri"),
        "device_id_strategy": "index",
        "cdi_annotation_prefix": "nvidia.cdi.k8s.io/",
        "kubelet_socket": "/var/lib/kubelet/device-plugins/kubelet.sock",
        "gfd_oneshot": True,
        "gfd_no_timestamp": True,
        "gfd_sleep_interval_s": 90.0,
    }


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
                    {"name": "mig-1g.10gb", "replicas": 2, "devices": "all"},
                ],
            }
        },
    }
    sharing = values(doc)["sharing"]
    ts = sharing.time_slicing
    assert ts.rename_by_default and ts.fail_requests_greater_than_one
    assert ts.resources == (
        ReplicatedResource("nvidia.com/gpu", 4, "nvidia.com/gpu.shared"),
        ReplicatedResource("nvidia.com/mig-1g.10gb", 2, "nvidia.com/mig-1g.10gb.shared"),
    )
    assert sharing.strategy == "time-slicing"


def test_empty_file_and_missing_version_are_v1() -> None:
    assert parse_config_file(None, F).values == {}
    assert values({"flags": {"migStrategy": "single"}}) == {"mig_strategy": "single"}
    assert values({"version": "v1", "flags": None, "sharing": None}) == {}


def test_nulls_mean_not_set() -> None:
    assert values({"flags": {"migStrategy": None, "plugin": {"passDeviceSpecs": None}}}) == {}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"version": "v2"}, "config.yaml: version: unknown version 'v2'; expected v1"),
        (["version", "v1"], "config.yaml: (top level): expected a mapping, got a list"),
        (
            {"version": "v1", "flag": {}},
            "config.yaml: (top level): unknown key flag; expected some of version, flags, sharing, "
            "resources, imex, health",
        ),
        (
            {"flags": {"migStrategy": "double"}},
            "config.yaml: flags.migStrategy: expected one of none, single, mixed; got 'double'",
        ),
        (
            {"flags": {"failOnInitError": "true"}},
            "config.yaml: flags.failOnInitError: expected true or false, got 'true'",
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
            {"flags": {"plugin": {"passDeviceSpec": True}}},
            "config.yaml: flags.plugin: unknown key passDeviceSpec; expected some of passDeviceSpecs, "
            "deviceListStrategy, deviceIDStrategy, cdiAnnotationPrefix, kubeletSocket, nvidiaCTKPath, "
            "containerDriverRoot, cdiFeatureFlags",
        ),
        (
            {"flags": {"gfd": {"sleepInterval": "soon"}}},
            "config.yaml: flags.gfd.sleepInterval: expected a duration such as 60s, 1m30s or 500ms; got "
            "'soon'",
        ),
        (
            {"flags": {"gfd": {"sleepInterval": "0s"}}},
            "config.yaml: flags.gfd.sleepInterval: expected a duration greater than zero; got '0s'",
        ),
        ({"flags": {"plugin": "envvar"}}, "config.yaml: flags.plugin: expected a mapping, got 'envvar'"),
        (
            {"flags": {"gdsEnabled": True}},
            "config.yaml: flags.gdsEnabled: GPUDirect Storage is not supported by nvplugin; expected false",
        ),
        (
            {"flags": {"mofedEnabled": "no"}},
            "config.yaml: flags.mofedEnabled: expected true or false, got 'no'",
        ),
        (
            {"flags": {"deviceDiscoveryStrategy": "tegra"}},
            "config.yaml: flags.deviceDiscoveryStrategy: expected auto or nvml (nvplugin discovers devices "
            "through NVML only), got 'tegra'",
        ),
        (
            {"sharing": {"mps": {"resources": [{"name": "nvidia.com/gpu", "replicas": 4}]}}},
            "config.yaml: sharing.mps: MPS sharing is not supported by nvplugin; use sharing.timeSlicing or "
            "remove sharing.mps",
        ),
        (
            {"sharing": {"timeslicing": {}}},
            "config.yaml: sharing: unknown key timeslicing; expected some of timeSlicing, mps",
        ),
        (
            {"sharing": {"timeSlicing": {"resources": []}}},
            "config.yaml: sharing.timeSlicing.resources: expected a non-empty list of resources to share, "
            "such as [{name: nvidia.com/gpu, replicas: 4}], got an empty list",
        ),
        (
            {"sharing": {"timeSlicing": {}}},
            "config.yaml: sharing.timeSlicing.resources: expected a non-empty list of resources to share, "
            "such as [{name: nvidia.com/gpu, replicas: 4}], got nothing",
        ),
        (
            {"sharing": {"timeSlicing": {"resources": [{"name": "nvidia.com/gpu", "replicas": 1}]}}},
            "config.yaml: sharing.timeSlicing.resources[0].replicas: must be >= 2, got 1",
        ),
        (
            {"sharing": {"timeSlicing": {"resources": [{"name": "nvidia.com/gpu"}]}}},
            "config.yaml: sharing.timeSlicing.resources[0].replicas: expected a whole number >= 2, got "
            "nothing",
        ),
        (
            {"sharing": {"timeSlicing": {"resources": [{"name": "nvidia.com/gpu", "replicas": "4"}]}}},
            "config.yaml: sharing.timeSlicing.resources[0].replicas: expected a whole number >= 2, got '4'",
        ),
        (
            {"sharing": {"timeSlicing": {"resources": [{"replicas": 4}]}}},
            "config.yaml: sharing.timeSlicing.resources[0].name: expected a resource name such as "
            "nvidia.com/gpu, got nothing",
        ),
        (
            {"sharing": {"timeSlicing": {"resources": [{"name": "nvidia.com/GPU", "replicas": 4}]}}},
            "config.yaml: sharing.timeSlicing.resources[0].name: expected a resource name such as "
            "nvidia.com/gpu "
            "(lower-case letters, digits, '-' and '.'), got 'nvidia.com/GPU'",
        ),
        (
            {"sharing": {"timeSlicing": {"resources": [{"name": "gpu-" + "x" * 60, "replicas": 4}]}}},
            "config.yaml: sharing.timeSlicing.resources[0].name: expected a resource name of at most 63 "
            "characters",
        ),
        (
            {
                "sharing": {
                    "timeSlicing": {
                        "resources": [
                            {"name": "nvidia.com/gpu", "replicas": 2},
                            {"name": "gpu", "replicas": 4},
                        ]
                    }
                }
            },
            "config.yaml: sharing.timeSlicing.resources[1].name: nvidia.com/gpu is listed more than once; "
            "expected it once",
        ),
        (
            {
                "sharing": {
                    "timeSlicing": {"resources": [{"name": "nvidia.com/gpu", "replicas": 2, "replica": 3}]}
                }
            },
            "config.yaml: sharing.timeSlicing.resources[0]: unknown key replica; expected some of name, "
            "replicas, rename, devices",
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
            "config.yaml: sharing.timeSlicing.resources[0].devices[1]: expected a GPU index, a MIG index "
            "(0:1) "
            "or a GPU/MIG UUID, got 'GPU-x'",
        ),
        (
            {"sharing": {"timeSlicing": {"renameByDefault": "yes", "resources": []}}},
            "config.yaml: sharing.timeSlicing.renameByDefault: expected true or false, got 'yes'",
        ),
        (
            {"imex": {"channelIDs": [0]}},
            "config.yaml: imex: IMEX channels are not supported by nvplugin; expected no channelIDs and "
            "required: false",
        ),
    ],
)
def test_errors_name_file_path_and_expectation(doc: object, message: str) -> None:
    assert error(doc).startswith(message)


def test_ignored_nvidia_settings_are_reported() -> None:
    doc = {
        "flags": {
            "mpsRoot": "/run/nvidia/mps",
            "gdsEnabled": False,
            "plugin": {"nvidiaCTKPath": "/usr/bin/nvidia-ctk"},
            "gfd": {"outputFile": "/etc/kubernetes/node-feature-discovery/features.d/gfd"},
        },
        "resources": {"gpus": [{"pattern": "*", "name": "gpu"}]},
        "sharing": {
            "timeSlicing": {
                "resources": [
                    {"name": "nvidia.com/gpu", "replicas": 2, "rename": "gpu-shared", "devices": [0, "1:0"]}
                ]
            }
        },
        "health": {"disabled": True},
    }
    parsed = parse_config_file(doc, F)
    assert parsed.values["sharing"].time_slicing.resources == (ReplicatedResource("nvidia.com/gpu", 2),)
    assert parsed.warnings == (
        "config.yaml: flags.mpsRoot is ignored: nvplugin does not run MPS",
        "config.yaml: flags.plugin.nvidiaCTKPath is ignored: nvplugin does not generate CDI specs",
        "config.yaml: flags.gfd.outputFile is ignored: nvplugin writes labels itself",
        "config.yaml: sharing.timeSlicing.resources[0].rename is ignored: only renameByDefault renames "
        "shared resources (NVIDIA's plugin ignores rename too)",
        "config.yaml: sharing.timeSlicing.resources[0].devices is ignored: every device of nvidia.com/gpu "
        "is shared (NVIDIA's plugin ignores devices too)",
        "config.yaml: resources is ignored: custom resource names are not supported (NVIDIA's plugin "
        "ignores them too)",
    )
    # nvplugin's own `health:` section is kept for the XID policy, not ignored.
    assert parsed.health == {"disabled": True}


def test_a_bad_health_section_is_refused_with_its_path() -> None:
    with pytest.raises(ConfigError, match=r"config\.yaml: health"):
        parse_config_file({"version": "v1", "health": {"ignoredXids": ["many"]}}, F)


def test_precedence_flag_over_env_over_file() -> None:
    file_values = values({"flags": {"migStrategy": "mixed", "plugin": {"deviceIDStrategy": "index"}}})
    config = resolve({}, {}, file_values, F)
    assert (config.mig_strategy, config.device_id_strategy) == ("mixed", "index")
    config = resolve({}, {"MIG_STRATEGY": "single"}, file_values, F)
    assert (config.mig_strategy, config.device_id_strategy) == ("single", "index")
    config = resolve({"mig_strategy": "none"}, {"MIG_STRATEGY": "single"}, file_values, F)
    assert config.mig_strategy == "none"


def test_sharing_comes_from_the_file_only() -> None:
    file_values = values({"sharing": {"timeSlicing": {"resources": [{"name": "gpu", "replicas": 3}]}}})
    config = resolve({}, {}, file_values, F)
    assert config.sharing.time_slicing.resources == (ReplicatedResource("nvidia.com/gpu", 3),)
    assert resolve({}, {}, {}, F).sharing.strategy == "none"


def test_new_flags_and_env() -> None:
    config = resolve(
        {"shared_devices_allocation_policy": "packed"},
        {"GFD_ONESHOT": "true", "GFD_SLEEP_INTERVAL": "2m", "GFD_NO_TIMESTAMP": "1"},
    )
    assert config.shared_devices_allocation_policy == "packed"
    assert (config.gfd_oneshot, config.gfd_no_timestamp, config.gfd_sleep_interval_s) == (True, True, 120.0)
    with pytest.raises(
        ConfigError, match="--shared-devices-allocation-policy: expected one of distributed, packed"
    ):
        resolve({"shared_devices_allocation_policy": "spread"}, {})
    assert resolve({}, {}).device_root == "/"
    assert resolve({}, {"NVIDIA_DRIVER_ROOT": "/run/nvidia/driver"}).device_root == "/run/nvidia/driver"
