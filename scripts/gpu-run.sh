#!/usr/bin/env bash
# Everything that needs a real NVIDIA GPU, in one call on the GPU test machine (see
# docs/gpu-runs/README.md):
#
#   bash scripts/gpu-run.sh [STAGE...]     # default: every stage; OUTDIR is $OUT
#
# Stages: machine (what the machine is), nvml (the real-NVML tests: discovery, labels, doctor,
# events, topology), cdi (nvplugin's CDI spec next to nvidia-ctk's), mps (two CUDA processes
# given Allocate's env, clients of the MPS daemon the agent runs), doctor (nvplugin doctor),
# labels (nvplugin labels next to nvidia-smi), sidebyside (scripts/gpu-sidebyside.sh: nvplugin,
# NVIDIA's plugin and GFD, a bare grpclib plugin, under one kubelet stand-in).
#
# Carried with the call, never committed: .whl/ (wheels the machine lacks, scripts/gpu-env.sh),
# .whl-run/ (nvplugin's runtime wheels, for a venv like the production image's:
# scripts/gpu-deployed-venv.sh) and .sidebyside/bin/ (NVIDIA's binaries built from their tags,
# .xz). Builds nothing.
# Rules of that machine: never change MIG mode, clocks, power limit, compute or persistence mode,
# never reset the GPU.
set -u
# Everything is written under a work directory, then packed into one archive in $OUT (the call
# brings back at most 8 files).
out=/tmp/nvplugin-gpu
rm -rf "$out"; mkdir -p "$out"
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(machine nvml labels doctor cdi mps startup sidebyside)
source scripts/gpu-env.sh || exit 1
export NVPLUGIN_COMMIT=${NVPLUGIN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
step() { echo; echo "### $*"; "$@"; echo "(exit $?)"; }
unxz_tool() {  # .sidebyside/bin/NAME(.xz) -> /tmp/sidebyside-bin/NAME
  mkdir -p /tmp/sidebyside-bin
  if [ -f ".sidebyside/bin/$1.xz" ] && [ ! -x "/tmp/sidebyside-bin/$1" ]; then
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      ".sidebyside/bin/$1.xz" "/tmp/sidebyside-bin/$1" && chmod +x "/tmp/sidebyside-bin/$1"
  fi
  [ -x "/tmp/sidebyside-bin/$1" ]
}

for stage in "${stages[@]}"; do
  case $stage in
  machine)
    {
      echo "## $(date -u '+%Y-%m-%d %H:%M UTC') $(hostname) commit $NVPLUGIN_COMMIT"
      python3 --version; nproc; uname -r
      nvidia-smi
      nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version,pci.bus_id,compute_cap,mig.mode.current,persistence_mode,compute_mode --format=csv
      nvidia-smi -q | grep -iA6 'fabric' | head -20
      nvidia-smi topo -m
      ls -l /dev/nvidia* /dev/nvidia-caps 2>&1
      ls /usr/local/nvidia/bin 2>&1; command -v nvidia-cuda-mps-control nvidia-smi
      ldconfig -p | grep -E 'libnvidia-ml|libcuda\.so' | head
    } >"$out/machine.txt" 2>&1 ;;
  nvml)
    { step python3 -m pytest -p no:cacheprovider -m nvml -v -rs tests; } >"$out/nvml-tests.txt" 2>&1 ;;
  labels)
    {
      step nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader
      step python3 -m nvplugin labels --output-file "$out/labels.txt"
    } >"$out/labels-run.txt" 2>&1 ;;
  doctor)
    {
      step python3 -m nvplugin doctor --kubelet-socket /tmp/nvp-doctor/kubelet.sock
      step python3 -m nvplugin doctor --output json --kubelet-socket /tmp/nvp-doctor/kubelet.sock
    } >"$out/doctor.txt" 2>&1 ;;
  cdi)
    {
      step python3 scripts/cdi_compare.py --output "$out/cdi-ours.json"
      if unxz_tool nvidia-ctk; then
        step /tmp/sidebyside-bin/nvidia-ctk --version
        step /tmp/sidebyside-bin/nvidia-ctk cdi generate --vendor k8s.device-plugin.nvidia.com --class gpu \
          --nvidia-cdi-hook-path /usr/bin/nvidia-ctk --no-all-device --format json --output "$out/cdi-nvidia.json"
        step python3 scripts/cdi_compare.py --nvidia-spec "$out/cdi-nvidia.json"
      fi
      step python3 benchmarks/bench_cdi.py
    } >"$out/cdi.txt" 2>&1 ;;
  mps)
    { step python3 scripts/gpu_mps_check.py --out "$out"; } >"$out/mps.txt" 2>&1 ;;
  startup)
    {
      source scripts/gpu-deployed-venv.sh
      step python3 benchmarks/startup_breakdown.py --runs 10
      [ -n "$NVPLUGIN_PY" ] && step python3 benchmarks/startup_breakdown.py --runs 10 --python "$NVPLUGIN_PY"
      [ -n "$NVPLUGIN_PY" ] && step "$NVPLUGIN_PY" -X importtime -c 'import nvplugin.cli, nvplugin.agent, pynvml' 2>&1 | sort -t'|' -k2 -n | tail -25
    } >"$out/startup.txt" 2>&1 ;;
  sidebyside)
    step timeout 500 bash scripts/gpu-sidebyside.sh "$out/sidebyside" >"$out/sidebyside-run.txt" 2>&1 ;;
  *) echo "unknown stage $stage" >&2 ;;
  esac
done
mkdir -p "${OUT:-/tmp}"; tar czf "${OUT:-/tmp}/gpu-run.tar.gz" -C "$out" .
for f in sidebyside/sidebyside.txt nvml-tests.txt; do
  [ -f "$out/$f" ] && { echo "===== $f (tail)"; tail -n 60 "$out/$f"; }
done
echo "done: $(ls "$out")"
