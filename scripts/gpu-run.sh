#!/usr/bin/env bash
# Everything that needs a real NVIDIA GPU, in one batched run on the GPU test machine.
#
#   bash scripts/gpu-run.sh [OUTDIR]
#
# The machine has no package index: Python wheels missing there travel in .whl/ (made with
# `pip download --python-version 3.12 ...`, see docs/gpu-testing-runs.md) and are installed into
# /tmp/site. Writes its logs to OUTDIR (default $OUT, else /tmp/nvplugin-gpu).
# Rules of that machine: never change MIG mode, clocks, power, compute or persistence mode, never reset.
set -u
out=${1:-${OUT:-/tmp/nvplugin-gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# Install only the wheels whose module is missing there (never shadow the machine's own).
wheels=()
need() { python3 -c "import $1" 2>/dev/null || wheels+=(.whl/$2); }
need grpclib 'grpclib-*.whl'; need h2 'h2-*.whl'; need hpack 'hpack-*.whl'; need hyperframe 'hyperframe-*.whl'
need betterproto2 'betterproto2-*.whl'; need dateutil 'python_dateutil-*.whl'; need typing_extensions 'typing_extensions-*.whl'
need kubernetes_asyncio 'kubernetes_asyncio-*.whl'; need six 'six-*.whl'; need multidict 'multidict-*.whl'
need watchfiles 'watchfiles-*.whl'; need uvloop 'uvloop-*.whl'; need hypothesis 'hypothesis-*.whl'
need sortedcontainers 'sortedcontainers-*.whl'
if [ ${#wheels[@]} -gt 0 ]; then
  # shellcheck disable=SC2068
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site ${wheels[@]} || exit 1
fi
export PYTHONPATH=$PWD:/tmp/site

{
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC') $(hostname) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
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
  step python3 benchmarks/bench_agent.py --real --starts 10 --calls 3000 --restarts 100 --idle 30
  step python3 benchmarks/bench_agent.py --gpus 8 --starts 10 --calls 3000 --restarts 100 --idle 10
  step python3 benchmarks/soak_restarts.py --restarts 1000
} >"$out/bench-core.txt" 2>&1

# Further capabilities append their GPU steps below (labels, health soak, topology).
if [ -f scripts/gpu-run-extra.sh ]; then
  bash scripts/gpu-run-extra.sh "$out" >"$out/extra.txt" 2>&1
fi
echo "done: $(ls "$out")"
