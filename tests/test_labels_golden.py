"""Golden label sets: whole nodes described for the fake backend, labelled through the same
pipeline as `nvplugin labels` (discovery, node facts, resources, labels), compared key by key
with tests/data/golden-labels/<case>.txt.

Each <case>.yaml names the node: `layout` (a shipped layout's name or an inline layout),
`flags` (Config fields), `config` (an NVIDIA v1 config file's content) and `machine` (the DMI
product name; absent: unreadable). Each <case>.txt holds the expected labels in NFD's
features.d form, with `#` comments saying which GFD v0.20 rule gives the notable values; each
was reviewed key by key against GFD's code (internal/lm) and its tests' expectations.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from nvplugin.commands.labels import compute_labels

GOLDEN = Path(__file__).resolve().parent / "data" / "golden-labels"
CASES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))
NOW = 1764115200


def expected_labels(case: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for line in (GOLDEN / f"{case}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key not in labels, f"{case}.txt lists {key} twice"
            labels[key] = value
    return labels


def label_node(case: str, tmp_path: Path) -> dict[str, str]:
    spec = yaml.safe_load((GOLDEN / f"{case}.yaml").read_text())
    flags: dict[str, object] = dict(spec.get("flags", {}))
    layout = spec["layout"]
    if isinstance(layout, dict):
        (tmp_path / "layout.json").write_text(json.dumps(layout))
        layout = str(tmp_path / "layout.json")
    flags["fake_gpus"] = layout
    if "config" in spec:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(spec["config"]))
        flags["config_file"] = str(tmp_path / "config.yaml")
    machine = tmp_path / "product_name"
    if "machine" in spec:
        machine.write_text(spec["machine"] + "\n")
    warnings = io.StringIO()
    labels = compute_labels(
        {**flags, "machine_type_file": str(machine)}, {}, warn=warnings, clock=lambda: NOW + 0.5
    )
    assert "left out" not in warnings.getvalue()  # every golden value is a valid label value
    return labels


def test_every_case_has_its_expected_labels() -> None:
    assert len(CASES) >= 12
    assert sorted(p.stem for p in GOLDEN.glob("*.txt")) == CASES


@pytest.mark.parametrize("case", CASES)
def test_golden_labels(case: str, tmp_path: Path) -> None:
    labels = label_node(case, tmp_path)
    expected = expected_labels(case)
    missing = sorted(set(expected) - set(labels))
    extra = sorted(set(labels) - set(expected))
    wrong = sorted(
        f"{k}: {labels[k]!r} != {expected[k]!r}"
        for k in set(labels) & set(expected)
        if labels[k] != expected[k]
    )
    assert (missing, extra, wrong) == ([], [], [])
