"""Where start-up time and memory go, each step in fresh processes of the given interpreter.

    python benchmarks/startup_breakdown.py [--runs 10] [--python PYTHON]

Each step is a new process that does everything up to that step, then prints its RSS: the
interpreter alone, nvplugin's command line, the agent's modules (the gRPC stack), with uvloop,
pynvml, nvmlInit and the first discovery (real NVML where there is one). Prints the median wall
time and RSS of each, and the difference from the step before.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RSS = "import re; print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)))"
STEPS = (
    ("interpreter", "pass"),
    ("nvplugin.cli", "import nvplugin.cli"),
    ("+ agent modules", "import nvplugin.cli, nvplugin.agent"),
    ("+ uvloop", "import nvplugin.cli, nvplugin.agent, uvloop"),
    ("+ pynvml", "import nvplugin.cli, nvplugin.agent, uvloop, pynvml"),
    ("+ nvmlInit", "import nvplugin.cli, nvplugin.agent, uvloop, pynvml; pynvml.nvmlInit()"),
    (
        "(no TLS: ssl not loaded, no uvloop)",
        "import sys; sys.modules['ssl'] = None\n"
        "import nvplugin.cli, nvplugin.agent, pynvml; pynvml.nvmlInit()",
    ),
    (
        "+ discovery",
        "import nvplugin.cli, nvplugin.agent, uvloop\n"
        "from nvplugin.nvml.real import RealNvml\nfrom nvplugin.nvml.discovery import discover\n"
        "n = RealNvml(); n.init(); discover(n)",
    ),
)


def measure(python: str, code: str, runs: int) -> tuple[float, float] | None:
    times, rss = [], []
    for _ in range(runs):
        started = time.perf_counter()
        out = subprocess.run(
            [python, "-c", f"{code}\n{RSS}"], capture_output=True, text=True, cwd=ROOT, check=False
        )
        if out.returncode != 0:
            return None
        times.append(time.perf_counter() - started)
        rss.append(int(out.stdout.split()[-1]) / 1024)
    return statistics.median(times) * 1000, statistics.median(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    print(f"# start-up breakdown, {args.python}, median of {args.runs} fresh processes")
    previous = (0.0, 0.0)
    for name, code in STEPS:
        result = measure(args.python, code, args.runs)
        if result is None:
            print(f"{name:18s} (not possible here)")
            continue
        ms, mib = result
        print(
            f"{name:18s} {ms:7.1f} ms ({ms - previous[0]:+6.1f})   peak RSS {mib:5.1f} MiB ({mib - previous[1]:+5.1f})"
        )
        previous = result


if __name__ == "__main__":
    main()
