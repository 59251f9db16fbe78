"""The reliability suite: fuzzing, restarts under load, leak checks; minutes, not seconds.

Left out of the default run (pyproject's norecursedirs skips this directory when pytest looks
for tests); run it with `tox -e reliability` or `pytest tests/reliability`.

NVPLUGIN_RELIABILITY_SCALE (a float, default 1) multiplies every test's default amount of
work: 0.1 for a quick look, 5 for a long soak. Tests record what they tried with the `figures`
fixture; the session ends with those figures printed (for docs/benchmarks.md).
"""

from __future__ import annotations

import os

import pytest

SCALE_ENV = "NVPLUGIN_RELIABILITY_SCALE"


def reliability_scale() -> float:
    raw = os.environ.get(SCALE_ENV, "1")
    try:
        scale = float(raw)
    except ValueError:
        raise pytest.UsageError(f"{SCALE_ENV}={raw!r}: expected a positive number such as 0.1 or 5") from None
    if not scale > 0:
        raise pytest.UsageError(f"{SCALE_ENV}={raw!r}: expected a positive number such as 0.1 or 5")
    return scale


def scaled(default: int, minimum: int = 1) -> int:
    """`default` times NVPLUGIN_RELIABILITY_SCALE, at least `minimum`."""
    return max(minimum, round(default * reliability_scale()))


class Figures:
    """What the suite tried and measured: (test, figure) -> value, in the order recorded."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, object]] = {}

    def record(self, test: str, figure: str, value: object) -> None:
        self.rows.setdefault(test, {})[figure] = value


_FIGURES = Figures()


@pytest.fixture
def figures() -> Figures:
    return _FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FIGURES.rows:
        return
    terminalreporter.section(f"reliability figures ({SCALE_ENV}={reliability_scale():g})")
    for test, row in _FIGURES.rows.items():
        terminalreporter.write_line(f"{test}:")
        for figure, value in row.items():
            terminalreporter.write_line(f"    {figure}: {value}")
