"""What a doctor check returns, and how a list of them is printed and turned into an exit code.

The JSON form is a stable interface (scripts and support tickets read it): a list of objects
with exactly the keys name, status, summary, details and fix.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

PASS = "pass"
WARN = "warn"
FAIL = "fail"
SKIP = "skip"
STATUSES = (PASS, WARN, FAIL, SKIP)

EXIT_OK = 0
EXIT_FAILED = 1
# No check failed, but at least one warned: something to look at, nothing known broken.
EXIT_WARNINGS = 3


@dataclass(frozen=True, slots=True)
class CheckResult:
    # A stable, kebab-case identifier ("nvml", "device-nodes", ...).
    name: str
    status: str
    # One line: what was found.
    summary: str
    # Further lines: every fact the verdict rests on, one per line.
    details: tuple[str, ...] = ()
    # What to do about it; None when there is nothing to do.
    fix: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"check {self.name}: status {self.status!r} is not one of {', '.join(STATUSES)}")

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "summary": self.summary,
            "details": list(self.details),
            "fix": self.fix,
        }


def exit_code(results: Sequence[CheckResult]) -> int:
    """0 when every check passed or did not apply; 1 when one failed; 3 when one only warned."""
    statuses = {r.status for r in results}
    if FAIL in statuses:
        return EXIT_FAILED
    if WARN in statuses:
        return EXIT_WARNINGS
    return EXIT_OK


def as_json(results: Sequence[CheckResult]) -> str:
    return json.dumps([r.as_dict() for r in results], indent=2) + "\n"


_MARKS = {PASS: "PASS", WARN: "WARN", FAIL: "FAIL", SKIP: "skip"}


def as_text(results: Sequence[CheckResult], *, header: str = "") -> str:
    """For a person: one block per check, the verdict first, then the facts and the fix."""
    lines = [header] if header else []
    for result in results:
        lines.append(f"[{_MARKS[result.status]}] {result.name}: {result.summary}")
        lines.extend(f"       {detail}" for detail in result.details)
        if result.fix:
            lines.append(f"       fix: {result.fix}")
    counts = {status: sum(r.status == status for r in results) for status in STATUSES}
    # Worded unlike a test runner's summary line: CI logs are scanned for those.
    lines.append(
        f"checks: {counts[PASS]} pass, {counts[WARN]} warn, {counts[FAIL]} fail, {counts[SKIP]} skip"
    )
    return "\n".join(lines) + "\n"
