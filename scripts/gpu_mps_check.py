"""Two CUDA processes as MPS clients of the daemon nvplugin runs, on the GPU machine.

    python3 scripts/gpu_mps_check.py --out DIR [--replicas 2]

Runs the agent (nvplugin.agent.Agent on the real NVML) with sharing.mps, every GPU advertised
`--replicas` times, under the kubelet simulator: its mps-daemons task starts
nvidia-cuda-mps-control for nvidia.com/gpu as it does on a node (nvplugin.mps: pipe and log
directories under the MPS root, CUDA_VISIBLE_DEVICES, the pinned memory limit and the active
thread percentage through the control pipe). Then asks Allocate, through gRPC, for two replicas
of GPU 0, one container each, and starts one PyTorch process per answer with exactly that
answer's env. There is no container: the host's MPS root is linked at /mps, as the DaemonSet
mounts it, and the answer's mounts are checked to name what the processes see (the pipe
directory; /dev/shm is this machine's own for the daemon and the clients alike). While both
processes hold a CUDA context, asks the daemon for its servers and their clients; then stops the
agent, which sends quit, and checks that the daemon is gone and its pipe directory empty.

Prints the record as JSON (and writes DIR/mps.json); exits 0 when both processes ran as clients
of one MPS server and the daemon was stopped cleanly. Changes nothing on the GPU beyond the
daemon's life: no compute mode, no MIG, no clocks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from nvplugin.agent import Agent
from nvplugin.core.config import Config, ReplicatedResource, ReplicatedResources, Sharing
from nvplugin.core.mps import CONTAINER_ROOT, plan_mps_daemons
from nvplugin.core.resources import GPU_RESOURCE
from nvplugin.mps import MpsDaemon, agent_mps_root, find_control_command
from nvplugin.nvml.real import RealNvml
from nvplugin.simulate.kubelet import KubeletSimulator

# One container's work: a CUDA context, some matrix products, then what it saw, and it holds the
# context until the checker closes its stdin.
CLIENT = r"""
import json, os, sys, time, torch
assert torch.cuda.is_available(), "no CUDA"
a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
torch.cuda.synchronize()
start = time.perf_counter()
for _ in range(200):
    a = (a @ a).clamp_(-1, 1)
torch.cuda.synchronize()
free, total = torch.cuda.mem_get_info()
print(json.dumps({"pid": os.getpid(), "seconds": round(time.perf_counter() - start, 3),
                  "device": torch.cuda.get_device_name(0), "mem_total_mib": total >> 20,
                  "mem_free_mib": free >> 20}), flush=True)
sys.stdin.read()
"""
WAIT_S = 180.0


async def check(replicas: int, record: dict[str, Any]) -> bool:
    root = tempfile.mkdtemp(prefix="nvplugin-mps-root-")  # the host's MPS root (--mps-root)
    plugin_dir = Path(tempfile.mkdtemp(prefix="nvp-mps-", dir="/tmp"))
    os.symlink(root, CONTAINER_ROOT)  # the agent's and the containers' view of it, as mounted
    config = Config(
        kubelet_socket=str(plugin_dir / "kubelet.sock"),
        metrics_address=None,
        mps_root=root,
        sharing=Sharing(
            mps=ReplicatedResources(
                fail_requests_greater_than_one=True, resources=(ReplicatedResource(GPU_RESOURCE, replicas),)
            )
        ),
    )
    record["mps_root"] = {"host": root, "agent_and_containers": CONTAINER_ROOT}
    agent = Agent(config, RealNvml(), handle_signals=False)
    clients: list[Process] = []
    daemon_pid = None
    try:
        async with (
            KubeletSimulator(plugin_dir, dial_timeout=10.0) as kubelet,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(agent.run)
            plugin = await kubelet.wait_registered(GPU_RESOURCE, timeout=WAIT_S)
            await kubelet.wait_devices(
                GPU_RESOURCE, lambda p: p.allocatable == p.capacity > 0, timeout=WAIT_S
            )
            (plan,) = plan_mps_daemons(agent.state.resources, agent.state.inventory, agent_mps_root(config))
            await wait_for(lambda: os.path.exists(plan.started_file), "the daemon's .started file")
            daemon_pid = int(Path(plan.pid_file).read_text())
            control = find_control_command(config)
            daemon = MpsDaemon(plan, control)
            gpu = agent.state.inventory.gpus[0]
            record["daemon"] = {
                "control": control,
                "pid": daemon_pid,
                "environment": plan.environment(),
                "advertised": plugin.capacity,
                "thread_percentage": await daemon.command("get_default_active_thread_percentage"),
                "pinned_limit_gpu0": await daemon.command("get_default_device_pinned_mem_limit 0"),
                "planned_pinned_limits": plan.pinned_memory_limits,
                "gpu0": {"uuid": gpu.uuid, "name": gpu.name, "memory_mib": gpu.memory_mib},
            }
            answers = [await kubelet.allocate(GPU_RESOURCE, [f"{gpu.uuid}::{n}"]) for n in range(2)]
            record["allocate"] = [
                {"envs": dict(a.envs), "mounts": [(m.container_path, m.host_path) for m in a.mounts]}
                for a in answers
            ]
            record["mounts_seen_here"] = {
                m.container_path: os.path.exists(m.host_path)
                and os.path.samefile(m.container_path, m.host_path)
                for m in answers[0].mounts
            }
            for answer in answers:
                clients.append(
                    await anyio.open_process(
                        [sys.executable, "-c", CLIENT], env={**os.environ, **answer.envs}
                    )
                )
            with anyio.fail_after(WAIT_S):
                seen = [await first_line(c) for c in clients]
            record["clients_saw"] = [json.loads(line) if line.strip() else None for line in seen]
            servers = (await daemon.command("get_server_list")).split()
            record["servers"] = servers
            record["clients_of_server"] = {
                s: (await daemon.command(f"get_client_list {s}")).split() for s in servers
            }
            # What the daemon and its server cost the agent's container (its memory limit).
            record["rss_mib"] = {
                str(pid): rss_mib(pid) for pid in [daemon_pid, *(int(s) for s in servers if s.isdigit())]
            }
            record["nvidia_smi_apps"] = await run(
                ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv"]
            )
            outputs = []
            for client in clients:
                outputs.append({"exit": await let_go(client), "err": await rest(client.stderr)})
            record["clients"] = outputs
            record["logs"] = {
                name: tail(os.path.join(plan.log_dir, name)) for name in ("control.log", "server.log")
            }
            tg.cancel_scope.cancel()
        await wait_for(lambda: not alive(daemon_pid), "the daemon gone after quit")
        record["after_stop"] = {
            "daemon_running": alive(daemon_pid),
            "pipe_dir": sorted(os.listdir(plan.pipe_dir)),
            "resource_dir": sorted(os.listdir(os.path.dirname(plan.pipe_dir))),
        }
    finally:
        for client in clients:
            if client.returncode is None:
                client.kill()
        os.unlink(CONTAINER_ROOT)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(plugin_dir, ignore_errors=True)
    client_pids = {str(c["pid"]) for c in record["clients_saw"] if c}
    checks = {
        "both clients ran": all(c["exit"] == 0 for c in record["clients"]) and len(client_pids) == 2,
        "one MPS server": len(record["servers"]) == 1,
        "both clients of that server": any(
            client_pids <= set(v) for v in record["clients_of_server"].values()
        ),
        "the pipe directory mount is what the clients see": record["mounts_seen_here"].get(
            record["allocate"][0]["envs"].get("CUDA_MPS_PIPE_DIRECTORY", ""), False
        ),
        "daemon stopped, pipe directory empty": not record["after_stop"]["daemon_running"]
        and record["after_stop"]["pipe_dir"] == [],
    }
    record["checks"] = checks
    # Informational: whether CUDA reports the pinned limit as the clients' total memory.
    record["clients_total_mib_vs_limit"] = [
        (c["mem_total_mib"] if c else None, record["daemon"]["pinned_limit_gpu0"])
        for c in record["clients_saw"]
    ]
    return all(checks.values())


async def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {WAIT_S:g} s for {what}")
        await anyio.sleep(0.05)


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def first_line(process: Process) -> str:
    """What a client printed once its work was done (empty if it ended first)."""
    assert process.stdout is not None
    try:
        return (await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 1 << 16)).decode()
    except (anyio.EndOfStream, anyio.IncompleteRead):
        return ""


async def let_go(process: Process) -> int:
    """Close its stdin (it then ends, releasing its CUDA context); its exit code."""
    assert process.stdin is not None
    await process.stdin.aclose()
    with anyio.fail_after(WAIT_S):
        return await process.wait()


async def rest(stream: Any) -> str:
    chunks = [chunk async for chunk in stream]
    return b"".join(chunks).decode(errors="replace").strip()[-800:]


async def run(command: list[str]) -> str:
    try:
        with anyio.fail_after(30):
            result = await anyio.run_process(command, check=False)
    except (OSError, TimeoutError) as exc:
        return f"({exc})"
    return str(result.stdout.decode().strip())


def rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return None if kib is None else round(kib / 1024, 1)


def tail(path: str) -> str:
    try:
        return Path(path).read_text()[-3000:]
    except OSError as exc:
        return f"({exc.strerror})"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    record: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    ok = False
    if not hasattr(anyio, "wait_readable"):
        record["error"] = (
            "nvplugin.mps needs anyio >= 4.7 (anyio.wait_readable): carry a newer wheel in .whl/"
        )
    elif os.path.lexists(CONTAINER_ROOT):
        record["error"] = f"{CONTAINER_ROOT} exists here already: this check links the MPS root there"
    else:
        try:
            ok = anyio.run(check, args.replicas, record)
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
    record["ok"] = ok
    text = json.dumps(record, indent=2, default=str)
    print(text)
    Path(args.out, "mps.json").write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
