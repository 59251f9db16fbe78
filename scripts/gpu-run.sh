#!/usr/bin/env bash
# Everything that needs a real NVIDIA GPU, in one batched run on the GPU test machine.
#
#   bash scripts/gpu-run.sh [OUTDIR]
#
# The machine has no package index: Python wheels missing there travel in .whl/ (made with
# `pip download --python-version 3.12 ...`, see docs/gpu-runs/README.md) and are installed into
# /tmp/site. Writes its logs to OUTDIR (default $OUT, else /tmp/nvplugin-gpu).
# Rules of that machine: never change MIG mode, clocks, power, compute or persistence mode, never reset.
set -u
out=${1:-${OUT:-/tmp/nvplugin-gpu}}
mkdir -p "$out"

source scripts/gpu-env.sh || exit 1

{
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC') $(hostname) commit ${NVPLUGIN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  python3 --version
  nvidia-smi
  nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version,pci.bus_id,compute_cap,mig.mode.current --format=csv
  nvidia-smi topo -m
} >"$out/machine.txt" 2>&1

step() { echo; echo "### $*"; "$@"; echo "(exit $?)"; }

{
  step python3 -m pytest -p no:cacheprovider -m nvml -v -s -rs tests
} >"$out/nvml-tests.txt" 2>&1

{
  # The bare grpclib + betterproto2 plugin first: the baseline, same machine, same run.
  step python3 benchmarks/bench_agent.py --bare --starts 10 --calls 3000 --idle 20
  step python3 benchmarks/bench_agent.py --real --starts 10 --calls 3000 --restarts 100 --idle 30
  step python3 benchmarks/bench_agent.py --gpus 8 --starts 10 --calls 3000 --restarts 100 --idle 10
  step python3 benchmarks/soak_restarts.py --restarts 1000
  step python3 benchmarks/bench_placement.py --real
  step python3 benchmarks/nvml_memory.py
} >"$out/bench-core.txt" 2>&1

# The further capabilities' steps (labels, topology, health soak) run separately, within the
# device's 10-minute command limit: bash scripts/gpu-run-extra.sh OUTDIR
echo "done: $(ls "$out")"
