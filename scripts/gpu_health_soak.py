"""GPU soak: the health watcher on the real NVML for 60 s while a CUDA matmul loop runs.

    PYTHONPATH=. python3 scripts/gpu_health_soak.py [--seconds 60] [--json OUT]

Asserts that events register on every GPU, that waits time out cleanly, that no device is
marked Unhealthy under a real load, and that cancelling the watcher returns within 1 s.
Prints one JSON record (also written to --json). Needs PyTorch with CUDA for the load
(the GPU test machine's python3 has it); never changes any GPU setting.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nvplugin.core.config import Config
from nvplugin.core.resources import build_resources
from nvplugin.core.xid import DEFAULT_POLICY, apply_env
from nvplugin.health import HealthWatcher
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.fake import FakeLayout, FakeNvml
from nvplugin.nvml.real import RealNvml
from nvplugin.state import HealthTransition, NodeState

LOAD = """
import sys, time, torch
seconds = float(sys.argv[1])
a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
torch.cuda.synchronize()
start = time.perf_counter(); n = 0
while time.perf_counter() - start < seconds:
    for _ in range(20):
        c = a @ b
    torch.cuda.synchronize(); n += 20
elapsed = time.perf_counter() - start
print(f"{n} {elapsed:.3f} {2 * 8192**3 * n / elapsed / 1e12:.1f}", flush=True)
"""


def utilization(nvml: RealNvml | FakeNvml, index: int) -> int | None:
    if not isinstance(nvml, RealNvml):
        return None
    try:
        return int(nvml._pynvml.nvmlDeviceGetUtilizationRates(nvml._handle(index)).gpu)
    except Exception:
        return None


async def soak(seconds: float, fake_gpus: int) -> dict[str, object]:
    # --fake-gpus checks this script itself on a machine without a GPU (no CUDA load then).
    nvml: RealNvml | FakeNvml = FakeNvml(FakeLayout.of(fake_gpus)) if fake_gpus else RealNvml()
    nvml.init()
    inventory = discover(nvml)
    state = NodeState(inventory, build_resources(inventory, Config()))
    policy, warnings = apply_env(DEFAULT_POLICY, dict(os.environ))
    transitions: list[HealthTransition] = []
    state.subscribe(transitions.append)
    watcher = HealthWatcher(nvml, state, policy)
    finished: dict[str, object] = {}

    async def run_load() -> None:
        if fake_gpus:
            finished.update(code=0, out="1 0 0", err="fake GPUs: no CUDA load")
            return
        result = await anyio.run_process([sys.executable, "-c", LOAD, str(seconds)], check=False)
        finished.update(code=result.returncode, out=result.stdout.decode(), err=result.stderr.decode())

    peak_util = 0
    async with anyio.create_task_group() as outer:
        outer.start_soon(run_load)
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.run)
            with anyio.fail_after(10):
                await watcher.ready.wait()
            started = time.monotonic()
            while time.monotonic() - started < seconds and (fake_gpus or not finished):
                await anyio.sleep(1.0)
                peak_util = max(peak_util, utilization(nvml, 0) or 0)
            unhealthy_during = dict(state.unhealthy)
            cancel_started = time.monotonic()
            tg.cancel_scope.cancel()
        cancel_s = time.monotonic() - cancel_started
        soak_s = time.monotonic() - started
    stopped = watcher.wait_stopped(1.0)
    out, err = str(finished.get("out", "")), str(finished.get("err", ""))
    probe = nvml.device_probe(0)
    nvml.shutdown()
    iterations, load_s, tflops = [*out.split(), "0", "0", "0"][:3]
    s = watcher.stats
    record: dict[str, object] = {
        "gpus": [f"{g.index}: {g.name} {g.uuid}" for g in inventory.gpus],
        "driver": inventory.driver_version,
        "registered_gpus": {str(i): hex(m) for i, m in s.registered_gpus.items()},
        "unsupported_gpus": s.unsupported,
        "seconds": round(soak_s, 1),
        "waits": s.waits,
        "timeouts": s.timeouts,
        "events": s.events,
        "ecc_events": s.ecc_events,
        "ignored_xids": s.ignored_xids,
        "wait_errors": s.wait_errors,
        "restarts": s.restarts,
        "unhealthy_count": len(unhealthy_during),
        "unhealthy": unhealthy_during,
        "transitions": [f"{t.uuid} healthy={t.healthy} xid={t.xid}: {t.reason}" for t in transitions],
        "cancel_s": round(cancel_s, 4),
        "wait_thread_stopped": stopped,
        "probe": {"temperature_c": probe.temperature_c, "recovery_action": probe.recovery_action},
        "load": {
            "exit": finished.get("code"),
            "matmuls": int(iterations),
            "seconds": float(load_s),
            "tflops_fp16": float(tflops),
            "peak_gpu_util_pct": peak_util,
            "stderr_tail": err[-500:],
        },
        "policy": policy.describe(),
        "env_warnings": list(warnings),
    }
    return record


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", metavar="OUT", help="also write the record here")
    parser.add_argument("--fake-gpus", type=int, default=0, help="dry run on fake GPUs (no CUDA load)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    record = anyio.run(soak, args.seconds, args.fake_gpus)
    text = json.dumps(record, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    problems = []
    if not record["registered_gpus"]:
        problems.append("no GPU registered health events")
    if not isinstance(record["timeouts"], int) or record["timeouts"] < 1:
        problems.append("no clean wait timeout")
    if record["unhealthy_count"]:
        problems.append(f"devices marked Unhealthy under load: {record['unhealthy']}")
    if record["restarts"]:
        problems.append("the watcher crashed")
    if float(str(record["cancel_s"])) >= 1.0 or not record["wait_thread_stopped"]:
        problems.append("cancellation was not clean within 1 s")
    load = record["load"]
    assert isinstance(load, dict)
    if load["exit"] != 0 or not load["matmuls"]:
        problems.append(f"the CUDA load did not run: {load}")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    print("PASS" if not problems else "FAIL")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
