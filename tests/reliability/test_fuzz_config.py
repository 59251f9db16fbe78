"""Fuzzing the config input: whatever the bytes, flags or environment, loading gives a Config or a
ConfigError - never another exception, never a hang, never a memory blow-up.

Inputs: raw bytes; text over YAML's punctuation; well-formed documents built from NVIDIA's key
names with hostile values (huge numbers, NaN, NUL, deep lists); alias bombs and deep nesting of
random shape; random flag and environment values for every option. Each example runs under
tracemalloc with a memory bound, and under a generous per-example deadline that only a hang
would miss. Fast by default (NVPLUGIN_FUZZ_EXAMPLES, default 200 per target); the `reliability`
tox environment may raise it.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvplugin.configload.yamlreader import LOADERS, decode_config_text
from nvplugin.core.config import OPTIONS, Config, ConfigError, resolve_settings
from nvplugin.core.configfile import parse_config_file

EXAMPLES = int(os.environ.get("NVPLUGIN_FUZZ_EXAMPLES", "200"))
# A config is at most 1 MiB and 10,000 values: loading one never needs more than this.
MEMORY_BOUND = 64 << 20
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@contextmanager
def bounded_memory() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
        assert peak < MEMORY_BOUND, f"loading a config peaked at {peak} bytes"
    finally:
        tracemalloc.stop()


def load_text(data: bytes | str, loader: type | None = None) -> Config | None:
    """The property: a Config, or ConfigError (None); anything else escapes and fails the test."""
    with bounded_memory():
        try:
            document = decode_config_text("fuzz.yaml", data, loader or LOADERS[0])
            file = parse_config_file(document, "fuzz.yaml", strict=False)
            return resolve_settings({}, {"MPS_ROOT": "/run/nvidia/mps"}, file.values, file.sources).config
        except ConfigError as exc:
            assert str(exc), "a ConfigError must say what is wrong"
            return None


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    load_text(data)


YAML_ALPHABET = st.sampled_from(
    list("{}[]:,-?&*!|>'\"#%@` \t\n\r\\0123456789.eE+_xabcnNyYtTfF~<=\x00\x85\u2028\ufeff")
)


@FUZZ
@given(st.text(YAML_ALPHABET, max_size=2048), st.sampled_from(LOADERS))
def test_yaml_punctuation(text: str, loader: type) -> None:
    load_text(text, loader)


KEYS = sorted(
    {key for option in OPTIONS for path in option.file_keys for key in path.split(".")}
    | {"version", "sharing", "timeSlicing", "mps", "resources", "name", "replicas", "rename", "devices"}
    | {"renameByDefault", "failRequestsGreaterThanOne", "health", "ignoredXids", "checkedXids", "xidActions"}
    | {"recovery", "quietPeriod", "probeInterval", "disabled", "channelIDs", "required", "gpus", "pattern"}
)
HOSTILE_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([10**100, -1, 0, 1, 2, 2**63, 2**64, 4096, 4097]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(
        ["v1", "infinite", "1e400", "60s", "0s", "-5s", "gpu", "nvidia.com/gpu", "all", "mixed", "\0"]
    ),
    st.sampled_from(["envvar", "cdi-cri", "tegra", "9" * 5000, "/run/k\0.sock", "x" * 5000, "GPU-x", "0:1"]),
)
DOCUMENTS = st.recursive(
    HOSTILE_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=12)), children, max_size=6),
    ),
    max_leaves=30,
)


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), DOCUMENTS, max_size=8))
def test_documents_with_nvidia_keys_and_hostile_values(document: dict[str, object]) -> None:
    try:
        text = yaml.safe_dump(document)
    except (yaml.YAMLError, ValueError):  # PyYAML cannot write some (e.g. 5000-digit integers)
        return
    load_text(text)
    load_text(text.replace("'", "").replace('"', ""))  # the same values as plain scalars


@st.composite
def alias_bombs(draw: st.DrawFn) -> str:
    fan_out = draw(st.integers(min_value=1, max_value=12))
    levels = draw(st.integers(min_value=1, max_value=14))
    lines = [f"a0: &a0 [{', '.join(['x'] * fan_out)}]"]
    for level in range(1, levels + 1):
        refs = ", ".join([f"*a{level - 1}"] * fan_out)
        lines.append(f"a{level}: &a{level} [{refs}]")
    where = draw(st.sampled_from(["top", "flags", "health", "sharing"]))
    if where != "top":
        lines.append(f"{where}: {{x: *a{levels}}}")
    return "\n".join(lines) + "\n"


@FUZZ
@given(alias_bombs(), st.sampled_from(LOADERS))
def test_alias_bombs(text: str, loader: type) -> None:
    load_text(text, loader)


@st.composite
def deep_nesting(draw: st.DrawFn) -> str:
    depth = draw(st.integers(min_value=1, max_value=3000))
    opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}"), ("- ", "")]))
    if opener == "- ":
        return "flags:\n" + "".join(" " * (i + 2) + "- \n" for i in range(min(depth, 150)))
    head = draw(st.sampled_from(["", "flags: ", "sharing:\n  timeSlicing: ", "health: "]))
    return head + opener * depth + "x" + closer * depth + "\n"


@FUZZ
@given(deep_nesting(), st.sampled_from(LOADERS))
def test_deep_nesting(text: str, loader: type) -> None:
    load_text(text, loader)


FLAG_TEXT = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        ["", " ", "true", "T", "yes", "0x10", "1e400", "infinite", "9" * 5000, "\0", "a,b,,c", "²"]
    ),
    st.lists(st.text(max_size=10), max_size=4),
)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from([o.field for o in OPTIONS if o.field != "config_file"]), FLAG_TEXT, max_size=6
    ),
    st.dictionaries(
        st.sampled_from([e for o in OPTIONS for e in o.envs if e not in ("CONFIG_FILE", "GFD_CONFIG_FILE")]),
        st.text(max_size=60),
        max_size=6,
    ),
)
def test_random_flags_and_environment(flags: dict[str, object], env: dict[str, str]) -> None:
    with bounded_memory():
        try:
            assert isinstance(resolve_settings(flags, env).config, Config)
        except ConfigError as exc:
            assert str(exc)
