"""Logging set-up: one line per record on stderr, human-readable by default, JSON on request.

`--log-format text` (default): `2026-11-26T15:54:04.123Z INFO  nvplugin.agent: message key=value`
`--log-format json`: one JSON object per line with time, level, logger, message, any `extra=`
fields and the traceback, for log shippers (Loki, Fluent Bit, Elasticsearch).
`--log-level debug|info|warning|error`. Both flags also read from the environment
(NVPLUGIN_LOG_FORMAT, NVPLUGIN_LOG_LEVEL), so a DaemonSet can set them without changing args.
The formatters are pure (record in, line out) and tested as such.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
DEFAULT_LOG_LEVEL = "info"
DEFAULT_LOG_FORMAT = "text"

# Attributes every LogRecord has; anything else on a record came from `extra=` and is shown.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class LoggingSetupError(ValueError):
    """A log level or format the agent does not know; the message names the source."""


def parse_log_level(where: str, raw: object) -> str:
    text = str(raw).strip().lower()
    if text == "warn":
        text = "warning"
    if text not in LOG_LEVELS:
        raise LoggingSetupError(f"{where}: expected one of {', '.join(LOG_LEVELS)}; got {raw!r}")
    return text


def parse_log_format(where: str, raw: object) -> str:
    text = str(raw).strip().lower()
    if text not in LOG_FORMATS:
        raise LoggingSetupError(f"{where}: expected one of {', '.join(LOG_FORMATS)}; got {raw!r}")
    return text


def _utc_timestamp(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller attached with `extra={...}`, in the order they were set."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """`<UTC time> <LEVEL> <logger>: <message> key=value ...`, traceback on the lines after."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        extras = " ".join(f"{k}={_text_value(v)}" for k, v in record_extras(record).items())
        line = f"{_utc_timestamp(record.created)} {record.levelname:<7} {record.name}: {message}"
        if extras:
            line = f"{line} {extras}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc_timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record_extras(record).items():
            entry.setdefault(key, value)  # an extra never hides a standard field
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _text_value(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() or c in '"=' for c in text)) else text


def make_formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def setup_logging(
    level: str = DEFAULT_LOG_LEVEL, log_format: str = DEFAULT_LOG_FORMAT, stream: IO[str] | None = None
) -> None:
    """Replace the root logger's handlers with one stderr handler in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(make_formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # Libraries' chatter (HTTP/2 frames, the kube client) stays out of an info-level log.
    for noisy in ("hpack", "h2", "grpclib.protocol", "aiohttp.access", "kubernetes_asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def add_logging_flags(parser: argparse.ArgumentParser, env: Mapping[str, str] | None = None) -> None:
    """--log-level and --log-format, defaulting to NVPLUGIN_LOG_LEVEL / NVPLUGIN_LOG_FORMAT.

    argparse runs string defaults through `type` too, so a bad value from either place is a
    usage error (exit 2) that names both the flag and the variable."""
    environ = os.environ if env is None else env

    def as_type(parse: Any, where: str) -> Any:
        def convert(raw: str) -> str:
            try:
                return str(parse(where, raw))
            except LoggingSetupError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        return convert

    parser.add_argument(
        "--log-level",
        type=as_type(parse_log_level, "--log-level or NVPLUGIN_LOG_LEVEL"),
        default=environ.get("NVPLUGIN_LOG_LEVEL") or DEFAULT_LOG_LEVEL,
        metavar="LEVEL",
        help=f"{', '.join(LOG_LEVELS)} [env NVPLUGIN_LOG_LEVEL] (default {DEFAULT_LOG_LEVEL})",
    )
    parser.add_argument(
        "--log-format",
        type=as_type(parse_log_format, "--log-format or NVPLUGIN_LOG_FORMAT"),
        default=environ.get("NVPLUGIN_LOG_FORMAT") or DEFAULT_LOG_FORMAT,
        metavar="FORMAT",
        help="text (human-readable) or json (one object per line) [env NVPLUGIN_LOG_FORMAT] "
        f"(default {DEFAULT_LOG_FORMAT})",
    )
