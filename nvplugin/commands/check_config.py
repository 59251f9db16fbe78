"""`nvplugin check-config FILE`: validate a config file and print the effective config.

FILE is an NVIDIA v1 config (YAML or JSON), or a Kubernetes ConfigMap manifest holding several
(each `data` entry is checked as a config, as NVIDIA's chart mounts them). The effective config
is what `nvplugin run --config-file FILE` would use in this environment, written in NVIDIA's v1
format: flags are not involved, environment variables still override the file (NVIDIA's
precedence). Keys NVIDIA would ignore are warnings; --strict refuses them.

Exit status: 0 when every config is valid (warnings allowed), 2 when any is not.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

import yaml

from nvplugin.configload import CONFIG_FILE_OPTION, LoadedConfig, load_with_file, read_config_bytes
from nvplugin.configload.yamlreader import decode_config_text
from nvplugin.core.config import ConfigError
from nvplugin.core.configfile import effective_document, flag_only_settings, parse_config_file

EXIT_VALID = 0
EXIT_INVALID = 2


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check-config",
        help="validate an NVIDIA-compatible v1 config file (or a ConfigMap of them) and print the effective config",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", metavar="FILE", help="the config file (YAML or JSON) or a ConfigMap manifest")
    parser.add_argument(
        "--ignore-env",
        action="store_true",
        help="show the file's settings over the defaults, without environment overrides",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse keys NVIDIA does not know (default: warn and ignore them)",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    env = {} if args.ignore_env else dict(os.environ)
    for name in CONFIG_FILE_OPTION.envs:  # FILE is the file to check, whatever the environment says
        env.pop(name, None)
    try:
        document = decode_config_text(args.file, read_config_bytes(args.file))
        entries = configmap_entries(document, args.file)
    except ConfigError as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if entries is None:
        entries = {args.file: document}
    valid = True
    for name, config_document in entries.items():
        try:
            loaded = _check(name, config_document, env, args.strict)
        except ConfigError as exc:
            print(f"invalid config: {exc}", file=sys.stderr)
            valid = False
            continue
        for warning in loaded.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        _print_effective(name, loaded)
    return EXIT_VALID if valid else EXIT_INVALID


def _check(name: str, document: object, env: Mapping[str, str], strict: bool) -> LoadedConfig:
    if isinstance(document, str):  # a ConfigMap entry: the config's text
        document = decode_config_text(name, document)
    file = parse_config_file(document, name, strict=strict)
    return load_with_file({}, env, file, name)


def configmap_entries(document: object, name: str) -> dict[str, object] | None:
    """`data` entries of a ConfigMap manifest (or of each ConfigMap in a List), by a name that
    says where they come from; None when the document is not a ConfigMap or a List."""
    if not isinstance(document, dict) or document.get("kind") not in ("ConfigMap", "List"):
        return None
    if "apiVersion" not in document:
        return None
    if document["kind"] == "List":
        items = document.get("items")
        if not isinstance(items, list):
            raise ConfigError(f"{name}: items: expected a list of ConfigMaps")
        entries: dict[str, object] = {}
        for i, item in enumerate(items):
            found = configmap_entries(item, f"{name}: items[{i}]")
            if found is None:
                raise ConfigError(f"{name}: items[{i}]: expected a ConfigMap")
            entries.update(found)
        return entries
    metadata = document.get("metadata")
    label = metadata.get("name") if isinstance(metadata, dict) else None
    prefix = f"{name}: ConfigMap {label}" if isinstance(label, str) else f"{name}: ConfigMap"
    data = document.get("data")
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{prefix}: data: expected one or more config entries, got none")
    entries = {}
    for key, text in data.items():
        if not isinstance(text, str):
            raise ConfigError(f"{prefix}: data.{key}: expected the config's text (a string)")
        entries[f"{prefix}: data.{key}"] = text
    return entries


def _print_effective(name: str, loaded: LoadedConfig) -> None:
    print(f"# {name}: valid; effective config:")
    sys.stdout.write(yaml.safe_dump(effective_document(loaded.config, loaded.health), sort_keys=False))
    extra = flag_only_settings(loaded.config)
    if extra:
        print("# set outside the file (flags or environment only):")
        for flag, value in extra.items():
            print(f"#   {flag}={value}")


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (until the lead wires the subcommand into nvplugin.cli)."""
    parser = argparse.ArgumentParser(prog="nvplugin")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
