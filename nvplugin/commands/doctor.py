"""`nvplugin doctor`: check this node for everything nvplugin needs, and say how to fix it.

    nvplugin doctor                              # on the node (as root), text for a person
    nvplugin doctor --output json                # [{name, status, summary, details, fix}, ...]
    kubectl -n kube-system exec <agent pod> -- nvplugin doctor     # the agent's view
    nvplugin doctor --host-root /host            # in a pod that mounts the host's / at /host

Takes every flag and environment variable of `nvplugin run` (--kubelet-socket, --config-file,
--fake-gpus, --mig-strategy, --kubeconfig, --node-name, ...), so it checks what the agent
would use. Checks: config, nvml, kernel-modules, device-nodes, talos, container-runtime,
cdi-spec, kubelet-socket, plugin-registration, resources, node, runtime-class (docs/doctor.md).

Exit code: 0 when every check passed or did not apply (skip), 1 when one failed, 3 when none
failed but one warned, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from nvplugin.cli import add_config_flags, flags_from_args
from nvplugin.doctor import DoctorOptions, as_json, as_text, exit_code, run_checks

EXIT_USAGE = 2


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "doctor",
        help="check this node for the driver, runtime, kubelet and cluster setup nvplugin needs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flags(parser)
    parser.add_argument(
        "--host-root",
        default="/",
        metavar="DIR",
        help="where the host's / is mounted; every host file is read under it (default /)",
    )
    parser.add_argument(
        "--output", choices=("text", "json"), default="text", help="report format (default text)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="for each socket, HTTP and API probe (default 3)",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import anyio

    from nvplugin.nvml.fake import LayoutError

    if not os.path.isdir(args.host_root):
        print(f"nvplugin doctor: --host-root {args.host_root!r} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    if not args.timeout > 0:
        print(f"nvplugin doctor: --timeout must be greater than 0, got {args.timeout:g}", file=sys.stderr)
        return EXIT_USAGE
    # The API client logs a missing kubeconfig as a warning; the node check reports it already.
    logging.getLogger("kubernetes_asyncio.config").setLevel(logging.ERROR)
    options = DoctorOptions(flags_from_args(args), dict(os.environ), args.host_root, args.timeout)
    try:
        results = anyio.run(run_checks, options)
    except LayoutError as exc:
        print(f"nvplugin doctor: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.output == "json":
        sys.stdout.write(as_json(results))
    else:
        node = options.flags.get("node_name") or options.env.get("NODE_NAME") or os.uname().nodename
        sys.stdout.write(as_text(results, header=f"nvplugin doctor on {node} (host root {args.host_root})"))
    return exit_code(results)
