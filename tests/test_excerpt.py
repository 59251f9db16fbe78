"""Excerpts of untrusted text: bounded whatever the input's length or characters."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nvplugin.core.excerpt import EXCERPT_CHARS, clip, counted, excerpt, quote_some


def test_short_text_is_quoted_whole() -> None:
    assert excerpt("GPU-0") == "'GPU-0'"
    assert excerpt("it's") == '"it\'s"'


def test_long_text_is_cut_with_its_length() -> None:
    assert excerpt("GPU-" + "a" * 262_144) == f"'GPU-{'a' * 60}…' (262148 characters)"


def test_escapes_count_toward_the_cut() -> None:
    assert excerpt("\x00" * 64) == "'" + "\\x00" * 16 + "…' (64 characters)"


@given(st.text(max_size=300))
def test_any_text_gives_a_bounded_excerpt(text: str) -> None:
    assert len(excerpt(text)) <= EXCERPT_CHARS + 30


def test_lists_quote_a_few_and_count_the_rest() -> None:
    assert quote_some(["a", "b"]) == "'a', 'b'"
    assert quote_some([str(i) for i in range(10)]) == "'0', '1', '2' and 7 more"
    assert counted(1, "unknown device ID") == "1 unknown device ID"
    assert counted(2, "unknown device ID") == "2 unknown device IDs"


def test_clip_keeps_text_unquoted() -> None:
    assert clip("no " * 3) == "no no no "
    assert clip("x" * 300, 10) == "xxxxxxxxxx… (300 characters)"
