"""`nvplugin labels`: print the labels this node would get, without touching any cluster.

Takes the same configuration as `nvplugin run` (flags, environment, --config-file /
CONFIG_FILE) and goes through the agent's own label pipeline (nvplugin.nodelabels), so it
prints exactly what the agent would write. Reads the real NVML (or the fake backend with
--fake-gpus) and prints `key=value` lines; --output-file also writes them there (NFD's
features.d format, written atomically as GFD does). Never imports the Kubernetes client.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from nvplugin.core.config import ConfigError
from nvplugin.core.labels import feature_file, valid_only
from nvplugin.core.resources import plan_resources
from nvplugin.nvml.base import NvmlError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from nvplugin.cli import add_config_flags

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "labels",
        help="print the node labels this node would get (no cluster access)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flags(parser)
    parser.add_argument(
        "--output-file",
        "-o",
        metavar="FILE",
        default=os.environ.get("GFD_OUTPUT_FILE") or None,
        help="also write the labels to FILE as key=value lines (NFD features.d format) [env GFD_OUTPUT_FILE]",
    )
    parser.set_defaults(run=run)
    return parser


def write_atomically(path: str, text: str) -> None:
    """Write through a temporary file and a rename, so NFD never reads half a file."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def compute_labels(
    flags: Mapping[str, object],
    env: Mapping[str, str],
    *,
    timestamp: bool = True,
    warn: TextIO | None = None,
    clock: Callable[[], float] = time.time,
) -> dict[str, str]:
    """The labels for this node under the configuration `flags` and `env` (and the config file
    they name). Raises ConfigError or NvmlError (and LayoutError)."""
    from nvplugin.configload import load
    from nvplugin.nodelabels import read_snapshot, snapshot_labels
    from nvplugin.nvml import open_backend
    from nvplugin.nvml.discovery import discover

    warn = warn or sys.stderr
    loaded = load(flags, env)
    for warning in loaded.warnings:
        print(f"warning: config file: {warning}", file=warn)
    config = loaded.config
    nvml = open_backend(config)
    nvml.init()
    try:
        inventory = discover(nvml)
        try:
            plan = plan_resources(inventory, config)
            resources = plan.resources
            for warning in plan.warnings:
                print(f"warning: {warning}", file=warn)
        except ConfigError as exc:
            # The device plugin refuses this layout; GFD still labels it (MIG-INVALID), so do we.
            print(f"warning: {exc}", file=warn)
            resources = ()
        snapshot = read_snapshot(
            nvml,
            inventory,
            resources,
            config,
            timestamp=timestamp and not config.gfd_no_timestamp,
            clock=clock,
        )
    finally:
        try:
            nvml.shutdown()
        except NvmlError as exc:
            print(f"warning: NVML shutdown failed: {exc}", file=warn)
    for problem in inventory.problems:
        print(f"warning: {problem}", file=warn)
    good, bad = valid_only(snapshot_labels(snapshot))
    for item in bad:
        print(f"warning: left out {item}: not a valid Kubernetes label value", file=warn)
    return good


def run(args: argparse.Namespace) -> int:
    from nvplugin.cli import flags_from_args
    from nvplugin.nvml.fake import LayoutError

    try:
        labels = compute_labels(flags_from_args(args), os.environ)
    except (ConfigError, LayoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NvmlError as exc:
        print(f"error: cannot read the GPUs: {exc}", file=sys.stderr)
        return 1
    text = feature_file(labels)
    sys.stdout.write(text)
    if args.output_file:
        try:
            write_atomically(args.output_file, text)
        except OSError as exc:
            print(f"error: cannot write {args.output_file}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    return 0
