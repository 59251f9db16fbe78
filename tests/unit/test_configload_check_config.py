"""The shell side of the config: reading files, precedence, and `check-config`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nvplugin.configload import config_as_dict, load, load_config, read_config_file
from nvplugin.core.config import ConfigError

GOOD = """\
version: v1
flags:
  migStrategy: mixed
  plugin:
    deviceListStrategy: [envvar, cdi-annotations]
    passDeviceSpecs: true
sharing:
  timeSlicing:
    renameByDefault: true
    failRequestsGreaterThanOne: true
    resources:
      - name: nvidia.com/gpu
        replicas: 4
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_yaml_file_through_flag(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", GOOD)
    config = load_config({"config_file": path}, {})
    assert config.config_file == path
    assert config.mig_strategy == "mixed"
    assert config.device_list_strategy == ("envvar", "cdi-annotations")
    assert config.sharing.time_slicing.resources[0].advertised_name == "nvidia.com/gpu.shared"


def test_json_file_through_env_and_env_beats_file(tmp_path: Path) -> None:
    doc = {"version": "v1", "flags": {"migStrategy": "single", "plugin": {"deviceIDStrategy": "index"}}}
    path = write(tmp_path, "config.json", json.dumps(doc))
    config = load_config({}, {"CONFIG_FILE": path, "DEVICE_ID_STRATEGY": "uuid"})
    assert (config.mig_strategy, config.device_id_strategy) == ("single", "uuid")
    assert load_config({"mig_strategy": "none"}, {"CONFIG_FILE": path}).mig_strategy == "none"


def test_no_file_gives_defaults() -> None:
    assert load({}, {}).config.sharing.strategy == "none"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "bad.yaml",
            "version: v1\nflags: [\n",
            "bad.yaml: not valid YAML or JSON: expected the node content",
        ),
        ("bad.json", '{"version": "v1",}', "bad.json: not valid JSON: "),
        ("v2.yaml", "version: v2\n", "v2.yaml: version: unknown version 'v2'; expected v1"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as caught:
        read_config_file(path)
    assert str(caught.value).startswith(f"{tmp_path}/{message}")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"missing.yaml: cannot read the config file: No such file or directory"
    ):
        load_config({"config_file": str(tmp_path / "missing.yaml")}, {})


def test_warnings_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "c.yaml", "flags:\n  mpsRoot: /run/nvidia/mps\n")
    load_config({"config_file": path}, {})
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: flags.mpsRoot is ignored: nvplugin does not run MPS"
    ]


def test_config_as_dict_is_plain() -> None:
    shown = config_as_dict(load({}, {}).config)
    assert shown["device_list_strategy"] == ["envvar"]
    assert shown["sharing"] == {
        "time_slicing": {"rename_by_default": False, "fail_requests_greater_than_one": False, "resources": []}
    }


def run_check_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nvplugin.commands.check_config", "check-config", *args],
        capture_output=True,
        text=True,
        env=env or {"PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", GOOD)
    result = run_check_config(path, env={"PATH": "/usr/bin:/bin", "PASS_DEVICE_SPECS": "false"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"# {path}: valid; effective config:\n")
    assert "mig_strategy: mixed\n" in result.stdout
    assert "pass_device_specs: false\n" in result.stdout  # the environment wins over the file
    assert "rename: nvidia.com/gpu.shared\n" in result.stdout
    ignoring = run_check_config(
        "--ignore-env", path, env={"PATH": "/usr/bin:/bin", "PASS_DEVICE_SPECS": "false"}
    )
    assert "pass_device_specs: true\n" in ignoring.stdout


def test_check_config_refuses_bad_input_without_traceback(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "config.yaml",
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - name: nvidia.com/gpu\n        "
        "replicas: 1\n",
    )
    result = run_check_config(path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert (
        result.stderr
        == f"invalid config: {path}: sharing.timeSlicing.resources[0].replicas: must be >= 2, got 1\n"
    )


def test_check_config_shows_warnings(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", "version: v1\nflags:\n  mpsRoot: /run/nvidia/mps\n")
    result = run_check_config(path)
    assert result.returncode == 0
    assert result.stderr == f"warning: {path}: flags.mpsRoot is ignored: nvplugin does not run MPS\n"
