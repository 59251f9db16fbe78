"""Core agent benchmarks: the agent as a real process, the kubelet simulator in this one.

    python benchmarks/bench_agent.py [--real] [--gpus 8] [--starts 10] [--calls 2000]
                                     [--restarts 100] [--idle 30]

Prints, for the agent process:
- start -> Register received by the simulator (median, p90 over --starts runs);
- Allocate latency seen by a grpcio client (p50, p99), on the default loop and on uvloop;
- kubelet restart -> re-registered (p50, p99 over --restarts restarts);
- peak RSS (VmHWM) and idle CPU over --idle seconds.
--real uses the machine's NVML instead of --fake-gpus.
"""

from __future__ import annotations

import argparse
import compileall
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from timing import percentile, time_calls  # noqa: E402  (benchmarks/, this script's directory)

from nvplugin.api import v1beta1 as api  # noqa: E402
from nvplugin.simulate.kubelet import KubeletSimulator  # noqa: E402

RESOURCE = "nvidia.com/gpu"


def agent_cmd(args: argparse.Namespace, socket: Path) -> list[str]:
    if args.bare:
        return [sys.executable, str(ROOT / "benchmarks" / "bare_plugin.py"), "--kubelet-socket", str(socket)]
    cmd = [sys.executable, "-m", "nvplugin", "run", "--kubelet-socket", str(socket), "--log-level", "warning"]
    if not args.real:
        cmd += ["--fake-gpus", args.layout or str(args.gpus)]
    return cmd + args.agent_args


def spawn(args: argparse.Namespace, socket: Path, uvloop: bool = True) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    if not uvloop:
        env["NVPLUGIN_NO_UVLOOP"] = "1"
    return subprocess.Popen(
        agent_cmd(args, socket), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def bench_start(args: argparse.Namespace, directory: Path) -> list[float]:
    times = []
    for _ in range(args.starts):
        async with KubeletSimulator(directory) as kubelet:
            started = time.monotonic()
            proc = spawn(args, directory / "kubelet.sock")
            try:
                with anyio.move_on_after(30):
                    await kubelet.wait_for(
                        lambda p=proc: kubelet.registrations or p.poll() is not None, timeout=31
                    )
                if not kubelet.registrations:
                    stop(proc)
                    raise SystemExit(f"the agent did not register: {proc.stderr.read().decode()[-2000:]}")
                times.append((kubelet.registrations[0].at - started) * 1000)
                await kubelet.wait_registered(args.resource, timeout=30)
            finally:
                stop(proc)
    return times


def grpcio_allocate_latencies(socket_path: str, device_ids: list[str], calls: int) -> list[float]:
    import grpc

    request = bytes(
        api.AllocateRequest(container_requests=[api.ContainerAllocateRequest(devices_ids=device_ids)])
    )
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        allocate = channel.unary_unary(
            "/v1beta1.DevicePlugin/Allocate",
            request_serializer=lambda b: b,
            response_deserializer=api.AllocateResponse().parse,
        )
        return time_calls(allocate, request, calls=calls, warmup=200, timeout=5)


async def bench_allocate(args: argparse.Namespace, directory: Path, uvloop: bool) -> list[float]:
    async with KubeletSimulator(directory) as kubelet:
        proc = spawn(args, directory / "kubelet.sock", uvloop=uvloop)
        try:
            plugin = await kubelet.wait_registered(args.resource, timeout=30)
            socket_path = str(directory / plugin.endpoint)
            ids = list(plugin.devices)[:1]
            return await anyio.to_thread.run_sync(grpcio_allocate_latencies, socket_path, ids, args.calls)
        finally:
            stop(proc)


async def bench_restarts_rss_idle(args: argparse.Namespace, directory: Path) -> dict[str, object]:
    async with KubeletSimulator(directory) as kubelet:
        proc = spawn(args, directory / "kubelet.sock")
        try:
            await kubelet.wait_registered(args.resource, timeout=30)
            latencies = []
            for n in range(2, args.restarts + 2):
                t0 = time.monotonic()
                await kubelet.restart()
                await kubelet.wait_registered(args.resource, count=n, timeout=10)
                reg = [r for r in kubelet.registrations if r.accepted][-1]
                latencies.append((reg.at - t0) * 1000)
            # Idle: nothing happens; the agent should not wake up.
            await anyio.sleep(2)
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            await anyio.sleep(args.idle)
            idle_cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0) * 100
            peak_rss = proc_status(proc.pid, "VmHWM") / 1024
            threads = proc_status(proc.pid, "Threads")
            return {
                "restart": latencies,
                "idle_cpu_pct": idle_cpu,
                "peak_rss_mib": peak_rss,
                "threads": threads,
            }
        finally:
            stop(proc)


def uvloop_installed() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


async def with_api_server(args: argparse.Namespace) -> None:
    """--labels: the agent labels its node through the test API server (loopback only)."""
    from nvplugin.testing.apiserver import FakeApiServer

    async with FakeApiServer() as api:
        api.add_node("bench-node")
        kubeconfig = api.write_kubeconfig(Path(tempfile.mkdtemp(prefix="nvpb-kc-")) / "kubeconfig")
        os.environ["NODE_NAME"] = "bench-node"
        args.agent_args += ["--labels", "--kubeconfig", str(kubeconfig)]
        await main(args)
        print(f"node labels written by the agent: {len(api.labels('bench-node'))}")


async def main(args: argparse.Namespace) -> None:
    # Byte-compile first, as an installed package is: start-up must not include compiling
    # (this sandbox sets PYTHONDONTWRITEBYTECODE, so imports alone never write .pyc files).
    compileall.compile_dir(ROOT / "nvplugin", quiet=1)
    compileall.compile_dir(ROOT / "benchmarks", quiet=1)
    machine = f"{platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()})"
    backend = "real NVML" if args.real else (args.layout or f"{args.gpus} fake GPUs")
    if args.bare:
        backend = "BARE grpclib + betterproto2 plugin (the baseline, no work)"
    if args.agent_args:
        backend += " " + " ".join(args.agent_args)
    print(f"# bench_agent on {machine}, {backend}, {time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory(prefix="nvpb-", dir="/tmp") as tmp:
        directory = Path(tmp)
        starts = await bench_start(args, directory)
        print(
            f"start -> Register: median {statistics.median(starts):.1f} ms, p90 {percentile(starts, 90):.1f} ms, "
            f"min {min(starts):.1f} ms over {len(starts)} starts"
        )
        loops = [False, True] if uvloop_installed() and not args.bare else [False]
        for uv in loops:
            lat = await bench_allocate(args, directory, uvloop=uv)
            print(
                f"Allocate via grpcio ({'uvloop' if uv else 'asyncio loop'}): p50 {percentile(lat, 50):.3f} ms, "
                f"p99 {percentile(lat, 99):.3f} ms, max {max(lat):.3f} ms over {len(lat)} calls"
            )
        if not uvloop_installed():
            print("uvloop: not installed (pip install 'nvplugin[fast]' to compare)")
        out = await bench_restarts_rss_idle(args, directory)
        restart = out["restart"]
        assert isinstance(restart, list)
        if restart:
            print(
                f"kubelet restart -> re-registered: p50 {percentile(restart, 50):.1f} ms, p99 {percentile(restart, 99):.1f} ms, "
                f"max {max(restart):.1f} ms over {len(restart)} restarts"
            )
        print(f"peak RSS (VmHWM): {out['peak_rss_mib']:.1f} MiB; threads: {out['threads']}")
        print(f"idle CPU over {args.idle:.0f} s: {out['idle_cpu_pct']:.3f} % of one core")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="use the real NVML")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--restarts", type=int, default=100)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--layout", help="a fake GPU layout file instead of --gpus")
    parser.add_argument("--resource", default=RESOURCE, help="the resource to allocate from")
    parser.add_argument("--bare", action="store_true", help="measure the bare baseline plugin instead")
    parser.add_argument("--labels", action="store_true", help="run the agent with --labels (test API server)")
    parser.add_argument("agent_args", nargs="*", help="more flags for the agent (after --)")
    ns = parser.parse_args()
    anyio.run(with_api_server if ns.labels else main, ns)
