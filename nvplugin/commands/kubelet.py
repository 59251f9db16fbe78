"""`nvplugin kubelet`: a stand-in kubelet for local work, in its own terminal.

    nvplugin kubelet --dir /tmp/dp                                  # terminal 1
    nvplugin run --fake-gpus 4 --kubelet-socket /tmp/dp/kubelet.sock  # terminal 2

It serves the kubelet's registration socket in DIR, dials every plugin that registers, follows
its device list and prints what it sees, as `nvplugin simulate` does for its embedded kubelet.
SIGHUP restarts it the way a real kubelet restarts (every socket in DIR deleted, kubelet.sock
re-created), to watch an agent register again. Ctrl-C or SIGTERM stops it and removes its
socket.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

import anyio

DEFAULT_DIR = "/tmp/nvplugin-kubelet"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "kubelet",
        help="run a stand-in kubelet for local work: agents register with it, it tells what it sees",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dir",
        default=DEFAULT_DIR,
        help="the kubelet's device-plugin directory, created if missing (default %(default)s)",
    )
    parser.set_defaults(run=run)
    return parser


async def serve(directory: str) -> None:
    from nvplugin.simulate.kubelet import KubeletSimulator
    from nvplugin.simulate.story import follow, python_command, say

    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with KubeletSimulator(directory, narrate=say) as kubelet, anyio.create_task_group() as tg:
            say("Start an agent against it, in another terminal:")
            say(f"  {python_command('run', '--fake-gpus', '4', '--kubelet-socket', kubelet.socket_path)}")
            say("SIGHUP restarts this kubelet (the agent registers again); Ctrl-C stops it.")
            tg.start_soon(follow, kubelet)
            async for signum in signals:
                if signum != signal.SIGHUP:
                    say(f"{signal.Signals(signum).name}: stopping.")
                    tg.cancel_scope.cancel()
                    break
                say("SIGHUP: restarting, as a kubelet does.")
                await kubelet.restart()


def run(args: argparse.Namespace) -> int:
    try:
        anyio.run(serve, args.dir)
    except OSError as exc:
        print(f"nvplugin kubelet: cannot serve in {args.dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
