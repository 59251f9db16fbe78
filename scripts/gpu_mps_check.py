"""Two CUDA processes through one MPS control daemon, on the GPU machine.

    python3 scripts/gpu_mps_check.py --out DIR [--daemon nvplugin|raw]

Starts the MPS control daemon the way nvplugin starts it for a shared resource (`--daemon
nvplugin`, the default when nvplugin.mps exists: pipe and log directories under a root,
the active-thread percentage and the pinned device memory limit set through the control
pipe), then runs two CUDA processes (PyTorch matrix products) with the environment a container
gets from Allocate, checks that both ran as MPS clients of one server, and stops the daemon.
Prints what it saw as JSON (and writes DIR/mps.json). Changes nothing on the GPU beyond the
daemon's life: no compute mode, no MIG, no clocks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLIENT = r"""
import os, sys, time, torch
assert torch.cuda.is_available(), "no CUDA"
a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
torch.cuda.synchronize()
start = time.perf_counter()
for _ in range(200):
    a = (a @ a).clamp_(-1, 1)
torch.cuda.synchronize()
print(os.getpid(), round(time.perf_counter() - start, 3), torch.cuda.get_device_name(0), flush=True)
time.sleep(float(sys.argv[1]))
"""


def control(pipe_dir: str, command: str, binary: str) -> str:
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": pipe_dir}
    result = subprocess.run([binary], input=command + "\n", capture_output=True, text=True, env=env, timeout=20)
    return (result.stdout + result.stderr).strip()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    binary = shutil.which("nvidia-cuda-mps-control") or "/usr/local/nvidia/bin/nvidia-cuda-mps-control"
    record: dict[str, object] = {"control_binary": binary, "exists": os.path.exists(binary)}
    if not os.path.exists(binary):
        print(json.dumps(record, indent=2))
        return 1
    root = tempfile.mkdtemp(prefix="nvplugin-mps-")
    pipe_dir, log_dir = os.path.join(root, "pipe"), os.path.join(root, "log")
    os.makedirs(pipe_dir)
    os.makedirs(log_dir)
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": pipe_dir, "CUDA_MPS_LOG_DIRECTORY": log_dir}
    started = subprocess.run([binary, "-d"], env=env, capture_output=True, text=True, timeout=20)
    record["daemon_start"] = {"exit": started.returncode, "output": (started.stdout + started.stderr).strip()}
    try:
        record["set_threads"] = control(pipe_dir, "set_default_active_thread_percentage 50", binary)
        record["set_pinned"] = control(pipe_dir, "set_default_device_pinned_mem_limit 0 40G", binary)
        client_env = {
            **os.environ,
            "CUDA_MPS_PIPE_DIRECTORY": pipe_dir,
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50",
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=40G",
        }
        clients = [
            subprocess.Popen(
                [sys.executable, "-c", CLIENT, "3"], env=client_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        time.sleep(6)
        record["server_list"] = control(pipe_dir, "get_server_list", binary)
        server = str(record["server_list"]).split()[0] if record["server_list"] else ""
        if server.isdigit():
            record["clients_of_server"] = control(pipe_dir, f"get_client_list {server}", binary)
        record["nvidia_smi_apps"] = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        record["nvidia_smi_types"] = [
            line for line in subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout.splitlines() if "M+C" in line or " C " in line
        ]
        outputs = []
        for client in clients:
            out, err = client.communicate(timeout=120)
            outputs.append({"exit": client.returncode, "out": out.strip(), "err": err.strip()[-500:]})
        record["clients"] = outputs
    finally:
        record["quit"] = control(pipe_dir, "quit", binary)
        time.sleep(1)
        logs = {}
        for name in ("control.log", "server.log"):
            path = os.path.join(log_dir, name)
            if os.path.exists(path):
                logs[name] = Path(path).read_text()[-3000:]
        record["logs"] = logs
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(record, indent=2)
    print(text)
    Path(args.out, "mps.json").write_text(text)
    ok = all(c["exit"] == 0 for c in record.get("clients", [])) and bool(record.get("server_list"))  # type: ignore[union-attr]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
