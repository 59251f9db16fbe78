"""Every config NVIDIA v0.20 accepts (tests/data/nvidia-configs, sources in its README) loads in
nvplugin with NVIDIA's meaning; those NVIDIA refuses are refused. Together the corpus uses every
key of NVIDIA's v1 config."""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path

import pytest

from nvplugin.commands.check_config import configmap_entries
from nvplugin.configload import LoadedConfig, load, load_with_file, read_config_bytes
from nvplugin.configload.yamlreader import decode_config_text
from nvplugin.core.config import ConfigError, SharingStrategy
from nvplugin.core.configfile import parse_config_file

CORPUS = Path(__file__).resolve().parents[1] / "data" / "nvidia-configs"
VALID = sorted(p for p in CORPUS.iterdir() if p.suffix in (".yaml", ".json"))
INVALID = sorted((CORPUS / "invalid").iterdir())
# NVIDIA's chart sets MPS_ROOT; NVIDIA refuses MPS without it, and so does nvplugin.
CHART_ENV = {"MPS_ROOT": "/run/nvidia/mps"}

# Every key path of api/config/v1 at v0.20.0 (lists as []).
NVIDIA_V020_KEYS = {
    "version",
    "flags",
    "flags.migStrategy",
    "flags.failOnInitError",
    "flags.mpsRoot",
    "flags.nvidiaDriverRoot",
    "flags.nvidiaDevRoot",
    "flags.gdrcopyEnabled",
    "flags.gdsEnabled",
    "flags.mofedEnabled",
    "flags.useNodeFeatureAPI",
    "flags.deviceDiscoveryStrategy",
    "flags.plugin",
    "flags.plugin.passDeviceSpecs",
    "flags.plugin.deviceListStrategy",
    "flags.plugin.deviceIDStrategy",
    "flags.plugin.cdiAnnotationPrefix",
    "flags.plugin.nvidiaCTKPath",
    "flags.plugin.containerDriverRoot",
    "flags.plugin.sharedDevicesAllocationPolicy",
    "flags.gfd",
    "flags.gfd.oneshot",
    "flags.gfd.noTimestamp",
    "flags.gfd.sleepInterval",
    "flags.gfd.outputFile",
    "flags.gfd.machineTypeFile",
    "resources",
    "resources.gpus",
    "resources.gpus[].pattern",
    "resources.gpus[].name",
    "resources.mig",
    "resources.mig[].pattern",
    "resources.mig[].name",
    "sharing",
    "imex",
    "imex.channelIDs",
    "imex.required",
    *(
        f"sharing.{mode}{key}"
        for mode in ("timeSlicing", "mps")
        for key in (
            "",
            ".renameByDefault",
            ".failRequestsGreaterThanOne",
            ".resources",
            ".resources[].name",
            ".resources[].replicas",
            ".resources[].rename",
            ".resources[].devices",
        )
    ),
}


def documents(path: Path) -> dict[str, object]:
    """The config documents in a corpus file, by name (a ConfigMap holds several)."""
    document = decode_config_text(str(path), read_config_bytes(str(path)))
    entries = configmap_entries(document, str(path))
    if entries is None:
        return {str(path): document}
    return {name: decode_config_text(name, str(text)) for name, text in entries.items()}


def loaded(name: str, document: object, strict: bool = False) -> LoadedConfig:
    return load_with_file({}, CHART_ENV, parse_config_file(document, name, strict=strict), name)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_nvidia_accepts_it_so_nvplugin_does(path: Path) -> None:
    for name, document in documents(path).items():
        result = loaded(name, document)
        assert all(isinstance(w, str) and w for w in result.warnings)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_nvidia_refuses_it_so_nvplugin_does(path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load({"config_file": str(path)}, CHART_ENV)
    assert str(caught.value).startswith(f"{path}: ")


def key_paths(data: object, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            paths |= {path} | key_paths(value, path)
    elif isinstance(data, list):
        for item in data:
            paths |= key_paths(item, f"{prefix}[]")
    return paths


def test_the_corpus_uses_every_nvidia_v020_key_as_nvidia_spells_it() -> None:
    used = set().union(*(key_paths(d) for p in VALID for d in documents(p).values()))
    assert NVIDIA_V020_KEYS - used == set()


def test_the_canonical_files_have_no_unknown_keys() -> None:
    for path in VALID:
        if path.name.startswith(("go-yaml-leniency",)):
            continue
        for name, document in documents(path).items():
            loaded(name, document, strict=True)


def config_of(file: str) -> LoadedConfig:
    return load({"config_file": str(CORPUS / file)}, CHART_ENV)


def test_meanings_match_nvidias() -> None:
    assert config_of("readme-dp-example-config1.yaml").config.mig_strategy == "mixed"
    shared = config_of("readme-time-slicing-rename.yaml").config.sharing
    assert shared.strategy is SharingStrategy.TIME_SLICING
    assert shared.time_slicing.resources[0].advertised_name == "nvidia.com/gpu.shared"
    mps = config_of("config-test-mps-default.yaml").config.sharing
    assert mps.strategy is SharingStrategy.MPS and mps.active.fail_requests_greater_than_one is True
    assert (
        config_of("config-test-mps-relaxed.yaml").config.sharing.active.fail_requests_greater_than_one
        is False
    )
    assert config_of("flags-test-sleep-infinite.json").config.gfd_sleep_interval_s == math.inf
    nanoseconds = config_of("flags-test-sleep-nanoseconds.json")
    assert nanoseconds.config.gfd_sleep_interval_s == 1.0
    assert any("5ns is shorter than 1s" in w for w in nanoseconds.warnings)
    assert config_of("readme-imex-required.yaml").config.imex_required is True
    every = config_of("every-v020-key.yaml").config
    assert every.sharing.strategy is SharingStrategy.MPS  # MPS wins over time-slicing, as in NVIDIA
    assert (every.gds_enabled, every.mofed_enabled, every.gdrcopy_enabled) == (True, True, True)
    lenient = config_of("go-yaml-leniency.yaml")
    assert lenient.config.fail_on_init_error is True and lenient.config.mofed_enabled is True
    assert lenient.config.cdi_annotation_prefix == "1"
    assert lenient.config.sharing.time_slicing.resources[0].replicas == 3
    assert any("flags.notANvidiaKey: unknown key" in w for w in lenient.warnings)


def test_the_helm_configmap_has_three_configs() -> None:
    configs = documents(CORPUS / "helm-values-configmap.yaml")
    strategies = [loaded(n, d).config.mig_strategy for n, d in configs.items()]
    assert strategies == ["none", "single", "mixed"]
    assert next(iter(configs)).endswith("ConfigMap nvdp-nvidia-device-plugin-configs: data.default")


def test_the_readme_says_where_every_file_comes_from() -> None:
    lines = (CORPUS / "README.md").read_text().splitlines()
    first_cells = [line.split("|")[1].strip() for line in lines if line.startswith("|")]
    patterns = [p.strip() for cell in first_cells[2:] for p in cell.split(",")]
    for path in [*VALID, *INVALID]:
        name = str(path.relative_to(CORPUS))
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
