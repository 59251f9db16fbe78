"""Go's value syntax as NVIDIA's binaries read it: tables taken from Go's own strconv and time
tests (strconv/atob_test.go, time/time_test.go parseDurationTests) and Go's formatting."""

from __future__ import annotations

import math

import pytest

from nvplugin.core.gosyntax import (
    INFINITE_NS,
    GoSyntaxError,
    format_duration_ns,
    format_float32,
    parse_bool,
    parse_duration_ns,
    parse_int,
)

# strconv.ParseBool: exactly these twelve.
GO_BOOLS = {
    "1": True,
    "t": True,
    "T": True,
    "TRUE": True,
    "true": True,
    "True": True,
    "0": False,
    "f": False,
    "F": False,
    "FALSE": False,
    "false": False,
    "False": False,
}


@pytest.mark.parametrize(("text", "value"), GO_BOOLS.items())
def test_parse_bool_accepts_go_spellings(text: str, value: bool) -> None:
    assert parse_bool(text) is value


@pytest.mark.parametrize(
    "text",
    ["", "yes", "no", "on", "off", "y", "n", "TrUe", "tRUE", "fAlse", " true", "true ", "2", "-1", "10"],
)
def test_parse_bool_refuses_everything_else(text: str) -> None:
    with pytest.raises(GoSyntaxError) as caught:
        parse_bool(text)
    message = caught.value.message(text)
    assert message.startswith(f"expected true or false, got {text!r}")
    assert "1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False" in message


SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("5s", 5 * SECOND),
        ("30s", 30 * SECOND),
        ("1478s", 1478 * SECOND),
        ("-5s", -5 * SECOND),
        ("+5s", 5 * SECOND),
        ("-0", 0),
        ("+0", 0),
        ("5.0s", 5 * SECOND),
        ("5.6s", 5 * SECOND + 600_000_000),
        ("5.s", 5 * SECOND),
        (".5s", 500_000_000),
        ("1.004s", SECOND + 4_000_000),
        ("100.00100s", 100 * SECOND + 1_000_000),
        ("10ns", 10),
        ("11us", 11_000),
        ("12µs", 12_000),  # U+00B5 micro sign
        ("12μs", 12_000),  # U+03BC Greek mu
        ("13ms", 13_000_000),
        ("15m", 15 * MINUTE),
        ("16h", 16 * HOUR),
        ("3h30m", 3 * HOUR + 30 * MINUTE),
        ("10.5s4m", 4 * MINUTE + 10 * SECOND + 500_000_000),
        ("-2m3.4s", -(2 * MINUTE + 3 * SECOND + 400_000_000)),
        ("1h2m3s4ms5us6ns", HOUR + 2 * MINUTE + 3 * SECOND + 4_000_000 + 5_000 + 6),
        ("39h9m14.425s", 39 * HOUR + 9 * MINUTE + 14 * SECOND + 425_000_000),
        ("52763797000ns", 52_763_797_000),
        ("0.3333333333333333333h", 20 * MINUTE),  # Go's float scaling, not exact arithmetic
        ("9007199254740993ns", (1 << 53) + 1),
        ("9223372036854775807ns", INFINITE_NS),
        ("9223372036854775.807us", INFINITE_NS),
        ("-9223372036854775808ns", -(1 << 63)),
        ("0.100000000000000000000h", 6 * MINUTE),
        ("0.830103483285477580700h", 49 * MINUTE + 48 * SECOND + 372_539_827),
        ("infinite", INFINITE_NS),
    ],
)
def test_parse_duration_matches_go(text: str, ns: int) -> None:
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("", ""),
        ("3", "missing unit"),
        ("-", ""),
        ("s", ""),
        (".", "missing unit"),
        ("-.", "missing unit"),
        (".s", ""),
        ("+.s", ""),
        ("1d", "unknown unit 'd'"),
        ("1e3s", "unknown unit 'e'"),
        ("Infinite", ""),
        ("9223372036854775808ns", "out of range"),
        ("9223372036854775.808us", "out of range"),
        ("9223372036854ms775us808ns", "out of range"),
        ("-9223372036854775809ns", "out of range"),
        ("1" * 200 + "s", ""),
    ],
)
def test_parse_duration_refuses_what_go_refuses(text: str, detail: str) -> None:
    with pytest.raises(GoSyntaxError) as caught:
        parse_duration_ns(text)
    assert caught.value.expected == "expected a duration such as 60s, 1m30s, 500ms or infinite"
    assert detail in caught.value.detail


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (1, "1ns"),
        (1_100, "1.1µs"),
        (2_200_000, "2.2ms"),
        (3_300_000_000, "3.3s"),
        (60 * SECOND, "1m0s"),
        (4 * MINUTE + 5 * SECOND, "4m5s"),
        (5 * HOUR + 6 * MINUTE + 7_001_000_000, "5h6m7.001s"),
        (-(1 << 63), "-2562047h47m16.854775808s"),
        (INFINITE_NS, "infinite"),
    ],
)
def test_format_duration_is_go_string(ns: int, text: str) -> None:
    assert format_duration_ns(ns) == text


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("12", 12),
        ("-7", -7),
        ("+7", 7),
        ("010", 8),
        ("0x1f", 31),
        ("0X1F", 31),
        ("0o17", 15),
        ("0b101", 5),
        ("1_000", 1000),
        ("9223372036854775807", (1 << 63) - 1),
        ("-9223372036854775808", -(1 << 63)),
    ],
)
def test_parse_int_is_base_zero_parseint(text: str, value: int) -> None:
    assert parse_int(text) == value


@pytest.mark.parametrize(
    "text", ["", "08", "1__0", "_1", "1_", "0x", "1.0", "one", "9223372036854775808", "1" * 200]
)
def test_parse_int_refuses(text: str) -> None:
    with pytest.raises(GoSyntaxError):
        parse_int(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (-0.0, "-0"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (2.0, "2"),
        (100000.0, "100000"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (16777217.0, "1.6777216e+07"),  # rounded to float32 first
        (1e39, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_format_float32_is_go_formatfloat_g_32(value: float, text: str) -> None:
    assert format_float32(value) == text
