"""`nvplugin check-config FILE`: validate a config file and print the effective config.

The effective config is what `nvplugin run --config-file FILE` would use in this environment:
flags are not involved, environment variables still override the file (NVIDIA's precedence).
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from nvplugin.configload import config_as_dict, load
from nvplugin.core.config import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check-config",
        help="validate an NVIDIA-compatible v1 config file and print the effective config",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", metavar="FILE", help="the config file (YAML or JSON)")
    parser.add_argument(
        "--ignore-env",
        action="store_true",
        help="show the file's settings over the defaults, without environment overrides",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    env = {} if args.ignore_env else dict(os.environ)
    env.pop("CONFIG_FILE", None)  # FILE is the file to check, whatever the environment says
    try:
        loaded = load({"config_file": args.file}, env)
    except ConfigError as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
        return 1
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"# {args.file}: valid; effective config:")
    sys.stdout.write(yaml.safe_dump(config_as_dict(loaded.config), sort_keys=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (until the lead wires the subcommand into nvplugin.cli)."""
    parser = argparse.ArgumentParser(prog="nvplugin")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
