"""Log formatting (pure) and the logging flags."""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys

import pytest

from nvplugin.logs import (
    JsonFormatter,
    LoggingSetupError,
    TextFormatter,
    add_logging_flags,
    parse_log_format,
    parse_log_level,
    setup_logging,
)

# 2026-11-26T15:54:04.123Z
CREATED = 1795708444.1234


def make_record(
    message: str = "registered %s",
    args: tuple[object, ...] = ("nvidia.com/gpu",),
    level: int = logging.INFO,
    extra: dict[str, object] | None = None,
    exc_info: object = None,
) -> logging.LogRecord:
    record = logging.LogRecord("nvplugin.agent", level, __file__, 1, message, args, exc_info)  # type: ignore[arg-type]
    record.created = CREATED
    for key, value in (extra or {}).items():
        setattr(record, key, value)
    return record


def test_text_line() -> None:
    line = TextFormatter().format(make_record())
    assert line == "2026-11-26T15:54:04.123Z INFO    nvplugin.agent: registered nvidia.com/gpu"


def test_text_line_with_extras_quotes_what_needs_it() -> None:
    line = TextFormatter().format(
        make_record(
            level=logging.WARNING, extra={"device": "GPU-1", "reason": "XID 79 (fell off the bus)", "n": 2}
        )
    )
    assert line.endswith('registered nvidia.com/gpu device=GPU-1 reason="XID 79 (fell off the bus)" n=2')
    assert " WARNING nvplugin.agent: " in line


def test_text_line_with_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = make_record(level=logging.ERROR, exc_info=sys.exc_info())
    lines = TextFormatter().format(record).splitlines()
    assert lines[0].endswith("ERROR   nvplugin.agent: registered nvidia.com/gpu")
    assert lines[-1] == "RuntimeError: boom"


def test_json_line() -> None:
    entry = json.loads(JsonFormatter().format(make_record(extra={"device": "GPU-1", "xid": 79})))
    assert entry == {
        "time": "2026-11-26T15:54:04.123Z",
        "level": "info",
        "logger": "nvplugin.agent",
        "message": "registered nvidia.com/gpu",
        "device": "GPU-1",
        "xid": 79,
    }


def test_json_line_keeps_standard_fields_and_serialises_anything() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd-object"

    try:
        raise ValueError('bad "quote"\nnewline')
    except ValueError:
        record = make_record(extra={"message_id": 1, "obj": Odd()}, exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line  # one record, one line, whatever the message holds
    entry = json.loads(line)
    assert entry["message"] == "registered nvidia.com/gpu"
    assert entry["obj"] == "odd-object"
    assert entry["exception"].endswith('ValueError: bad "quote"\nnewline')


@pytest.mark.parametrize(
    ("raw", "level"), [("debug", "debug"), ("INFO", "info"), ("warn", "warning"), (" error ", "error")]
)
def test_parse_log_level(raw: str, level: str) -> None:
    assert parse_log_level("--log-level", raw) == level


def test_bad_level_and_format_name_the_source() -> None:
    with pytest.raises(
        LoggingSetupError, match=r"^--log-level: expected one of debug, info, warning, error; got 'loud'"
    ):
        parse_log_level("--log-level", "loud")
    with pytest.raises(LoggingSetupError, match=r"^--log-format: expected one of text, json; got 'xml'"):
        parse_log_format("--log-format", "xml")


def parse(argv: list[str], env: dict[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nvplugin run", exit_on_error=False)
    add_logging_flags(parser, env)
    return parser.parse_args(argv)


def test_flags_default_from_env_and_flags_win() -> None:
    assert vars(parse([], {})) == {"log_level": "info", "log_format": "text"}
    assert vars(parse([], {"NVPLUGIN_LOG_LEVEL": "DEBUG", "NVPLUGIN_LOG_FORMAT": "json"})) == {
        "log_level": "debug",
        "log_format": "json",
    }
    assert vars(parse(["--log-format", "text", "--log-level", "error"], {"NVPLUGIN_LOG_FORMAT": "json"})) == {
        "log_level": "error",
        "log_format": "text",
    }


def test_bad_flag_or_env_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="nvplugin run")
    add_logging_flags(parser, {"NVPLUGIN_LOG_FORMAT": "yaml"})
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([])
    assert exit_info.value.code == 2
    assert (
        "--log-format or NVPLUGIN_LOG_FORMAT: expected one of text, json; got 'yaml'"
        in capsys.readouterr().err
    )


def test_setup_logging_writes_the_chosen_format_at_the_chosen_level() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    try:
        setup_logging("warning", "json", stream)
        logging.getLogger("nvplugin.test").info("hidden")
        logging.getLogger("nvplugin.test").warning("shown %d", 1, extra={"resource": "nvidia.com/gpu"})
        lines = stream.getvalue().splitlines()
        assert len(lines) == 1
        assert json.loads(lines[0])["message"] == "shown 1"
        assert json.loads(lines[0])["resource"] == "nvidia.com/gpu"
        assert len(root.handlers) == 1  # replaced, not stacked
        setup_logging("debug", "text", stream)
        assert len(root.handlers) == 1
        assert logging.getLogger("hpack").level == logging.WARNING  # library chatter stays out
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
