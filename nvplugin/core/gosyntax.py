"""Go's value syntax, as NVIDIA's binaries parse flags, environment variables and config files.

NVIDIA's plugin and GFD are Go programs: booleans go through strconv.ParseBool, durations
through time.ParseDuration (plus NVIDIA's "infinite"), integer lists through
strconv.ParseInt(s, 0, 64), and a YAML number given for a string setting becomes Go's
FormatFloat(f, 'g', -1, 32) text. A drop-in replacement must accept exactly what they accept
with the same meaning, so these are written out here rather than approximated with Python's
own (more or less permissive) parsers.
"""

from __future__ import annotations

import math
import re
import struct

# strconv.ParseBool accepts these and nothing else.
GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
# NVIDIA's Duration for "infinite" is math.MaxInt64 nanoseconds.
INFINITE_NS = INT64_MAX
# Longer texts are refused before any arithmetic: no real duration or number is this long.
MAX_NUMBER_TEXT = 100


class GoSyntaxError(ValueError):
    """The text is not valid in Go's syntax: what was expected, and why not where that helps."""

    def __init__(self, expected: str, detail: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.detail = detail

    def message(self, raw: object) -> str:
        """ "expected X, got 'raw' (detail)" """
        shown = repr(raw) if len(repr(raw)) <= 80 else repr(raw)[:77] + "..."
        return f"{self.expected}, got {shown}" + (f" ({self.detail})" if self.detail else "")


def parse_bool(text: str) -> bool:
    if text in GO_TRUE:
        return True
    if text in GO_FALSE:
        return False
    raise GoSyntaxError(
        "expected true or false",
        "Go's ParseBool accepts 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False",
    )


_GO_INT = re.compile(
    r"[+-]?(?:0[xX](?:_?[0-9a-fA-F])+|0[bB](?:_?[01])+|0[oO](?:_?[0-7])+|0(?:_?[0-7])*|[1-9](?:_?[0-9])*)"
)


def parse_int(text: str) -> int:
    """strconv.ParseInt(text, 0, 64): decimal, 0x/0o/0b prefixes, a leading 0 for octal,
    underscores between digits; within int64."""
    if len(text) > MAX_NUMBER_TEXT or not _GO_INT.fullmatch(text):
        raise GoSyntaxError("expected a whole number such as 0, 12 or 0x1f")
    value = base0_value(text.replace("_", ""))
    if not INT64_MIN <= value <= INT64_MAX:
        raise GoSyntaxError("expected a whole number", "out of the 64-bit range")
    return value


def base0_value(text: str) -> int:
    """The value of a signed integer literal without underscores, base by prefix as in Go:
    0x, 0o, 0b, and a bare leading 0 for octal ("010" is 8; Python's int(text, 0) refuses it).
    ValueError when the digits do not fit the base ("08")."""
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    octal = len(digits) > 1 and digits[0] == "0" and digits[1].isdigit()
    return sign * int(digits, 8 if octal else 0)


_DURATION_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # µ (micro sign)
    "\u03bcs": 1_000,  # μ (Greek mu)
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]+)")
EXPECTED_DURATION = "expected a duration such as 60s, 1m30s, 500ms or infinite"


def parse_duration_ns(text: str) -> int:
    """NVIDIA's Duration: "infinite" or time.ParseDuration's syntax ("1h2m3.5s", "-5s", "0"),
    in nanoseconds. Go refuses values beyond int64 nanoseconds (about 292 years), and so do we."""
    if text == "infinite":
        return INFINITE_NS
    if not text or len(text) > MAX_NUMBER_TEXT:
        raise GoSyntaxError(EXPECTED_DURATION)
    body = text
    negative = body[0] == "-"
    if body[0] in "+-":
        body = body[1:]
    if body == "0":
        return 0
    if not body:
        raise GoSyntaxError(EXPECTED_DURATION)
    total = 0
    position = 0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        if match is None:
            raise GoSyntaxError(EXPECTED_DURATION, "missing unit: ns, us, µs, ms, s, m or h")
        whole, fraction, unit = match.group(1), match.group(2), match.group(3)
        if not whole and not fraction:
            raise GoSyntaxError(EXPECTED_DURATION)
        scale = _DURATION_UNITS_NS.get(unit)
        if scale is None:
            raise GoSyntaxError(
                EXPECTED_DURATION, f"unknown unit {unit!r}: expected ns, us, µs, ms, s, m or h"
            )
        total += int(whole or "0") * scale
        if fraction:
            total += _fraction_ns(fraction, scale)
        position = match.end()
    if total > (INT64_MAX + 1 if negative else INT64_MAX):
        raise GoSyntaxError(
            EXPECTED_DURATION, "out of range: at most 2562047h47m16.854775807s, about 292 years"
        )
    return -total if negative else total


def _fraction_ns(digits: str, unit_ns: int) -> int:
    """Go's leadingFraction and its float64 scaling: digits past int64 precision are dropped,
    and the result is truncated (so "0.3333333333333333333h" is exactly 20m, as in Go)."""
    value, scale = 0, 1.0
    for digit in digits:
        if value > INT64_MAX // 10:
            break
        value = value * 10 + int(digit)
        scale *= 10
    return int(float(value) * (float(unit_ns) / scale))


def format_duration_ns(ns: int) -> str:
    """Go's Duration.String() ("1m0s", "1.5s", "500ms", "0s"), and NVIDIA's "infinite"."""
    if ns == INFINITE_NS:
        return "infinite"
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{_fraction(u, 3)}µs"
    if u < 1_000_000_000:
        return f"{sign}{_fraction(u, 6)}ms"
    seconds = _fraction(u % 60_000_000_000, 9)
    minutes_total = u // 60_000_000_000
    if minutes_total == 0:
        return f"{sign}{seconds}s"
    hours, minutes = divmod(minutes_total, 60)
    if hours == 0:
        return f"{sign}{minutes}m{seconds}s"
    return f"{sign}{hours}h{minutes}m{seconds}s"


def _fraction(value: int, digits: int) -> str:
    whole, rest = divmod(value, 10**digits)
    text = f"{rest:0{digits}d}".rstrip("0")
    return f"{whole}.{text}" if text else str(whole)


_FLOAT32_MAX = 3.4028234663852886e38


def format_float32(value: float) -> str:
    """strconv.FormatFloat(value, 'g', -1, 32): how sigs.k8s.io/yaml turns a YAML number given
    for a string setting into text ("1.5", "1e+06", "+Inf")."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value) or abs(value) > _FLOAT32_MAX:
        return "+Inf" if value > 0 else "-Inf"
    single = struct.unpack("f", struct.pack("f", value))[0]
    if single == 0:
        return "-0" if math.copysign(1.0, single) < 0 else "0"
    # Shortest digits that read back as the same float32.
    for precision in range(1, 10):
        text = f"{single:.{precision - 1}e}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == single:
            break
    mantissa, _, exponent_text = text.partition("e")
    exponent = int(exponent_text)
    sign = "-" if mantissa.startswith("-") else ""
    digits = mantissa.lstrip("-").replace(".", "").rstrip("0") or "0"
    if exponent < -4 or exponent >= 6:  # Go's %e threshold for the shortest form
        head, tail = digits[0], digits[1:]
        body = f"{head}.{tail}" if tail else head
        return f"{sign}{body}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    point = exponent + 1
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{sign}{digits}{'0' * (point - len(digits))}"
    return f"{sign}{digits[:point]}.{digits[point:]}"
