"""The layering of docs/architecture.md, checked on the source: imports point downward only.

Every import counts, lazy ones inside functions too; only `if TYPE_CHECKING:` blocks are
exempt (they never run).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nvplugin"

# Module prefix -> layer; a module may import its own layer and those below. Longest prefix wins.
LAYERS = {
    "nvplugin.core": 0,
    "nvplugin.api": 0,
    "nvplugin.nvml": 1,
    "nvplugin.configload": 1,
    "nvplugin.devicenodes": 1,
    "nvplugin.cdi": 1,
    "nvplugin.imex": 1,
    "nvplugin.logs": 1,
    "nvplugin.state": 2,
    "nvplugin.observability": 2,
    "nvplugin.tasks": 2,
    "nvplugin.nodefacts": 2,
    "nvplugin.metrics_server": 2,
    "nvplugin.plugin": 3,
    "nvplugin.health": 3,
    "nvplugin.mps": 3,
    "nvplugin.k8s": 3,
    "nvplugin.agent": 4,
    "nvplugin.nodelabels": 4,
    # `nvplugin doctor`'s checks: read NVML, the config and the API server, wire nothing.
    "nvplugin.doctor": 4,
    "nvplugin.simulate": 5,
    "nvplugin.commands": 5,
    "nvplugin.cli": 5,
    "nvplugin.__main__": 5,
    "nvplugin.testing": 6,
    "nvplugin": 0,  # the package's own __init__ (version only)
}
LAYER_NAMES = ["core", "NVML and config loading", "shared state", "servers and clients", "wiring", "commands"]

# Pairs that must never meet, whatever the layers say.
FORBIDDEN = (
    ("nvplugin.plugin", "nvplugin.k8s", "the gRPC side never uses the Kubernetes client"),
    ("nvplugin.plugin", "kubernetes_asyncio", "the gRPC side never uses the Kubernetes client"),
    ("nvplugin.k8s", "nvplugin.plugin", "the Kubernetes side never reaches into the gRPC servers"),
    ("nvplugin", "nvplugin.testing", "the runtime never imports the test kit"),
)
# Only these modules may import pynvml: everything else goes through the Nvml protocol.
PYNVML_IMPORTERS = {"nvplugin.nvml.real", "nvplugin.nvml.early"}
STDLIB = sys.stdlib_module_names


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import that can run."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], base])
            yield node.lineno, base.strip(".")


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "api" not in p.relative_to(PACKAGE).parts[:1])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_downward(path: Path) -> None:
    me = module_name(path)
    problems = []
    for line, target in imports(path):
        where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
        if target.startswith("nvplugin"):
            if target != me and layer(target) > layer(me):
                problems.append(
                    f"{where}: {LAYER_NAMES[layer(me)] if layer(me) < 6 else 'test kit'} may not import "
                    f"from {LAYER_NAMES[layer(target)] if layer(target) < 6 else 'the test kit'}"
                )
        elif me.startswith("nvplugin.core") and target.split(".")[0] not in STDLIB:
            problems.append(f"{where}: the core imports the standard library only")
        if target.split(".")[0] == "pynvml" and me not in PYNVML_IMPORTERS:
            problems.append(f"{where}: only {', '.join(sorted(PYNVML_IMPORTERS))} may import pynvml")
        for source, forbidden, why in FORBIDDEN:
            inside = me == source or me.startswith(source + ".")
            hits = target == forbidden or target.startswith(forbidden + ".")
            if inside and hits and not me.startswith(forbidden):
                problems.append(f"{where}: {why}")
    assert not problems, "\n".join(problems)
