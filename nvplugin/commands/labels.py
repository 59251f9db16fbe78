"""`nvplugin labels`: print the labels this node would get, without touching any cluster.

Reads the real NVML (or the fake backend with --fake-gpus), computes the GFD-compatible labels
and prints them as `key=value` lines; --output-file also writes them there (NFD's features.d
format, written atomically as GFD does). Never imports the Kubernetes client.
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

from nvplugin.configload import load
from nvplugin.core.config import ConfigError
from nvplugin.core.labels import feature_file, node_labels, valid_only
from nvplugin.core.resources import build_resources
from nvplugin.nodefacts import DMI_PRODUCT_NAME, read_node_facts
from nvplugin.nvml import open_backend
from nvplugin.nvml.base import NvmlError
from nvplugin.nvml.discovery import discover

SHARING_STRATEGY_CHOICES = ("time-slicing", "mps")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "labels",
        help="print the node labels this node would get (no cluster access)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--fake-gpus", metavar="N|FILE", help="simulated GPUs instead of NVML: a count or a layout"
    )
    parser.add_argument("--mig-strategy", metavar="STRATEGY", help="none, single or mixed (env MIG_STRATEGY)")
    parser.add_argument(
        "--config-file", metavar="FILE", help="NVIDIA v1 config file, e.g. time-slicing (env CONFIG_FILE)"
    )
    parser.add_argument("--nvidia-driver-root", metavar="PATH", help="root of the NVIDIA driver installation")
    parser.add_argument(
        "--machine-type-file",
        metavar="FILE",
        default=os.environ.get("GFD_MACHINE_TYPE_FILE", DMI_PRODUCT_NAME),
        help=f"where the machine type is read for nvidia.com/gpu.machine (default {DMI_PRODUCT_NAME})",
    )
    parser.add_argument(
        "--no-timestamp",
        action="store_true",
        default=os.environ.get("GFD_NO_TIMESTAMP", "").lower() in ("1", "true"),
        help="leave out nvidia.com/gfd.timestamp",
    )
    parser.add_argument(
        "--output-file",
        "-o",
        metavar="FILE",
        default=os.environ.get("GFD_OUTPUT_FILE") or None,
        help="also write the labels to FILE as key=value lines (NFD features.d format)",
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
    machine_type_file: str = DMI_PRODUCT_NAME,
    timestamp: bool = True,
    warn: TextIO | None = None,
    clock: Callable[[], float] = time.time,
) -> dict[str, str]:
    """The labels for this node. Raises ConfigError or NvmlError (and LayoutError)."""
    warn = warn or sys.stderr
    loaded = load(flags, env)
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=warn)
    config = loaded.config
    nvml = open_backend(config)
    nvml.init()
    try:
        inventory = discover(nvml)
        # Config.gfd_no_timestamp (flags.gfd.noTimestamp) arrives with the config-file work.
        timestamp = timestamp and not getattr(config, "gfd_no_timestamp", False)
        facts = read_node_facts(
            nvml, inventory, machine_type_file=machine_type_file, timestamp=timestamp, clock=clock
        )
    finally:
        try:
            nvml.shutdown()
        except NvmlError as exc:
            print(f"warning: NVML shutdown failed: {exc}", file=warn)
    for problem in inventory.problems:
        print(f"warning: {problem}", file=warn)
    try:
        resources = build_resources(inventory, config)
    except ConfigError as exc:
        # The device plugin refuses this layout; GFD still labels it (MIG-INVALID), so do we.
        print(f"warning: {exc}", file=warn)
        resources = ()
    labels = node_labels(inventory, resources, config, facts)
    good, bad = valid_only(labels)
    for item in bad:
        print(f"warning: left out {item}: not a valid Kubernetes label value", file=warn)
    return good


def run(args: argparse.Namespace) -> int:
    from nvplugin.nvml.fake import LayoutError

    flags = {
        "fake_gpus": args.fake_gpus,
        "mig_strategy": args.mig_strategy,
        "config_file": args.config_file,
        "nvidia_driver_root": args.nvidia_driver_root,
    }
    try:
        labels = compute_labels(
            flags, os.environ, machine_type_file=args.machine_type_file, timestamp=not args.no_timestamp
        )
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


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m nvplugin.commands.labels`) until the CLI wires it."""
    parser = argparse.ArgumentParser(prog="nvplugin")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
