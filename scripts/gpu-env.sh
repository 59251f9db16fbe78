# Sourced by the GPU run scripts: make the Python packages the GPU machine lacks importable.
# That machine has no package index: wheels travel in .whl/ (see docs/gpu-runs/README.md).
# Its image already has anyio, grpcio, uvloop, psutil, aiohttp, pyyaml, prometheus-client,
# hypothesis, pytest, nvidia-ml-py, typing-extensions, python-dateutil, six, multidict,
# sortedcontainers, certifi, urllib3 and packaging; it lacks grpclib, h2, hpack, hyperframe,
# betterproto2, kubernetes-asyncio and watchfiles, which .whl/ carries.
export PYTHONUNBUFFERED=1
wheels=()
missing=()
# The wheel for a module the machine lacks (never shadow the machine's own).
need() { python3 -c "import $1" 2>/dev/null || wheels+=(".whl/$2"); }
need grpclib 'grpclib-*.whl'; need h2 'h2-*.whl'; need hpack 'hpack-*.whl'; need hyperframe 'hyperframe-*.whl'
need betterproto2 'betterproto2-*.whl'; need kubernetes_asyncio 'kubernetes_asyncio-*.whl'
need watchfiles 'watchfiles-*.whl'
# betterproto2 needs typing-extensions >= 4.14 and python-dateutil >= 2.9.0.post0: the carried
# wheels replace the machine's only where its own are missing or older.
at_least() {
  python3 -c "import sys; from importlib.metadata import version; from packaging.version import Version as V
sys.exit(V(version('$1')) < V('$2'))" 2>/dev/null || wheels+=(".whl/$3")
}
at_least typing_extensions 4.16 'typing_extensions-*.whl'; at_least python-dateutil 2.9.0.post0 'python_dateutil-*.whl'
# nvplugin needs anyio >= 4.7 (wait_readable for the MPS daemon's pidfd).
at_least anyio 4.7 'anyio-*.whl'
# What the machine is expected to have and nothing carries: say so now rather than fail later.
for module in anyio grpc yaml aiohttp multidict six pynvml prometheus_client; do
  python3 -c "import $module" 2>/dev/null || missing+=("$module")
done
[ ${#missing[@]} -eq 0 ] || echo "gpu-env: missing on this machine and not carried in .whl/: ${missing[*]}" >&2
if [ ${#wheels[@]} -gt 0 ]; then
  # shellcheck disable=SC2068  # the globs must expand
  python3 -m pip install -q --no-index --no-deps --no-cache-dir --target /tmp/site ${wheels[@]} || return 1
fi
# Byte-compile once, as an installed package is: start-up figures must not include compiling.
python3 -m compileall -q -j 0 /tmp/site nvplugin benchmarks >/dev/null 2>&1
export PYTHONPATH=$PWD:/tmp/site
