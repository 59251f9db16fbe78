#!/usr/bin/env bash
# nvplugin side by side with NVIDIA's device plugin v0.20.0 and GFD, on the GPU test machine, in
# one call of about 3 minutes (benchmarks/bench_sidebyside.py: one grpcio kubelet stand-in,
# plugins alternating run by run, 5 runs each):
#
#   bash scripts/gpu-sidebyside.sh [OUTDIR]
#
# Needs, carried with the call and never committed: .sidebyside/bin/ with NVIDIA's
# nvidia-device-plugin and gpu-feature-discovery built from tag v0.20.0 (as built, or .xz to fit
# the call's size limit) and the wheels in .whl/ (scripts/gpu-env.sh). Builds nothing.
# Writes to OUTDIR (default $OUT, else /tmp/nvplugin-sidebyside): sidebyside.txt (the table),
# sidebyside.json (every raw sample), machine.txt, sidebyside-logs.tar.gz (every process's output).
#
# Every plugin runs as deployed (default log levels); nvplugin with --metrics-address off, as
# NVIDIA's plugin serves no metrics. NVIDIA's plugin serves only in
# /var/lib/kubelet/device-plugins, so all of them run there (the stand-in refuses a directory a
# live kubelet serves). Rules of that machine: never change MIG mode, clocks, power, compute or
# persistence mode, never reset.
set -u
out=${1:-${OUT:-/tmp/nvplugin-sidebyside}}
mkdir -p "$out"

source scripts/gpu-env.sh || exit 1
# nvplugin (and the bare floor) as deployed: a venv like the production image's.
source scripts/gpu-deployed-venv.sh
py=${NVPLUGIN_PY:-python3}

bin=/tmp/sidebyside-bin
mkdir -p "$bin"
for tool in nvidia-device-plugin gpu-feature-discovery; do
  if [ -f ".sidebyside/bin/$tool" ]; then
    cp ".sidebyside/bin/$tool" "$bin/$tool"
  elif [ -f ".sidebyside/bin/$tool.xz" ]; then
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      ".sidebyside/bin/$tool.xz" "$bin/$tool" || exit 1
  else
    echo "missing .sidebyside/bin/$tool (or $tool.xz): build it from NVIDIA's v0.20.0 and carry .sidebyside/bin" >&2
    exit 1
  fi
  chmod +x "$bin/$tool"
done

gpus=$(nvidia-smi -L | grep -c '^GPU')
{
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC') $(hostname) commit ${NVPLUGIN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  python3 --version
  nproc
  nvidia-smi --query-gpu=index,uuid,name,driver_version,mig.mode.current --format=csv
  "$bin/nvidia-device-plugin" --version
  "$bin/gpu-feature-discovery" --version
  python3 -c 'import grpc, grpclib, uvloop; print("grpcio", grpc.__version__, "grpclib", grpclib.__version__, "uvloop", uvloop.__version__)'
  echo "nvplugin runs under: $py"
} >"$out/machine.txt" 2>&1

logs=/tmp/sidebyside-logs
rm -rf "$logs"
set -o pipefail
timeout -s INT 480 python3 benchmarks/bench_sidebyside.py \
  --dir /var/lib/kubelet/device-plugins --runs 5 --calls 2000 --restarts 10 --idle 30 --burst 10 \
  --plugin nvidia="$bin/nvidia-device-plugin" \
  --plugin nvplugin="$py -m nvplugin run --metrics-address off" \
  --plugin nvplugin+labels="$py -m nvplugin run --metrics-address off --labels --kubeconfig {kubeconfig}" \
  --plugin bare="$py benchmarks/bare_plugin.py --devices $gpus" \
  --oneshot gfd="$bin/gpu-feature-discovery --oneshot --no-timestamp --use-node-feature-api=false --output-file {output}" \
  --oneshot nvplugin="$py -m nvplugin labels --no-timestamp --output-file {output}" \
  --json "$out/sidebyside.json" --logs "$logs" 2>&1 | tee "$out/sidebyside.txt"
status=$?
tar czf "$out/sidebyside-logs.tar.gz" -C /tmp "$(basename "$logs")"
echo "done (exit $status): $(ls "$out")"
exit $status
