"""Command-line flags generated from OPTIONS: every NVIDIA name, Go's boolean flags (a bare flag is
true, --flag=false works), repeatable list flags, GFD's -o."""

from __future__ import annotations

import argparse
import math

import pytest

from nvplugin.cli import add_config_flags, flags_from_args
from nvplugin.core.config import Config, ConfigError, resolve


def parsed(*argv: str) -> Config:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    return resolve(flags_from_args(parser.parse_args(list(argv))), {})


def test_no_flags_is_the_default() -> None:
    assert parsed() == Config()


def test_boolean_flags_are_go_style() -> None:
    config = parsed("--pass-device-specs", "--oneshot=false", "--fail-on-init-error", "F", "--gds-enabled=1")
    assert (config.pass_device_specs, config.gfd_oneshot) == (True, False)
    assert (config.fail_on_init_error, config.gds_enabled) == (False, True)
    with pytest.raises(ConfigError, match="--imex-required: expected true or false, got 'yes'"):
        parsed("--imex-required=yes")


def test_every_name_of_a_flag_works() -> None:
    assert parsed("--nvidia-driver-root", "/run/nvidia/driver").nvidia_driver_root == "/run/nvidia/driver"
    assert parsed("--driver-root=/d").nvidia_driver_root == "/d"
    assert parsed("--nvidia-dev-root", "/").dev_root == "/"
    assert parsed("--nvidia-ctk-path", "/ctk").nvidia_cdi_hook_path == "/ctk"
    assert parsed("--container-driver-root", "/host").container_driver_root == "/host"
    assert parsed("-o", "/tmp/gfd").gfd_output_file == "/tmp/gfd"
    assert parsed("--output", "/tmp/gfd2").gfd_output_file == "/tmp/gfd2"


def test_list_flags_repeat_and_split() -> None:
    config = parsed("--device-list-strategy", "envvar", "--device-list-strategy", "cdi-cri,volume-mounts")
    assert config.device_list_strategy == ("envvar", "cdi-cri", "volume-mounts")
    assert parsed("--imex-channel-ids", "0").imex_channel_ids == (0,)
    assert parsed("--cdi-disable-hooks", "all").cdi_disable_hooks == ("all",)


def test_values_are_go_values() -> None:
    assert parsed("--sleep-interval", "infinite").gfd_sleep_interval_s == math.inf
    assert parsed("--sleep-interval=2m").gfd_sleep_interval_s == 120.0
    assert (
        parsed("--kube-api-qps", "2.5").kube_api_qps,
        parsed("--kube-api-burst", "0x20").kube_api_burst,
    ) == (2.5, 32)


def test_a_commands_own_flag_wins_over_a_config_alias() -> None:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    parser.add_argument("--output", choices=("text", "json"), default="text")
    args = parser.parse_args(["--output", "json", "-o", "/tmp/gfd"])
    assert (args.output, flags_from_args(args)["gfd_output_file"]) == ("json", "/tmp/gfd")
