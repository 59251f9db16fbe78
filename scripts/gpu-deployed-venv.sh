# Sourced by the GPU run scripts: an environment like the production image's (Dockerfile: a venv
# of the machine's own Python 3.12 holding only nvplugin's runtime dependencies, with uvloop, byte-
# compiled), so start-up and memory are measured as deployed rather than under the machine's
# PyTorch environment (whose interpreter starts with many more packages on its path).
# Needs the runtime wheels in .whl-run/ (carried with the call, never committed: pip download
# --python-version 3.12 --only-binary=:all: of pyproject's dependencies and the `fast` extra).
# Sets NVPLUGIN_PY to the venv's python (empty when it cannot be made: callers fall back).
NVPLUGIN_PY=
base=$(command -v python3.12 || true)
[ -x /usr/bin/python3.12 ] && base=/usr/bin/python3.12
if [ -n "$base" ] && ls .whl-run/*.whl >/dev/null 2>&1; then
  venv=/tmp/nvplugin-venv
  rm -rf "$venv"
  if "$base" -m venv --without-pip "$venv" 2>/dev/null; then
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # The machine's own pip installs the wheels into the venv (no index: only these files).
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl-run/*.whl \
      && echo "$PWD" >"$site/nvplugin-checkout.pth" \
      && "$venv/bin/python" -m compileall -q -j 0 "$site" nvplugin benchmarks >/dev/null 2>&1 \
      && "$venv/bin/python" -c 'import nvplugin.agent, pynvml, uvloop, grpclib' \
      && NVPLUGIN_PY="$venv/bin/python"
  fi
fi
[ -n "$NVPLUGIN_PY" ] || echo "gpu-deployed-venv: no deployed-like venv (python3.12 or .whl-run/ missing)" >&2
export NVPLUGIN_PY
