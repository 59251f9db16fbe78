"""Hostile gRPC requests against the agent as a real process, from a grpcio client.

    python benchmarks/bench_hostile_grpc.py [--gpus 8] [--repeat 3]

For each request: the status and how long its answer took; the slowest answer a probe got
meanwhile (GetDevicePluginOptions from another thread, as the kubelet would ask something else:
a stalled event loop shows there); and the agent's resident memory after (VmRSS) and at its
peak (VmHWM). The agent's loop was held 7 s by one 256 KB ID, 15 s by 10,000 unknown IDs,
over 10 minutes by a 16 MiB ID, and 9 s (455 MB) by a 64 MiB request before requests were
read within bounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import anyio
import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nvplugin.api import v1beta1 as api  # noqa: E402
from nvplugin.simulate.kubelet import KubeletSimulator  # noqa: E402

RESOURCE = "nvidia.com/gpu"
SERVICE = "/v1beta1.DevicePlugin/"


def allocate(*ids: str) -> bytes:
    return bytes(
        api.AllocateRequest(container_requests=[api.ContainerAllocateRequest(devices_ids=list(ids))])
    )


def cases() -> list[tuple[str, str, bytes]]:
    tiny = b"\x0a\x00" * ((4 * 2**20 - 16) // 2)
    return [
        ("one 256 KB unknown ID", "Allocate", allocate("GPU-" + "f" * 262_144)),
        ("10,000 unknown IDs", "Allocate", allocate(*(f"GPU-{i}" for i in range(10_000)))),
        ("one 16 MiB ID", "Allocate", allocate("GPU-" + "f" * (16 << 20))),
        ("a 64 MiB request", "Allocate", b"\x0a" * (64 << 20)),
        ("4 MiB of empty IDs (2 million)", "Allocate", b"\x0a" + _varint(len(tiny)) + tiny),
        ("4 MiB of empty available IDs", "GetPreferredAllocation", b"\x0a" + _varint(len(tiny)) + tiny),
        (
            "100,000 distinct unknown IDs (the most allowed)",
            "Allocate",
            allocate(*(f"{i:x}" for i in range(100_000))),
        ),
        ("400,000 distinct unknown IDs", "Allocate", allocate(*(f"{i:x}" for i in range(400_000)))),
        ("corrupt protobuf", "Allocate", b"\x0a\x05ab"),
    ]


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


class Probe(threading.Thread):
    def __init__(self, socket_path: str) -> None:
        super().__init__(daemon=True)
        self.socket_path = socket_path
        self.slowest = 0.0
        self.stopped = threading.Event()

    def run(self) -> None:
        with grpc.insecure_channel(f"unix://{self.socket_path}") as channel:
            ask = channel.unary_unary(SERVICE + "GetDevicePluginOptions")
            while not self.stopped.is_set():
                started = time.perf_counter()
                ask(b"", timeout=600)
                self.slowest = max(self.slowest, time.perf_counter() - started)
                self.stopped.wait(0.005)


def proc_status(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def send_all(socket_path: str, pid: int, repeat: int) -> None:
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        for name, method, body in cases():
            call = channel.unary_unary(SERVICE + method)
            for _ in range(repeat):
                probe = Probe(socket_path)
                probe.start()
                started = time.perf_counter()
                try:
                    call(body, timeout=600)
                    status, details = "OK", ""
                except grpc.RpcError as exc:
                    status, details = exc.code().name, exc.details() or ""
                took = time.perf_counter() - started
                probe.stopped.set()
                probe.join()
                print(
                    f"{name} ({len(body):,} bytes): {status} in {took * 1000:.0f} ms "
                    f"({len(details)}-character message); slowest probe {probe.slowest * 1000:.0f} ms; "
                    f"agent RSS {proc_status(pid, 'VmRSS'):.0f} MiB, peak {proc_status(pid, 'VmHWM'):.0f} MiB"
                )


def spawn_agent(directory: Path, gpus: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        # Its own fault-injection socket: another agent on this machine may hold the default one.
        "NVPLUGIN_FAKE_CONTROL": str(directory.parent / "fake-control.sock"),
    }
    cmd = [sys.executable, "-m", "nvplugin", "run", "--kubelet-socket", str(directory / "kubelet.sock")]
    cmd += ["--fake-gpus", str(gpus), "--log-level", "error"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


async def main(args: argparse.Namespace) -> None:
    print(
        f"# bench_hostile_grpc on {platform.node()} ({os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}), {args.gpus} fake GPUs, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    with tempfile.TemporaryDirectory(prefix="nvpb-", dir="/tmp") as tmp:
        directory = Path(tmp) / "plugins"
        async with KubeletSimulator(directory) as kubelet:
            proc = spawn_agent(directory, args.gpus)
            try:
                plugin = await kubelet.wait_registered(RESOURCE, timeout=30)
                print(f"agent RSS after registering: {proc_status(proc.pid, 'VmRSS'):.0f} MiB")
                await anyio.to_thread.run_sync(
                    send_all, str(directory / plugin.endpoint), proc.pid, args.repeat
                )
            finally:
                stop(proc)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    anyio.run(main, parser.parse_args())
