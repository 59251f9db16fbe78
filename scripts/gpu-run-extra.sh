#!/usr/bin/env bash
# GPU steps of the capabilities beyond the core agent, run by scripts/gpu-run.sh with its OUTDIR.
out=${1:-${OUT:-/tmp/nvplugin-gpu}}
mkdir -p "$out"
source scripts/gpu-env.sh || exit 1
step() { echo; echo "### $*"; "$@"; echo "(exit $?)"; }

# Issue 6: the labels this node gets, next to what nvidia-smi says (docs/labels.md records both).
step nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader
nvidia-smi | grep -o 'CUDA Version: [0-9.]*'
step python3 -m nvplugin labels --output-file "$out/labels.txt"
cat "$out/labels.txt"

# Issue 4: the real topology (NVLink, PCIe) and GetPreferredAllocation latency on this host.
step python3 benchmarks/bench_placement.py --real
step python3 benchmarks/bench_placement.py

# Issue 5: 60 s with a real CUDA load on the card: no device may turn Unhealthy.
step python3 scripts/gpu_health_soak.py --seconds 60 --json "$out/health_soak.json"
step python3 benchmarks/bench_health.py --e2e --idle-seconds 20

# Issue 6/7: agent RSS with and without labels (labels against the test API server).
step python3 benchmarks/bench_labels.py --nodes 300 --steady 5
step python3 benchmarks/bench_agent.py --real --labels --starts 3 --calls 500 --restarts 10 --idle 10
