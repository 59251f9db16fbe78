"""The shell side of the config: reading files (bounded, never blocking), precedence, and
`check-config` (NVIDIA's v1 output, ConfigMaps, strict mode, exit status)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nvplugin.configload import (
    ConfigSource,
    load,
    load_config,
    load_with_file,
    read_config_file,
)
from nvplugin.core.config import MAX_CONFIG_BYTES, ConfigError
from nvplugin.core.configfile import effective_document, parse_config_file

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
    path = write(tmp_path, "config.json", json.dumps(doc, indent="\t"))
    config = load_config({}, {"CONFIG_FILE": path, "DEVICE_ID_STRATEGY": "uuid"})
    assert (config.mig_strategy, config.device_id_strategy) == ("single", "uuid")
    assert load_config({"mig_strategy": "none"}, {"GFD_CONFIG_FILE": path}).mig_strategy == "none"


def test_no_file_gives_defaults() -> None:
    assert load({}, {}).config.sharing.strategy == "none"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.yaml", "version: v1\nflags: [\n", "bad.yaml: not valid YAML or JSON: "),
        ("bad.json", '{"version": "v1"', "bad.json: not valid YAML or JSON: "),
        ("v2.yaml", "version: v2\n", "v2.yaml: version: unknown version 'v2'; expected v1"),
        (
            "deep.yaml",
            "flags: " + "[" * 500 + "]" * 500,
            "deep.yaml: refused: nested more than 64 levels deep",
        ),
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


def test_only_regular_files_of_at_most_1_mib_are_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        read_config_file(str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it would block until a writer comes: it is never opened
    with pytest.raises(ConfigError, match="fifo: not a regular file; expected a YAML or JSON config file"):
        read_config_file(str(fifo))
    big = tmp_path / "big.yaml"
    with big.open("wb") as file:
        file.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(ConfigError, match=rf"the file is {MAX_CONFIG_BYTES + 1} bytes; expected at most"):
        read_config_file(str(big))


def test_warnings_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "c.yaml", "flags:\n  mpsroot: /run/nvidia/mps\n  deviceDiscoveryStrategy: tegra\n")
    config = load_config({"config_file": path}, {})
    assert config.mps_root == "/run/nvidia/mps"
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: flags.mpsroot: read as mpsRoot (NVIDIA matches these keys ignoring case)",
        f"{path}: flags.deviceDiscoveryStrategy: tegra cannot apply here: nvplugin discovers GPUs through NVML "
        "(as with nvml)",
    ]


def test_strict_loading_refuses_unknown_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "flags:\n  migStrategy: none\n  sleepInterval: 10s\n")
    assert (
        load({"config_file": path}, {})
        .warnings[0]
        .startswith(f"{path}: flags.sleepInterval: unknown key, ignored")
    )
    with pytest.raises(ConfigError, match=r"flags\.sleepInterval: unknown key; .*\(strict mode\)"):
        load({"config_file": path}, {}, strict=True)


def test_reloads_use_the_selected_file_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = write(tmp_path, "env.yaml", "flags:\n  migStrategy: single\n")
    selected = write(tmp_path, "selected.yaml", "flags:\n  migStrategy: mixed\n")
    monkeypatch.setenv("GFD_CONFIG_FILE", env_file)
    source = ConfigSource({})
    assert source.load().mig_strategy == "single"
    source.select_file(selected)
    assert source.load().mig_strategy == "mixed"
    source.select_file(None)
    assert source.load().mig_strategy == "none"


def test_the_effective_document_reads_back_as_the_same_config(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", GOOD + "imex:\n  channelIDs: [0]\nhealth:\n  ignoredXids: [48]\n")
    env = {"MPS_ROOT": "/run/nvidia/mps", "GFD_SLEEP_INTERVAL": "infinite", "GDS_ENABLED": "true"}
    loaded = load({"config_file": path}, env)
    document = effective_document(loaded.config, loaded.health)
    assert document["flags"]["gfd"]["sleepInterval"] == "infinite"
    assert document["flags"]["nvidiaDevRoot"] == "/"  # NVIDIA fills it from the driver root
    again = load_with_file(
        {}, {}, parse_config_file(yaml.safe_load(yaml.safe_dump(document)), "again", strict=True)
    )
    # NVIDIA writes nvidiaDevRoot out as the driver root it defaults to: the same device root.
    assert again.config == loaded.config.with_changes(config_file=None, dev_root="/")
    assert again.health == loaded.health


def run_check_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nvplugin.commands.check_config", "check-config", *args],
        capture_output=True,
        text=True,
        env=env or {"PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )


def test_check_config_prints_the_effective_config_in_nvidias_format(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", GOOD)
    result = run_check_config(path, env={"PATH": "/usr/bin:/bin", "PASS_DEVICE_SPECS": "false"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    header, _, body = result.stdout.partition("\n")
    assert header == f"# {path}: valid; effective config:"
    shown = yaml.safe_load(body)
    assert shown["version"] == "v1"
    assert shown["flags"]["migStrategy"] == "mixed"
    assert shown["flags"]["plugin"]["passDeviceSpecs"] is False  # the environment wins over the file
    assert shown["flags"]["plugin"]["deviceListStrategy"] == ["envvar", "cdi-annotations"]
    assert shown["flags"]["gfd"]["sleepInterval"] == "1m0s"
    assert shown["sharing"] == {
        "timeSlicing": {
            "renameByDefault": True,
            "failRequestsGreaterThanOne": True,
            "resources": [{"name": "nvidia.com/gpu", "replicas": 4}],
        }
    }
    assert shown["imex"] == {"channelIDs": [], "required": False}
    assert shown["health"]["ignoredXids"] == [] and shown["health"]["recovery"]["enabled"] is True
    ignoring = run_check_config(
        "--ignore-env", path, env={"PATH": "/usr/bin:/bin", "PASS_DEVICE_SPECS": "false"}
    )
    assert yaml.safe_load(ignoring.stdout)["flags"]["plugin"]["passDeviceSpecs"] is True


def test_check_config_shows_settings_without_a_file_key(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", "version: v1\n")
    result = run_check_config(
        path, env={"PATH": "/usr/bin:/bin", "NVPLUGIN_LABELS": "true", "NODE_NAME": "gpu-1"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(
        "# set outside the file (flags or environment only):\n#   --node-name=gpu-1\n#   --labels=true\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - name: nvidia.com/gpu\n        replicas: 1\n",
            "sharing.timeSlicing.resources[0].replicas: must be >= 2, got 1",
        ),
        (
            "sharing:\n  timeSlicing:\n    resources: [{name: gpu, replicas: 1000000000}]\n",
            "sharing.timeSlicing.resources[0].replicas: must be at most 4096 (nvplugin's bound), got 1000000000",
        ),
        (
            'flags:\n  plugin:\n    kubeletSocket: "/var/lib/k\\0.sock"\n',
            "flags.plugin.kubeletSocket: contains a NUL byte",
        ),
        ("flags:\n  gfd:\n    sleepInterval: 1e400\n", "flags.gfd.sleepInterval: expected a duration"),
        (
            "imex:\n  channelIDs: [" + "9" * 5000 + "]\n",
            "imex.channelIDs[0]: expected a whole number, got '9999",
        ),
        # libyaml's scanner may see the nesting first ("exceeded maximum nesting depth").
        ("flags: " + "[" * 1000 + "]" * 1000 + "\n", "nest"),
    ],
)
def test_check_config_refuses_bad_input_with_exit_2_and_no_traceback(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, "config.yaml", text)
    result = run_check_config(path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"invalid config: {path}: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_check_config_refuses_an_alias_bomb(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join([f'*{chr(96 + i)}'] * 9)}]")
    path = write(tmp_path, "bomb.yaml", "\n".join(lines) + "\n")
    result = run_check_config(path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"invalid config: {path}: refused: more than 10000 values")


def test_check_config_shows_warnings_and_passes(tmp_path: Path) -> None:
    path = write(
        tmp_path, "config.yaml", "version: v1\nflags:\n  mpsroot: /run/nvidia/mps\n  gpuDirect: true\n"
    )
    result = run_check_config(path)
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        f"warning: {path}: flags.mpsroot: read as mpsRoot (NVIDIA matches these keys ignoring case)",
        f"warning: {path}: flags.gpuDirect: unknown key, ignored (as NVIDIA ignores it); expected one of "
        "migStrategy, failOnInitError, nvidiaDriverRoot, nvidiaDevRoot, gdrcopyEnabled, gdsEnabled, mofedEnabled, "
        "mpsRoot, deviceDiscoveryStrategy, useNodeFeatureAPI, plugin, gfd",
    ]
    strict = run_check_config("--strict", path)
    assert strict.returncode == 2
    assert strict.stderr.startswith(f"invalid config: {path}: flags.gpuDirect: unknown key;")


CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: nvidia-plugin-configs
data:
  config0: |-
    version: v1
    flags:
      migStrategy: none
  config1: |-
    version: v1
    flags:
      migStrategy: mixed
  broken: |-
    version: v1
    flags:
      migStrategy: sideways
"""


def test_check_config_checks_each_entry_of_a_configmap(tmp_path: Path) -> None:
    path = write(tmp_path, "cm.yaml", CONFIGMAP)
    result = run_check_config(path)
    assert result.returncode == 2
    assert result.stderr == (
        f"invalid config: {path}: ConfigMap nvidia-plugin-configs: data.broken: flags.migStrategy: expected one of "
        "none, single, mixed; got 'sideways'\n"
    )
    documents = [d for d in result.stdout.split("# ") if d]
    assert [d.splitlines()[0] for d in documents] == [
        f"{path}: ConfigMap nvidia-plugin-configs: data.config0: valid; effective config:",
        f"{path}: ConfigMap nvidia-plugin-configs: data.config1: valid; effective config:",
    ]
    assert yaml.safe_load(documents[1].partition("\n")[2])["flags"]["migStrategy"] == "mixed"
    good = write(tmp_path, "good.yaml", CONFIGMAP.rpartition("  broken:")[0])
    assert run_check_config(good).returncode == 0


def test_check_config_reads_a_list_of_configmaps(tmp_path: Path) -> None:
    items = yaml.safe_load(CONFIGMAP.rpartition("  broken:")[0])
    path = write(tmp_path, "list.json", json.dumps({"apiVersion": "v1", "kind": "List", "items": [items]}))
    result = run_check_config(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("valid; effective config:") == 2


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (
            {"apiVersion": "v1", "kind": "ConfigMap", "data": {}},
            "ConfigMap: data: expected one or more config entries",
        ),
        (
            {"apiVersion": "v1", "kind": "ConfigMap", "data": {"c": 1}},
            "ConfigMap: data.c: expected the config's text",
        ),
        ({"apiVersion": "v1", "kind": "List", "items": [{"kind": "Pod"}]}, "items[0]: expected a ConfigMap"),
    ],
)
def test_check_config_bad_configmaps(tmp_path: Path, manifest: object, message: str) -> None:
    path = write(tmp_path, "cm.json", json.dumps(manifest))
    result = run_check_config(path)
    assert result.returncode == 2
    assert message in result.stderr
