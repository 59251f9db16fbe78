"""`nvplugin inject-xid`: inject GPU faults into a running fake-GPU agent.

    nvplugin inject-xid --gpu 0 --xid 79              # an XID on GPU 0
    nvplugin inject-xid --gpu 0 --xid 94 --gi 1 --ci 0  # on one MIG instance
    nvplugin inject-xid --gpu 1 --lose                # GPU 1 falls off the bus
    nvplugin inject-xid --gpu 0 --reset               # an operator's GPU reset
    nvplugin inject-xid --wait-error unknown          # the next NVML event wait fails
    nvplugin inject-xid --clear | --status

The agent must run with `nvplugin run --fake-gpus ...`; --control names its socket (default
as in nvplugin.nvml.fakecontrol.default_control_path).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nvplugin.nvml import fakecontrol
from nvplugin.nvml.fake import ERROR_KINDS


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "inject-xid",
        help="inject an XID (or another GPU fault) into a running fake-GPU agent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--gpu", type=int, metavar="INDEX", help="fake GPU index")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--xid", type=int, metavar="N", help="XID number to report")
    what.add_argument("--lose", action="store_true", help="the GPU falls off the bus")
    what.add_argument("--reset", action="store_true", help="reset the GPU (clears its recovery action)")
    what.add_argument("--ecc", choices=("single", "double"), help="an ECC event")
    what.add_argument("--wait-error", choices=tuple(ERROR_KINDS), metavar="KIND", help="fail the next wait")
    what.add_argument("--clear", action="store_true", help="undo injected faults")
    what.add_argument("--status", action="store_true", help="show the fake backend's event counters")
    parser.add_argument("--gi", type=int, metavar="N", help="GPU instance id (MIG)")
    parser.add_argument("--ci", type=int, metavar="N", help="compute instance id (MIG; needs --gi)")
    parser.add_argument(
        "--control", metavar="PATH", default=None, help="the agent's control socket (default: %(default)s)"
    )
    parser.set_defaults(run=run)
    return parser


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    """The control request for the parsed flags; ValueError names a missing or misplaced flag."""
    needs_gpu = args.xid is not None or args.lose or args.reset or args.ecc is not None
    if needs_gpu and args.gpu is None:
        raise ValueError("--gpu INDEX is required for --xid, --lose, --reset and --ecc")
    if (args.gi is not None or args.ci is not None) and args.xid is None:
        raise ValueError("--gi and --ci go with --xid")
    if args.ci is not None and args.gi is None:
        raise ValueError("--ci needs --gi: a compute instance lives in a GPU instance")
    if args.xid is not None:
        return {"op": "inject-xid", "gpu": args.gpu, "xid": args.xid, "gi": args.gi, "ci": args.ci}
    if args.lose:
        return {"op": "lose-gpu", "gpu": args.gpu}
    if args.reset:
        return {"op": "reset-gpu", "gpu": args.gpu}
    if args.ecc is not None:
        return {"op": "inject-ecc", "gpu": args.gpu, "double": args.ecc == "double"}
    if args.wait_error is not None:
        return {"op": "wait-error", "kind": args.wait_error}
    if args.clear:
        return {"op": "clear"}
    return {"op": "status"}


def run(args: argparse.Namespace) -> int:
    path = args.control or fakecontrol.default_control_path()
    try:
        payload = build_request(args)
    except ValueError as exc:
        print(f"nvplugin inject-xid: {exc}", file=sys.stderr)
        return 2
    try:
        answer = fakecontrol.request(path, payload)
    except fakecontrol.ControlError as exc:
        print(f"nvplugin inject-xid: {exc}", file=sys.stderr)
        return 1
    if not answer.get("ok"):
        print(f"nvplugin inject-xid: the agent refused: {answer.get('error')}", file=sys.stderr)
        return 1
    if payload["op"] == "status":
        print(json.dumps({k: v for k, v in answer.items() if k != "ok"}, indent=2))
    elif payload["op"] == "inject-xid" and answer.get("delivered") == 0:
        print("injected, but no event set is registered for that GPU yet (is the health watcher running?)")
    else:
        print(
            f"ok: {payload['op']}"
            + (f" delivered to {answer['delivered']} event set(s)" if "delivered" in answer else "")
        )
    return 0
