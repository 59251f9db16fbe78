"""Config text -> plain data, bounded, read the way NVIDIA's Go reader reads it.

NVIDIA reads config files (YAML or JSON alike) with sigs.k8s.io/yaml over go-yaml v2:

- Meaning. go-yaml v2 resolves plain scalars differently from PyYAML's YAML 1.1 defaults: `y`
  and `n` are booleans, `1:30` is a string (PyYAML: sexagesimal 90), `2024-01-01` is not turned
  into a date, numbers too large for 64 bits become floats or stay strings, and an anchor may be
  defined again. The resolver and constructors below follow go-yaml v2, and mapping keys become
  strings as sigs.k8s.io/yaml makes them (`1` -> "1", `true` -> "true").
- Bounds. The text is limited in size, and while it is composed (before any value is built)
  the nesting depth and the number of nodes - counting every alias as the whole subtree it
  stands for - are limited, so an alias bomb or a deeply nested document is refused in
  milliseconds instead of exhausting memory later. Recursive aliases are refused (go-yaml too).

Imported only when a config file is read: `nvplugin run` without one never loads PyYAML.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import BaseResolver

from nvplugin.core.config import MAX_CONFIG_BYTES, ConfigError
from nvplugin.core.gosyntax import INT64_MIN, base0_value, format_float32

MAX_DEPTH = 64
# Nodes after alias expansion. A full NVIDIA config has about a hundred; a long health section
# a few hundred.
MAX_NODES = 10_000
_UINT64_MAX = (1 << 64) - 1


class _Refused(Exception):
    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.mark = mark


class _GoResolver(BaseResolver):
    """go-yaml v2's implicit types for plain scalars."""


_BOOL_TEXT = "y|Y|yes|Yes|YES|true|True|TRUE|on|On|ON|n|N|no|No|NO|false|False|FALSE|off|Off|OFF"
_TRUE_TEXT = frozenset(["y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"])
_INT_PATTERN = re.compile(
    r"^[-+]?(?:0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9][0-9_]*)$",
)
_FLOAT_PATTERN = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_FLOAT_SPECIAL = {
    ".nan": math.nan,
    ".NaN": math.nan,
    ".NAN": math.nan,
    **{
        f"{s}{t}": (-math.inf if s == "-" else math.inf)
        for s in ("", "+", "-")
        for t in (".inf", ".Inf", ".INF")
    },
}

_GoResolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(rf"^(?:{_BOOL_TEXT})$"), list("yYnNtTfFoO")
)
_GoResolver.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_GoResolver.add_implicit_resolver("tag:yaml.org,2002:int", _INT_PATTERN, list("-+0123456789"))
_GoResolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
_GoResolver.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^<<$"), ["<"])


def _number(text: str) -> object:
    """go-yaml v2's reading of a plain number: int64, else uint64, else a finite float, else the
    text itself."""
    if text in _FLOAT_SPECIAL:
        return _FLOAT_SPECIAL[text]
    plain = text.replace("_", "")
    if _INT_PATTERN.match(plain) and len(plain) <= 70:  # longer cannot fit 64 bits
        try:
            value = base0_value(plain)
        except ValueError:  # "08": not octal; go-yaml reads it as the float 8
            value = None
        if value is not None and INT64_MIN <= value <= _UINT64_MAX:
            return value
    if _FLOAT_PATTERN.match(text if text.startswith(".") else plain):  # go-yaml: no _ after a leading .
        number = float(plain)
        if math.isfinite(number):
            return number
    return text


class _GoConstructor(SafeConstructor):
    def construct_go_bool(self, node: Node) -> bool:
        return str(self.construct_scalar(node)) in _TRUE_TEXT  # type: ignore[arg-type]

    def construct_go_number(self, node: Node) -> object:
        return _number(str(self.construct_scalar(node)))  # type: ignore[arg-type]

    def construct_any(self, node: Node) -> object:
        """A tag no constructor knows (`!foo`): go-yaml keeps the value as its kind says."""
        if isinstance(node, ScalarNode):
            return self.construct_scalar(node)
        if isinstance(node, SequenceNode):
            return self.construct_sequence(node)
        assert isinstance(node, MappingNode)
        return self.construct_mapping(node)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        """Keys become text before they meet in the dict: `1` and `true` stay two keys, as in Go."""
        self.flatten_mapping(node)  # merge keys (<<), as go-yaml does
        mapping: dict[Hashable, Any] = {}
        for key_node, value_node in node.value:
            key = _key_text(self.construct_object(key_node, deep=deep), key_node)
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def _key_text(key: object, node: Node) -> str:
    """sigs.k8s.io/yaml's map keys: strings, ints and bools as text, floats as Go formats them."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return str(key)
    if isinstance(key, float):
        if math.isnan(key):
            return ".nan"
        if math.isinf(key):
            return ".inf" if key > 0 else "-.inf"
        return format_float32(key)
    raise _Refused(f"unsupported mapping key {key!r}: expected a string or a number", node.start_mark)


_GoConstructor.yaml_constructors = {
    **SafeConstructor.yaml_constructors,
    "tag:yaml.org,2002:bool": _GoConstructor.construct_go_bool,
    "tag:yaml.org,2002:int": _GoConstructor.construct_go_number,
    "tag:yaml.org,2002:float": _GoConstructor.construct_go_number,
    # go-yaml leaves dates as text; an unknown tag keeps the value its node kind gives.
    "tag:yaml.org,2002:timestamp": _GoConstructor.construct_any,
    None: _GoConstructor.construct_any,
}


class _BoundedComposer(Composer):
    """PyYAML's composer, counting depth and nodes (aliases expanded) as it goes."""

    peek_event: Callable[[], Any]  # from the parser it is mixed with

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._deepest = 0
        self._nodes = 0
        # Per anchor: nodes in its subtree (aliases expanded) and its height.
        self._anchor_size: dict[str, tuple[int, int]] = {}
        self._open_anchors: set[str] = set()

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            anchor = event.anchor
            if anchor in self._open_anchors:
                raise _Refused(f"alias *{anchor} refers to a node that contains it", event.start_mark)
            nodes, height = self._anchor_size.get(str(anchor), (1, 1))
            self._count(nodes, event.start_mark)
            self._reach(self._depth + height, event.start_mark)
            return super().compose_node(parent, index)
        anchor = event.anchor
        if anchor is not None:
            self.anchors.pop(anchor, None)  # go-yaml lets an anchor be defined again
            self._open_anchors.add(anchor)
        self._depth += 1
        outer_deepest, nodes_before = self._deepest, self._nodes
        self._deepest = 0
        self._reach(self._depth, event.start_mark)
        self._count(1, event.start_mark)
        node = super().compose_node(parent, index)
        if anchor is not None:
            self._open_anchors.discard(anchor)
            self._anchor_size[anchor] = (self._nodes - nodes_before, self._deepest - self._depth + 1)
        self._deepest = max(outer_deepest, self._deepest)
        self._depth -= 1
        return node

    def _reach(self, depth: int, mark: Any) -> None:
        if depth > MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep", mark)
        self._deepest = max(self._deepest, depth)

    def _count(self, nodes: int, mark: Any) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES} values (aliases counted as the values they repeat)", mark)


class _PythonLoader(
    _BoundedComposer,
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    _GoConstructor,
    _GoResolver,
):
    """Everything in Python: used where PyYAML was built without libyaml."""

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # PyYAML's scanner tracks a possible simple key per open flow collection and scans
        # them all on every token: refused here, deep flow nesting would take quadratic time.
        if self.flow_level >= MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep", self.get_mark())
        super().fetch_flow_collection_start(token_class)

    def __init__(self, stream: bytes | str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _BoundedComposer.__init__(self)
        _GoConstructor.__init__(self)
        _GoResolver.__init__(self)


LOADERS: tuple[type[Any], ...] = (_PythonLoader,)
if getattr(yaml, "__with_libyaml__", False):
    from yaml._yaml import CParser

    class _LibyamlLoader(_BoundedComposer, CParser, _GoConstructor, _GoResolver):
        """libyaml's scanner and parser (what go-yaml v2 was ported from), our composer."""

        def __init__(self, stream: bytes | str) -> None:
            CParser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            _GoConstructor.__init__(self)
            _GoResolver.__init__(self)

    LOADERS = (_LibyamlLoader, _PythonLoader)


def decode_config_text(name: str, data: bytes | str, loader_class: type[Any] = LOADERS[0]) -> object:
    """The document in `data` (YAML or JSON, UTF-8 or UTF-16 with a BOM), or ConfigError naming
    `name` and, where known, the line. None for an empty document."""
    size = len(data.encode() if isinstance(data, str) else data)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{name}: the config is {size} bytes; expected at most {MAX_CONFIG_BYTES} (1 MiB)")
    loader = None
    try:
        loader = loader_class(data)
        return loader.get_single_data()
    except _Refused as exc:
        raise ConfigError(f"{name}: refused: {exc}{_where(exc.mark)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not valid YAML or JSON: {_yaml_problem(exc)}") from None
    except (ValueError, TypeError, AttributeError, LookupError, OverflowError, RecursionError) as exc:
        # PyYAML's own constructors fail this way on some malformed explicit tags
        # (`!!timestamp x`); the document is bad, not the agent.
        raise ConfigError(f"{name}: not valid YAML or JSON: {type(exc).__name__}: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _where(mark: Any) -> str:
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):  # a byte or character YAML does not allow
        code = exc.character
        what = f" #x{code:04x}" if isinstance(code, int) and code >= 0 else ""
        return f"unacceptable character{what} ({exc.reason}) at position {exc.position}"
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem}{_where(getattr(exc, 'problem_mark', None))}"
