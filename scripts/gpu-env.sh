# Sourced by the GPU run scripts: make the Python packages the GPU machine lacks importable.
# That machine has no package index: wheels travel in .whl/ (see docs/gpu-runs/README.md).
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD:/tmp/site
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
  python3 -m pip install -q --no-index --no-deps --no-cache-dir --target /tmp/site ${wheels[@]} || exit 1
fi
# Byte-compile once, as an installed package is: start-up figures must not include compiling.
python3 -m compileall -q -j 0 /tmp/site nvplugin benchmarks >/dev/null 2>&1
export PYTHONPATH=$PWD:/tmp/site
