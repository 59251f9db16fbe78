#!/usr/bin/env bash
# GPU steps of further capabilities, run by scripts/gpu-run.sh with its OUTDIR.
out=${1:-${OUT:-/tmp/nvplugin-gpu}}
mkdir -p "$out"

# Issue 6: the labels this node gets, next to what nvidia-smi says (docs/labels.md records both).
echo "### labels (issue 6)"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader
nvidia-smi | grep -o 'CUDA Version: [0-9.]*'
if python3 -m nvplugin labels --help >/dev/null 2>&1; then
  python3 -m nvplugin labels --output-file "$out/labels.txt"
else
  python3 -m nvplugin.commands.labels labels --output-file "$out/labels.txt"
fi
echo "(exit $?)"
