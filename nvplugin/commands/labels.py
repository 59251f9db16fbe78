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
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from nvplugin.core.config import ConfigError
from nvplugin.core.labels import feature_file
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
    from nvplugin.nvml import open_backend
    from nvplugin.nvml.early import EarlyStart

    warn = warn or sys.stderr
    loaded = load(flags, env)
    # NVML starts now, in a thread, while the label pipeline's modules are imported.
    early = EarlyStart(open_backend(loaded.config), topology=False)
    from nvplugin.nodelabels import labels_once

    for warning in loaded.warnings:
        print(f"warning: {warning}", file=warn)
    return labels_once(loaded.config, timestamp=timestamp, clock=clock, warn=warn, early=early)


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
        from nvplugin.nodelabels import write_feature_file

        try:
            write_feature_file(args.output_file, labels)
        except OSError as exc:
            print(f"error: cannot write {args.output_file}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    return 0
