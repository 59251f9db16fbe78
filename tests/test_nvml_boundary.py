"""The NVML boundary: only nvml/real.py (and nvml/early.py) may import pynvml; everything else
goes through the Nvml interface, so the fake backend can stand in for every query."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nvplugin"
ALLOWED = {"nvml/real.py", "nvml/early.py"}
# Ways to reach a module by name without an import statement.
DYNAMIC_IMPORTS = {"import_module", "__import__"}


def pynvml_imports(source: str) -> list[int]:
    """Line numbers where `source` imports pynvml, statically or by name."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called not in DYNAMIC_IMPORTS or not node.args:
                continue
            first = node.args[0]
            names = [first.value] if isinstance(first, ast.Constant) and isinstance(first.value, str) else []
        else:
            continue
        if any(name == "pynvml" or name.startswith("pynvml.") for name in names):
            lines.append(node.lineno)
    return lines


def test_only_the_real_backend_imports_pynvml() -> None:
    offenders = [
        f"nvplugin/{path.relative_to(PACKAGE)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if str(path.relative_to(PACKAGE)) not in ALLOWED
        for line in pynvml_imports(path.read_text())
    ]
    assert offenders == [], f"pynvml imported outside nvml/real.py and nvml/early.py: {offenders}"


def test_the_scan_sees_every_form_of_import() -> None:
    source = """
import os, pynvml
from pynvml import nvmlInit
import pynvml.smi as smi
def later():
    import importlib
    importlib.import_module("pynvml")
    __import__("pynvml")
import pynvmlx
from nvplugin import pynvml_helpers
"""
    assert pynvml_imports(source) == [2, 3, 4, 7, 8]
    assert pynvml_imports((PACKAGE / "nvml/real.py").read_text())  # the one that does
