"""Config text -> data: go-yaml v2's reading of scalars and keys, and the bounds that make an alias
bomb, deep nesting or a huge file a clear error instead of a hang. Both loaders: libyaml's parser
(used where PyYAML has it) and the pure-Python fallback."""

from __future__ import annotations

import math
from typing import Any

import pytest

from nvplugin.configload.yamlreader import LOADERS, MAX_DEPTH, MAX_NODES, decode_config_text
from nvplugin.core.config import MAX_CONFIG_BYTES, ConfigError


@pytest.fixture(params=LOADERS, ids=lambda loader: loader.__name__)
def loader(request: pytest.FixtureRequest) -> Any:
    return request.param


def decode(text: str | bytes, loader: Any) -> object:
    return decode_config_text("c.yaml", text, loader)


def refused(text: str | bytes, loader: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        decode(text, loader)
    return str(caught.value)


@pytest.mark.parametrize(
    ("scalar", "value"),
    [
        ("y", True),
        ("Yes", True),
        ("ON", True),
        ("n", False),
        ("off", False),
        ("~", None),
        ("", None),
        ("12", 12),
        ("0755", 493),  # Go: a leading 0 is octal
        ("08", 8.0),  # not octal: go-yaml falls back to a float
        ("0x1f", 31),
        ("1_000", 1000),
        ("9223372036854775808", 9223372036854775808),  # uint64 still
        ("18446744073709551616", 1.8446744073709552e19),  # past uint64: a float
        ("1.5", 1.5),
        ("1e3", 1000.0),
        (".inf", math.inf),
        ("1e400", "1e400"),  # overflows float64: go-yaml keeps the text
        ("1:30", "1:30"),  # PyYAML's YAML 1.1 would say 90 (sexagesimal)
        ("2024-01-01", "2024-01-01"),  # not a date
        ("=", "="),
        ("'true'", "true"),
        ('"12"', "12"),
    ],
)
def test_scalars_read_as_go_yaml_reads_them(scalar: str, value: object, loader: Any) -> None:
    assert decode(f"k: {scalar}", loader) == {"k": value}


def test_keys_become_text_as_in_sigs_yaml(loader: Any) -> None:
    assert decode("1: a\ntrue: b\n1.5: c\nname: d", loader) == {
        "1": "a",
        "true": "b",
        "1.5": "c",
        "name": "d",
    }
    # A plain y or n is a boolean to go-yaml, keys included.
    assert decode("y: 1\nn: 2", loader) == {"true": 1, "false": 2}


def test_json_is_yaml(loader: Any) -> None:
    doc = '{"version": "v1", "flags": {"migStrategy": "mixed", "plugin": {"deviceListStrategy": ["envvar"]}}}'
    assert decode(doc, loader) == {
        "version": "v1",
        "flags": {"migStrategy": "mixed", "plugin": {"deviceListStrategy": ["envvar"]}},
    }


def test_empty_document_is_none(loader: Any) -> None:
    assert decode("", loader) is None
    assert decode("# only a comment\n", loader) is None


def test_anchors_merges_and_redefinition(loader: Any) -> None:
    doc = "base: &b {migStrategy: mixed}\nflags:\n  <<: *b\n  failOnInitError: false\nu: &b 1\nv: *b\n"
    assert decode(doc, loader) == {
        "base": {"migStrategy": "mixed"},
        "flags": {"migStrategy": "mixed", "failOnInitError": False},
        "u": 1,
        "v": 1,  # go-yaml lets an anchor be defined again; the latest wins
    }


def test_unknown_tags_keep_the_value(loader: Any) -> None:
    assert decode("a: !custom text\nb: !!python/tuple [1, 2]\nc: !!timestamp 2024-01-01", loader) == {
        "a": "text",
        "b": [1, 2],
        "c": "2024-01-01",
    }


def billion_laughs(levels: int = 9) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for i in range(levels):
        name = chr(ord("b") + i)
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
        previous = name
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_while_composing(loader: Any) -> None:
    message = refused(billion_laughs(), loader)
    assert message.startswith(
        f"c.yaml: refused: more than {MAX_NODES} values (aliases counted as the values they repeat)"
    )
    assert "(line 5," in message  # stopped on the level that crosses the bound, not after expanding


def test_small_aliasing_is_fine(loader: Any) -> None:
    data = decode(billion_laughs(levels=2), loader)
    assert isinstance(data, dict) and len(data["c"]) == 9


def test_deep_nesting_is_refused(loader: Any) -> None:
    assert refused("[" * 1000 + "]" * 1000, loader) == (
        f"c.yaml: refused: nested more than {MAX_DEPTH} levels deep (line 1, column {MAX_DEPTH + 1})"
    )
    text = "a:\n" + "".join(" " * i + "- \n" for i in range(1, 200))
    assert "nested more than 64 levels deep" in refused(text, loader)


def test_depth_counts_what_an_alias_brings(loader: Any) -> None:
    nested = "[" * 40 + "]" * 40
    assert "nested more than 64 levels deep" in refused(
        f"a: &d {nested}\nb: {'[' * 30}*d{']' * 30}\n", loader
    )


def test_nesting_at_the_bound_is_accepted(loader: Any) -> None:
    data = decode("[" * MAX_DEPTH + "]" * MAX_DEPTH, loader)
    depth = 0
    while isinstance(data, list):
        depth += 1
        data = data[0] if data else None
    assert depth == MAX_DEPTH


def test_recursive_alias_is_refused(loader: Any) -> None:
    assert refused("a: &x [1, *x]", loader) == (
        "c.yaml: refused: alias *x refers to a node that contains it (line 1, column 11)"
    )


def test_size_is_bounded(loader: Any) -> None:
    big = "a: " + "x" * MAX_CONFIG_BYTES
    assert (
        refused(big, loader)
        == f"c.yaml: the config is {len(big)} bytes; expected at most {MAX_CONFIG_BYTES} (1 MiB)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\n---\nb: 2\n", "but found another document"),
        ("a: *nope", "found undefined alias 'nope'"),
        ("~: 1", "refused: unsupported mapping key None"),
        ("a: [1, 2", "c.yaml: not valid YAML or JSON: "),
        ("a: \x01", "c.yaml: not valid YAML or JSON: unacceptable character #x0001"),
        (b"\xff\xfe\x00", "c.yaml: not valid YAML or JSON"),
        (b"a: \xc3\x28", "c.yaml: not valid YAML or JSON"),
        ("? [1, 2]\n: x", "unsupported mapping key"),
    ],
)
def test_bad_documents_are_config_errors(text: str | bytes, message: str, loader: Any) -> None:
    assert message in refused(text, loader)


def test_nul_is_only_possible_as_an_escape(loader: Any) -> None:
    # A raw NUL is refused by the reader; an escaped one arrives as text for the field checks.
    assert "not valid YAML or JSON" in refused("a: x\0y", loader)
    assert decode('a: "x\\0y"', loader) == {"a": "x\0y"}
