"""`nvplugin labels` on the fake backend (and, marked nvml, on a real GPU against nvidia-smi)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nvplugin.commands.labels import compute_labels

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys; from nvplugin.cli import main\n"
        "try:\n    main(sys.argv[1:])\n"
        "finally:\n"
        "    assert 'kubernetes_asyncio' not in sys.modules, 'labels must not import the kube client'"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "labels", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def parse(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_fake_gpus_labels_and_feature_file(tmp_path: Path) -> None:
    machine = tmp_path / "product_name"
    machine.write_text("PowerEdge XE9680\n")
    out = tmp_path / "features.d" / "nvplugin"
    out.parent.mkdir()
    result = run_cli("--fake-gpus", "8", "--machine-type-file", str(machine), "--output-file", str(out))
    assert result.returncode == 0, result.stderr
    labels = parse(result.stdout)
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert labels["nvidia.com/gpu.family"] == "hopper"
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert labels["nvidia.com/cuda.driver-version.full"] == "580.159.04"
    assert labels["nvidia.com/cuda.runtime-version.full"] == "13.0"
    assert labels["nvidia.com/gpu.machine"] == "PowerEdge-XE9680"
    assert labels["nvidia.com/gfd.timestamp"].isdigit()
    assert out.read_text() == result.stdout
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind


def test_layout_file_no_timestamp_and_mig_strategy(tmp_path: Path) -> None:
    layout = tmp_path / "layout.json"
    layout.write_text(
        json.dumps(
            {
                "driverVersion": "550.54.15",
                "cudaDriverVersion": 12040,
                "gpu": {"name": "NVIDIA A100-SXM4-40GB", "memoryMiB": 40960, "computeCapability": "8.0"},
                "count": 2,
            }
        )
    )
    result = run_cli(
        "--fake-gpus", str(layout), "--no-timestamp", "--mig-strategy", "mixed",
        "--machine-type-file", str(tmp_path / "absent"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    labels = parse(result.stdout)
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB"
    assert labels["nvidia.com/gpu.family"] == "ampere"
    assert labels["nvidia.com/cuda.driver.rev"] == "15"
    assert labels["nvidia.com/cuda.runtime-version.full"] == "12.4"
    assert labels["nvidia.com/mig.strategy"] == "mixed"
    assert labels["nvidia.com/gpu.machine"] == "unknown"
    assert "nvidia.com/gfd.timestamp" not in labels
    assert "cannot read" not in result.stderr or "machine type" in result.stderr


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    result = run_cli("--fake-gpus", "99")
    assert result.returncode == 2
    assert "--fake-gpus: expected a GPU count from 0 to 64, got 99" in result.stderr
    result = run_cli("--fake-gpus", "4", "--mig-strategy", "bogus")
    assert result.returncode == 2 and "--mig-strategy: expected one of none, single, mixed" in result.stderr
    missing_lib = tmp_path / "nolib.json"
    missing_lib.write_text(json.dumps({"count": 1, "faults": {"library": "missing"}}))
    result = run_cli("--fake-gpus", str(missing_lib))
    assert result.returncode == 1
    assert "cannot read the GPUs" in result.stderr and "libnvidia-ml.so.1" in result.stderr
    result = run_cli("--fake-gpus", "1", "--output-file", str(tmp_path / "no" / "such" / "dir"))
    assert result.returncode == 1 and "cannot write" in result.stderr


def test_failed_gpu_is_reported_and_others_labelled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps({"count": 3, "faults": {"devices": {"1": {"device_name": "gpu-lost"}}}}))
    warnings = io.StringIO()
    labels = compute_labels({"fake_gpus": str(layout)}, {}, timestamp=False, warn=warnings)
    assert labels["nvidia.com/gpu.count"] == "2"
    assert "GPU 1 left out" in warnings.getvalue()


def test_the_config_file_shapes_the_labels(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n"
        "      - name: nvidia.com/gpu\n        replicas: 4\n"
    )
    for args, env in (
        (("--config-file", str(config)), {}),
        ((), {"CONFIG_FILE": str(config)}),
    ):
        result = run_cli("--fake-gpus", "2", "--no-timestamp", *args, env=env)
        assert result.returncode == 0, result.stderr
        labels = parse(result.stdout)
        assert labels["nvidia.com/gpu.replicas"] == "4"
        assert labels["nvidia.com/gpu.sharing-strategy"] == "time-slicing"
        assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3-SHARED"


def test_zero_gpus_gives_what_gfd_writes_without_devices() -> None:
    labels = compute_labels({"fake_gpus": "0"}, {}, timestamp=False)
    assert labels == {"nvidia.com/vgpu.present": "false"}


# --- on a real GPU


def _real_gpu_present() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception:
        return False
    return True


@pytest.mark.nvml
@pytest.mark.skipif(not _real_gpu_present(), reason="no NVIDIA GPU/driver here")
def test_real_gpu_labels_agree_with_nvidia_smi(tmp_path: Path) -> None:
    smi = shutil.which("nvidia-smi")
    assert smi, "nvidia-smi not found next to the driver"
    query = subprocess.run(
        [smi, "--query-gpu=name,memory.total,driver_version,compute_cap", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [[c.strip() for c in line.split(",")] for line in query.stdout.strip().splitlines()]
    name, memory_mib, driver, compute_cap = rows[0]
    header = subprocess.run([smi], capture_output=True, text=True, check=True).stdout
    cuda = header.split("CUDA Version:")[1].split()[0]  # e.g. "13.0"

    result = run_cli("--machine-type-file", "/sys/class/dmi/id/product_name")
    assert result.returncode == 0, result.stderr
    labels = parse(result.stdout)
    (tmp_path / "labels.txt").write_text(result.stdout)
    print(result.stdout)  # recorded in docs/labels.md by the lead's GPU run
    assert labels["nvidia.com/gpu.count"] == str(len(rows))
    assert labels["nvidia.com/gpu.product"] == "-".join(name.split())
    assert labels["nvidia.com/gpu.memory"] == memory_mib
    major, minor = compute_cap.split(".")
    assert labels["nvidia.com/gpu.compute.major"] == major
    assert labels["nvidia.com/gpu.compute.minor"] == minor
    assert labels["nvidia.com/cuda.driver-version.full"] == driver
    assert labels["nvidia.com/cuda.runtime-version.full"] == cuda
    assert labels["nvidia.com/gpu.present"] == "true"
    virtualization = subprocess.run(
        [smi, "--query-gpu=virtualization_mode", "--format=csv,noheader"], capture_output=True, text=True
    )
    if virtualization.returncode == 0:
        guest = "VGPU" in {v.strip().upper() for v in virtualization.stdout.splitlines()}
        assert labels["nvidia.com/vgpu.present"] == ("true" if guest else "false")
    if name in ("NVIDIA H100 80GB HBM3", "NVIDIA H200"):
        assert labels["nvidia.com/gpu.product"] == "-".join(name.split())
        assert labels["nvidia.com/gpu.family"] == "hopper"
        assert (major, minor) == ("9", "0")
        assert labels["nvidia.com/mig.capable"] == "true"
        assert labels["nvidia.com/gpu.mode"] == "compute"
        assert labels["nvidia.com/mps.capable"] == "false"
