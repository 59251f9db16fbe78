from __future__ import annotations

import pytest

from nvplugin.core.config import DEFAULT_KUBELET_SOCKET, OPTIONS, Config, ConfigError, resolve


def test_defaults_match_nvidia() -> None:
    config = resolve({}, {})
    assert config == Config()
    assert config.kubelet_socket == DEFAULT_KUBELET_SOCKET
    assert config.fail_on_init_error is True
    assert config.mig_strategy == "none"
    assert config.device_list_strategy == ("envvar",)
    assert config.device_id_strategy == "uuid"
    assert config.cdi_annotation_prefix == "cdi.k8s.io/"
    assert config.plugin_dir == "/var/lib/kubelet/device-plugins"


def test_precedence_flag_over_env_over_file() -> None:
    file_values = {"mig_strategy": "mixed", "device_id_strategy": "index", "pass_device_specs": True}
    env = {"MIG_STRATEGY": "single", "DEVICE_ID_STRATEGY": "uuid"}
    config = resolve({"mig_strategy": "none"}, env, file_values)
    assert config.mig_strategy == "none"  # flag
    assert config.device_id_strategy == "uuid"  # env over file
    assert config.pass_device_specs is True  # file over default


def test_empty_env_value_counts_as_unset() -> None:
    assert resolve({}, {"MIG_STRATEGY": ""}).mig_strategy == "none"


@pytest.mark.parametrize("raw", ["true", "TRUE", "1", "yes", "on", True])
def test_bool_true(raw: object) -> None:
    assert resolve({"fail_on_init_error": raw}, {}).fail_on_init_error is True


@pytest.mark.parametrize("raw", ["false", "0", "no", "off", False])
def test_bool_false(raw: object) -> None:
    assert resolve({"fail_on_init_error": raw}, {}).fail_on_init_error is False


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (
            {"fail_on_init_error": "perhaps"},
            {},
            "--fail-on-init-error: expected true or false, got 'perhaps'",
        ),
        ({}, {"PASS_DEVICE_SPECS": "2"}, "environment variable PASS_DEVICE_SPECS: expected true or false"),
        ({"mig_strategy": "all"}, {}, "--mig-strategy: expected one of none, single, mixed; got 'all'"),
        ({"device_list_strategy": "envvar,nfs"}, {}, "got 'nfs'"),
        ({"device_list_strategy": ","}, {}, "got nothing"),
        ({"kubelet_socket": "/var/lib/kubelet/"}, {}, "got a directory"),
        ({"kubelet_socket": "  "}, {}, "expected a path"),
        ({"fake_gpus": "65"}, {}, "from 0 to 64"),
        ({"fake_gpus": "-1"}, {}, "from 0 to 64"),
    ],
)
def test_errors_name_the_source_and_the_expectation(
    flags: dict[str, object], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(flags, env)
    assert message in str(err.value)


def test_file_errors_name_the_file() -> None:
    with pytest.raises(ConfigError, match=r"config\.yaml: mig_strategy: expected one of"):
        resolve({}, {}, {"mig_strategy": "both"}, file_name="config.yaml")


def test_device_list_strategy_list_is_deduplicated_in_order() -> None:
    config = resolve({"device_list_strategy": "cdi-cri, envvar,cdi-cri"}, {})
    assert config.device_list_strategy == ("cdi-cri", "envvar")


def test_every_option_has_nvidia_style_names() -> None:
    for option in OPTIONS:
        assert option.flag.startswith("--") and option.flag == option.flag.lower()
        assert option.env is None or option.env == option.env.upper()
