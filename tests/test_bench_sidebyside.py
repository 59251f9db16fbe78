"""The side-by-side harness (benchmarks/bench_sidebyside.py) measures what it claims to.

Run for real, tiny counts: nvplugin on one fake GPU and the bare grpclib plugin under the
harness's grpcio kubelet stand-in, plus a "reference" plugin that cannot start (as NVIDIA's does
without NVML) and one that never registers. No figure is checked against a number: the test
proves every figure is produced, failures are rows rather than crashes, and the stand-in's own
protobuf wire code agrees with the project's generated messages.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from nvplugin.api import v1beta1 as api

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "benchmarks" / "bench_sidebyside.py"
PYTHON = shlex.quote(sys.executable)
NVPLUGIN = f"{PYTHON} -m nvplugin run --fake-gpus 1 --metrics-address off --log-level warning"
BARE = f"{PYTHON} {shlex.quote(str(ROOT / 'benchmarks' / 'bare_plugin.py'))} --devices 1"
NO_NVML = f"{PYTHON} -c \"import sys; sys.exit('nvml init failed: ERROR_LIBRARY_NOT_FOUND')\""
LABELS = f"{PYTHON} -m nvplugin labels --no-timestamp --output-file {{output}} --fake-gpus"
# Counts small enough for a loaded 2-core machine; the figures are meaningless, their presence is not.
TINY = shlex.split(
    "--runs 2 --warmup-starts 0 --calls 20 --warmup 5 --restarts 2 --idle 0.3 --settle 0.2 --burst 1 "
    "--oneshot-runs 1 --register-timeout 30"
)


def harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_sidebyside", HARNESS)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules:
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    return module


def run_harness(tmp_path: Path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(HARNESS), *args, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text()), done.stdout


def test_every_figure_for_nvplugin_and_bare_and_a_failure_row_for_the_reference(tmp_path: Path) -> None:
    module = harness()
    results, table = run_harness(
        tmp_path,
        *TINY,
        "--plugin",
        f"nvplugin={NVPLUGIN}",
        "--plugin",
        f"bare={BARE}",
        "--plugin",
        f"nvidia={NO_NVML}",
        "--oneshot",
        f"gfd={LABELS} 2",
        "--oneshot",
        f"nvplugin={LABELS} 1",
    )
    for name in ("nvplugin", "bare"):
        assert set(results["summary"][name]) == {key for key, _, _ in module.FIGURES}, name
        for run in results["runs"][name]:
            assert "error" not in run, run
            assert len(run["allocate_us"]) == len(run["preferred_us"]) == 20
            assert len(run["reregister_ms"]) == 2
            assert run["socket_removed"] and run["stream_end"] != module.STREAM_OPEN
        assert results["idle"][name]["burst_reregistered"] == 1
    assert results["summary"]["nvidia"] == {}
    assert "ERROR_LIBRARY_NOT_FOUND" in results["failures"]["nvidia run1"]
    assert len(results["runs"]["nvidia"]) == 1  # a plugin that never worked is not tried again
    assert "FAILED nvidia run1: exited with code 1 before Register" in table
    by_target = {t["target"]: t for t in results["targets"]}
    assert by_target["start -> Register <= 3x NVIDIA"]["result"] == "n/a (no reference figure)"
    assert by_target["peak RSS <= 45 MiB (labels off)"]["result"] in ("PASS", "FAIL")
    for name in ("gfd", "nvplugin"):
        assert set(results["oneshot_summary"][name]) == {key for key, _, _ in module.ONESHOT_FIGURES}
    assert results["label_diffs"]["nvplugin"]["differ"]["nvidia.com/gpu.count"] == ["2", "1"]
    assert "differ: nvidia.com/gpu.count: gfd=2 nvplugin=1" in table


def test_a_plugin_that_never_registers_is_a_failure_row_and_is_stopped(tmp_path: Path) -> None:
    sleeper = f"{PYTHON} -c 'import time; time.sleep(60)'"
    results, table = run_harness(
        tmp_path, "--runs", "1", "--idle", "0", "--register-timeout", "1", "--plugin", f"sleeper={sleeper}"
    )
    (run,) = results["runs"]["sleeper"]
    assert run["error"] == "no Register within 1 s"
    assert run["terminated"].startswith("exited with code -15")
    assert "FAILED sleeper warmup: no Register within 1 s" in table


def test_wire_code_agrees_with_the_generated_messages() -> None:
    module = harness()
    ids = ["GPU-a", "GPU-b"]
    allocate = api.AllocateRequest().parse(module.allocate_request(ids))
    assert allocate.container_requests[0].devices_ids == ids
    preferred = api.PreferredAllocationRequest().parse(module.preferred_request(ids, 300))
    assert preferred.container_requests[0].available_deviceIDs == ids
    assert preferred.container_requests[0].allocation_size == 300
    listed = api.ListAndWatchResponse(
        devices=[
            api.Device(id="GPU-a", health="Healthy"),
            api.Device(id="GPU-b", health="Unhealthy", topology=api.TopologyInfo(nodes=[api.NumaNode(id=1)])),
        ]
    )
    assert module.list_devices(bytes(listed)) == [("GPU-a", "Healthy"), ("GPU-b", "Unhealthy")]
    register = module.parse_message(
        bytes(api.RegisterRequest(version="v1beta1", endpoint="x.sock", resource_name="nvidia.com/gpu"))
    )
    assert [module._text(register, n) for n in (1, 2, 3)] == ["v1beta1", "x.sock", "nvidia.com/gpu"]


@pytest.mark.parametrize("text", ["nvidia", "=cmd", "name=", "name=A=1"])
def test_bad_plugin_arguments_say_what_was_expected(text: str) -> None:
    done = subprocess.run(
        [sys.executable, str(HARNESS), "--plugin", text], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "NAME=COMMAND" in done.stderr or "no command after the environment" in done.stderr
