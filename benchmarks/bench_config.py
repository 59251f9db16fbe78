"""Loading the config: what a normal config costs, and what hostile ones cost before they are refused.

Prints, per YAML loader (libyaml's parser and the pure-Python fallback), time per load (p50/p99,
ms) and the peak memory of one load (tracemalloc), for:
- the corpus's every-v020-key.yaml (a full NVIDIA config) through decode + parse + resolve;
- a config at the 1 MiB size bound (mostly comments);
- refusals: a 1 MiB flat list (stops at the 10,000-value bound), an alias bomb ("billion laughs",
  10^9 values if expanded), 3,000-deep nesting, a 5,000-digit number.

Run: python -m benchmarks.bench_config [--calls N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tracemalloc
from datetime import datetime
from pathlib import Path

from benchmarks.timing import time_calls
from nvplugin.configload.yamlreader import LOADERS, decode_config_text
from nvplugin.core.config import MAX_CONFIG_BYTES, ConfigError, resolve_settings
from nvplugin.core.configfile import parse_config_file

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "nvidia-configs"


def billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join([f'*{chr(96 + i)}'] * 10)}]")
    return "\n".join(lines) + "\n"


INPUTS = {
    "every-v020-key.yaml (valid)": (CORPUS / "every-v020-key.yaml").read_text(),
    "1 MiB with comments (valid)": ("# " + "x" * 97 + "\n") * (MAX_CONFIG_BYTES // 100 - 1) + "version: v1\n",
    "1 MiB flat list (refused)": "- 1\n" * (MAX_CONFIG_BYTES // 4),
    "alias bomb, 10^9 if expanded (refused)": billion_laughs(),
    "3000-deep nesting (refused)": "flags: " + "{a: " * 3000 + "x" + "}" * 3000,
    "5000-digit replicas (refused)": "sharing:\n  mps:\n    resources: [{name: gpu, replicas: "
    + "9" * 5000
    + "}]\n",
}


def load(text: str, loader: type) -> bool:
    try:
        file = parse_config_file(decode_config_text("bench.yaml", text, loader), "bench.yaml")
        resolve_settings({}, {"MPS_ROOT": "/run/nvidia/mps"}, file.values, file.sources)
    except ConfigError:
        return False
    return True


def peak_bytes(text: str, loader: type) -> int:
    tracemalloc.start()
    try:
        load(text, loader)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    print(
        f"# bench_config on {platform.node()} ({platform.python_implementation()} {platform.python_version()}), "
        f"{datetime.now():%Y-%m-%d %H:%M}"
    )
    for loader in LOADERS:
        print(f"\n{loader.__name__}:")
        for label, text in INPUTS.items():
            valid = load(text, loader)
            samples = sorted(time_calls(load, text, loader, calls=args.calls, warmup=3))
            p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
            print(
                f"  {label:<40} {'ok ' if valid else 'err'}  p50 {statistics.median(samples):8.2f} ms  "
                f"p99 {p99:8.2f} ms  peak {peak_bytes(text, loader) / 2**20:6.2f} MiB  ({len(text)} bytes)"
            )


if __name__ == "__main__":
    main()
