"""Where the agent's memory goes with the real NVML: RSS after each step of bringing NVML up.

python benchmarks/nvml_memory.py        # on a GPU machine
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    steps = [("python started", rss_mib())]
    import nvplugin.agent  # noqa: F401  (the agent's own modules and the gRPC stack)

    steps.append(("agent modules imported", rss_mib()))
    import pynvml

    steps.append(("pynvml imported", rss_mib()))
    pynvml.nvmlInit()
    steps.append(("nvmlInit", rss_mib()))
    from nvplugin.nvml.discovery import discover
    from nvplugin.nvml.real import RealNvml

    nvml = RealNvml()
    nvml.init()
    inventory = discover(nvml)
    steps.append((f"discovery of {len(inventory.gpus)} GPU(s)", rss_mib()))
    previous = 0.0
    for name, value in steps:
        print(f"{name:32s} RSS {value:6.1f} MiB  (+{value - previous:5.1f})")
        previous = value


if __name__ == "__main__":
    main()
