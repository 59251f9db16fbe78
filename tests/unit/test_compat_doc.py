"""docs/nvidia-compat.md names every flag, environment variable and config key nvplugin reads."""

from __future__ import annotations

from pathlib import Path

from nvplugin.core.config import OPTIONS
from tests.unit.test_nvidia_config_corpus import NVIDIA_V020_KEYS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "nvidia-compat.md").read_text()


def test_every_flag_and_environment_variable_is_documented() -> None:
    for option in OPTIONS:
        for name in (*option.flags, *option.envs):
            assert f"`{name}`" in DOC, name
        assert f"`{option.field}" in DOC, option.field


def test_every_config_key_is_documented() -> None:
    for option in OPTIONS:
        for key in option.file_keys:
            assert f"`{key}`" in DOC, key
    sections = {
        key.split("[]")[0].rsplit(".", 1)[0] for key in NVIDIA_V020_KEYS if key.startswith("sharing.")
    }
    for section in sections | {"resources", "imex", "health"}:
        assert f"`{section}" in DOC, section
