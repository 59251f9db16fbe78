"""Flags and environment: NVIDIA's names (both commands), Go's syntax, precedence, bounds."""

from __future__ import annotations

import math

import pytest

from nvplugin.core.config import (
    DEFAULT_KUBELET_SOCKET,
    MAX_PATH_BYTES,
    OPTIONS,
    AllocationPolicy,
    Config,
    ConfigError,
    DeviceDiscoveryStrategy,
    DeviceIdStrategy,
    DeviceListStrategy,
    MigStrategy,
    ReplicatedResource,
    ReplicatedResources,
    Sharing,
    SharingStrategy,
    resolve,
    resolve_settings,
)

# Every flag and environment variable of NVIDIA's two v0.20 commands
# (cmd/nvidia-device-plugin/main.go, cmd/gpu-feature-discovery/main.go, internal/flags).
NVIDIA_FLAGS = {
    "--mig-strategy": ["MIG_STRATEGY", "GFD_MIG_STRATEGY"],
    "--fail-on-init-error": ["FAIL_ON_INIT_ERROR", "GFD_FAIL_ON_INIT_ERROR"],
    "--driver-root": ["NVIDIA_DRIVER_ROOT"],
    "--nvidia-driver-root": ["NVIDIA_DRIVER_ROOT"],
    "--dev-root": ["NVIDIA_DEV_ROOT"],
    "--nvidia-dev-root": ["NVIDIA_DEV_ROOT"],
    "--pass-device-specs": ["PASS_DEVICE_SPECS"],
    "--device-list-strategy": ["DEVICE_LIST_STRATEGY"],
    "--device-id-strategy": ["DEVICE_ID_STRATEGY"],
    "--gdrcopy-enabled": ["GDRCOPY_ENABLED"],
    "--gds-enabled": ["GDS_ENABLED"],
    "--mofed-enabled": ["MOFED_ENABLED"],
    "--cdi-annotation-prefix": ["CDI_ANNOTATION_PREFIX"],
    "--nvidia-cdi-hook-path": ["NVIDIA_CDI_HOOK_PATH", "NVIDIA_CTK_PATH"],
    "--nvidia-ctk-path": ["NVIDIA_CDI_HOOK_PATH", "NVIDIA_CTK_PATH"],
    "--driver-root-ctr-path": ["DRIVER_ROOT_CTR_PATH", "CONTAINER_DRIVER_ROOT"],
    "--container-driver-root": ["DRIVER_ROOT_CTR_PATH", "CONTAINER_DRIVER_ROOT"],
    "--mps-root": ["MPS_ROOT"],
    "--shared-devices-allocation-policy": ["SHARED_DEVICES_ALLOCATION_POLICY"],
    "--device-discovery-strategy": ["DEVICE_DISCOVERY_STRATEGY"],
    "--imex-channel-ids": ["IMEX_CHANNEL_IDS"],
    "--imex-required": ["IMEX_REQUIRED"],
    "--kubelet-socket": ["KUBELET_SOCKET"],
    "--config-file": ["CONFIG_FILE", "GFD_CONFIG_FILE"],
    "--cdi-feature-flags": ["CDI_FEATURE_FLAGS"],
    "--cdi-disable-hooks": ["CDI_DISABLE_HOOKS"],
    "--oneshot": ["GFD_ONESHOT"],
    "--no-timestamp": ["GFD_NO_TIMESTAMP"],
    "--sleep-interval": ["GFD_SLEEP_INTERVAL"],
    "--output-file": ["GFD_OUTPUT_FILE"],
    "--output": ["GFD_OUTPUT_FILE"],
    "-o": ["GFD_OUTPUT_FILE"],
    "--machine-type-file": ["GFD_MACHINE_TYPE_FILE"],
    "--use-node-feature-api": ["GFD_USE_NODE_FEATURE_API", "USE_NODE_FEATURE_API"],
    "--kubeconfig": ["KUBECONFIG"],
    "--kube-api-qps": ["KUBE_API_QPS"],
    "--kube-api-burst": ["KUBE_API_BURST"],
    "--namespace": ["NAMESPACE"],
    "--node-name": ["NODE_NAME"],
    "--pod-name": ["POD_NAME"],
}


def test_every_nvidia_flag_and_env_name_is_an_option() -> None:
    by_flag = {flag: option for option in OPTIONS for flag in option.flags}
    for flag, envs in NVIDIA_FLAGS.items():
        assert flag in by_flag, flag
        assert set(envs) <= set(by_flag[flag].envs), flag


def test_names_are_unique_and_nvidia_styled() -> None:
    flags = [f for o in OPTIONS for f in o.flags]
    envs = [e for o in OPTIONS for e in o.envs]
    keys = [k for o in OPTIONS for k in o.file_keys]
    assert len(flags) == len(set(flags)) and len(envs) == len(set(envs)) and len(keys) == len(set(keys))
    assert all(f.startswith("-") and f == f.lower() for f in flags)
    assert all(e == e.upper() for e in envs)


def test_defaults_match_nvidia() -> None:
    config = resolve({}, {})
    assert config == Config()
    assert config.kubelet_socket == DEFAULT_KUBELET_SOCKET
    assert config.fail_on_init_error is True
    assert config.mig_strategy is MigStrategy.NONE
    assert config.device_list_strategy == (DeviceListStrategy.ENVVAR,)
    assert config.device_id_strategy is DeviceIdStrategy.UUID
    assert config.cdi_annotation_prefix == "cdi.k8s.io/"
    assert config.nvidia_cdi_hook_path == "/usr/bin/nvidia-ctk"
    assert config.container_driver_root == "/driver-root"
    assert config.cdi_spec_dir == "/var/run/cdi"
    assert config.mps_root is None
    assert (config.gds_enabled, config.mofed_enabled, config.gdrcopy_enabled) == (False, False, False)
    assert (config.imex_channel_ids, config.imex_required) == ((), False)
    assert config.device_discovery_strategy is DeviceDiscoveryStrategy.AUTO
    assert config.shared_devices_allocation_policy is AllocationPolicy.DISTRIBUTED
    assert (config.gfd_oneshot, config.gfd_no_timestamp, config.gfd_sleep_interval_s) == (False, False, 60.0)
    assert config.machine_type_file == "/sys/class/dmi/id/product_name"
    assert (config.kube_api_qps, config.kube_api_burst, config.namespace) == (5.0, 10, "default")
    assert config.plugin_dir == "/var/lib/kubelet/device-plugins"
    assert config.sharing.strategy is SharingStrategy.NONE


def test_precedence_flag_over_env_over_file() -> None:
    file_values = {"mig_strategy": MigStrategy.MIXED, "device_id_strategy": DeviceIdStrategy.INDEX}
    file_values |= {"pass_device_specs": True}
    env = {"MIG_STRATEGY": "single", "DEVICE_ID_STRATEGY": "uuid"}
    config = resolve({"mig_strategy": "none"}, env, file_values)
    assert config.mig_strategy == "none"  # flag
    assert config.device_id_strategy == "uuid"  # env over file
    assert config.pass_device_specs is True  # file over default


def test_empty_values_count_as_unset_except_booleans() -> None:
    assert resolve({}, {"MIG_STRATEGY": ""}).mig_strategy == "none"
    assert resolve({"nvidia_driver_root": ""}, {}).nvidia_driver_root == "/"
    # urfave/cli: a boolean variable that is set but empty is false.
    assert resolve({}, {"FAIL_ON_INIT_ERROR": ""}).fail_on_init_error is False


def test_enums_compare_with_their_text() -> None:
    config = resolve({"mig_strategy": "mixed", "device_list_strategy": "cdi-cri"}, {})
    assert config.mig_strategy == "mixed" and f"{config.mig_strategy}" == "mixed"
    assert config.device_list_strategy == ("cdi-cri",)


@pytest.mark.parametrize(
    ("raw", "value"), [("true", True), ("T", True), ("1", True), ("0", False), ("F", False)]
)
def test_booleans_are_go_parsebool(raw: str, value: bool) -> None:
    assert resolve({"pass_device_specs": raw}, {}).pass_device_specs is value
    assert resolve({}, {"PASS_DEVICE_SPECS": raw}).pass_device_specs is value


@pytest.mark.parametrize("raw", ["yes", "on", "TrUe", "2"])
def test_booleans_beyond_go_are_refused_with_the_accepted_list(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve({}, {"PASS_DEVICE_SPECS": raw})
    assert str(caught.value) == (
        f"environment variable PASS_DEVICE_SPECS: expected true or false, got {raw!r} "
        "(Go's ParseBool accepts 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)"
    )


def test_env_names_in_order_and_disagreement_is_noted() -> None:
    assert resolve({}, {"GFD_MIG_STRATEGY": "single"}).mig_strategy == "single"
    resolved = resolve_settings({}, {"MIG_STRATEGY": "mixed", "GFD_MIG_STRATEGY": "single"})
    assert resolved.config.mig_strategy == "mixed"
    assert resolved.notes == (
        "environment variables MIG_STRATEGY='mixed' and GFD_MIG_STRATEGY='single' disagree; MIG_STRATEGY is used",
    )
    assert resolve({}, {"NVIDIA_CTK_PATH": "/opt/ctk"}).nvidia_cdi_hook_path == "/opt/ctk"
    assert resolve({}, {"CONTAINER_DRIVER_ROOT": "/host"}).container_driver_root == "/host"
    assert resolve({}, {"USE_NODE_FEATURE_API": "false"}).gfd_use_node_feature_api is False


def test_lists_split_on_commas_and_repeat() -> None:
    config = resolve({"device_list_strategy": ["cdi-cri, envvar", "cdi-cri"]}, {})
    assert config.device_list_strategy == ("cdi-cri", "envvar")
    assert resolve({}, {"CDI_FEATURE_FLAGS": "a,b"}).cdi_feature_flags == ("a", "b")
    assert resolve({}, {"IMEX_CHANNEL_IDS": "0"}).imex_channel_ids == (0,)
    assert resolve({"imex_channel_ids": ["0x0"]}, {}).imex_channel_ids == (0,)


def test_durations_and_infinite() -> None:
    assert resolve({}, {"GFD_SLEEP_INTERVAL": "1m30s"}).gfd_sleep_interval_s == 90.0
    assert resolve({"gfd_sleep_interval_s": "infinite"}, {}).gfd_sleep_interval_s == math.inf
    resolved = resolve_settings({"gfd_sleep_interval_s": "0s"}, {})
    assert resolved.config.gfd_sleep_interval_s == 1.0
    assert resolved.notes == ("--sleep-interval: 0s is shorter than 1s; labels are refreshed every 1s",)


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"mig_strategy": "all"}, {}, "--mig-strategy: expected one of none, single, mixed; got 'all'"),
        ({"device_list_strategy": "envvar,nfs"}, {}, "got 'nfs'"),
        ({"device_id_strategy": "serial"}, {}, "expected one of uuid, index; got 'serial'"),
        ({}, {"DEVICE_DISCOVERY_STRATEGY": "wsl"}, "expected one of auto, nvml, tegra, vfio; got 'wsl'"),
        ({"shared_devices_allocation_policy": "spread"}, {}, "expected one of distributed, packed"),
        ({"gfd_sleep_interval_s": "60"}, {}, "--sleep-interval: expected a duration such as 60s"),
        ({}, {"GFD_SLEEP_INTERVAL": "1e400s"}, "unknown unit 'e'"),
        ({}, {"GFD_SLEEP_INTERVAL": "3000000h"}, "out of range"),
        ({"imex_channel_ids": "1"}, {}, "--imex-channel-ids: expected no channels or channel 0"),
        ({}, {"IMEX_CHANNEL_IDS": "zero"}, "environment variable IMEX_CHANNEL_IDS: expected a whole number"),
        ({}, {"IMEX_CHANNEL_IDS": "9" * 30}, "out of the 64-bit range"),
        ({"kube_api_qps": "nan"}, {}, "--kube-api-qps: expected a number from 0 to 1000000, got nan"),
        ({"kube_api_qps": "-1"}, {}, "expected a number from 0 to 1000000"),
        ({"kube_api_burst": "1e3"}, {}, "--kube-api-burst: expected a whole number"),
        ({"kube_api_burst": "10000000"}, {}, "expected a whole number from 0 to 1000000"),
        ({"kubelet_socket": "/var/lib/kubelet/"}, {}, "got a directory"),
        ({"kubelet_socket": "/var/lib/kubelet/.."}, {}, "got a directory"),
        (
            {"kubelet_socket": "/" + "k" * 107},
            {},
            "108 bytes is longer than a unix socket allows (107); use a shorter --kubelet-socket path",
        ),
        ({"kubelet_socket": "/tmp/k\0.sock"}, {}, "--kubelet-socket: contains a NUL byte"),
        ({"kubelet_socket": "  "}, {}, "--kubelet-socket: expected the kubelet's socket path"),
        (
            {},
            {"KUBELET_SOCKET": ""},
            "environment variable KUBELET_SOCKET: expected the kubelet's socket path",
        ),
        (
            {"nvidia_driver_root": "/x" * MAX_PATH_BYTES},
            {},
            "--driver-root/--nvidia-driver-root: 8192 bytes long",
        ),
        ({"node_name": "n" * 300}, {}, "--node-name: 300 bytes long; expected at most 253"),
        ({"fake_gpus": "65"}, {}, "from 0 to 64"),
        ({"fake_gpus": "-1"}, {}, "from 0 to 64"),
        ({"fake_gpus": "9" * 5000}, {}, "from 0 to 64"),
    ],
)
def test_errors_name_the_source_and_the_expectation(
    flags: dict[str, object], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(flags, env)
    assert message in str(err.value)


def test_socket_path_at_the_unix_limit_is_accepted() -> None:
    path = "/" + "k" * 106
    assert resolve({"kubelet_socket": path}, {}).kubelet_socket == path


def mps(*resources: tuple[str, int]) -> Sharing:
    return Sharing(mps=ReplicatedResources(resources=tuple(ReplicatedResource(n, r) for n, r in resources)))


def test_mps_needs_the_mps_root_and_refuses_mixed_as_nvidia_does() -> None:
    sharing = mps(("nvidia.com/gpu", 4))
    with pytest.raises(
        ConfigError, match=r"sharing\.mps needs the MPS root: set --mps-root, MPS_ROOT or flags\.mpsRoot"
    ):
        resolve({}, {}, {"sharing": sharing})
    with pytest.raises(
        ConfigError, match=r"sharing.mps cannot be used with mig-strategy mixed \(--mig-strategy\)"
    ):
        resolve({"mig_strategy": "mixed"}, {"MPS_ROOT": "/run/nvidia/mps"}, {"sharing": sharing})
    config = resolve({}, {"MPS_ROOT": "/run/nvidia/mps"}, {"sharing": sharing})
    assert config.sharing.strategy is SharingStrategy.MPS
    assert config.mps_root == "/run/nvidia/mps"


def test_settings_that_cannot_apply_here_are_noted_not_refused() -> None:
    resolved = resolve_settings(
        {"device_discovery_strategy": "tegra"},
        {"GFD_USE_NODE_FEATURE_API": "true"},
        {"device_list_strategy": ()},
    )
    assert resolved.config.device_discovery_strategy is DeviceDiscoveryStrategy.TEGRA
    assert resolved.notes == (
        "--device-discovery-strategy: tegra cannot apply here: nvplugin discovers GPUs through NVML (as with nvml)",
        "environment variable GFD_USE_NODE_FEATURE_API: nvplugin does not create NFD NodeFeature objects; "
        "with --labels it writes the same labels to the Node itself",
        "config file: device_list_strategy: no strategy is set, so Allocate passes no devices to the container "
        "runtime (as NVIDIA does)",
    )


def test_sharing_strategy_follows_nvidia() -> None:
    time_slicing = ReplicatedResources(resources=(ReplicatedResource("nvidia.com/gpu", 2),))
    assert Sharing(time_slicing=time_slicing).strategy == "time-slicing"
    assert Sharing(time_slicing=time_slicing, mps=mps(("nvidia.com/gpu", 3)).mps).strategy == "mps"
    assert (
        Sharing(time_slicing=time_slicing, mps=mps(("nvidia.com/gpu", 3)).mps).active.resources[0].replicas
        == 3
    )
    assert Sharing().strategy == "none" and Sharing().active == ReplicatedResources()


def test_a_list_of_only_commas_is_not_set() -> None:
    assert resolve({}, {"DEVICE_LIST_STRATEGY": " , "}).device_list_strategy == ("envvar",)
    assert resolve({"device_list_strategy": [","]}, {}).device_list_strategy == ("envvar",)
