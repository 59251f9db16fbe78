"""The agent process with --labels: node labels and per-node config through the test API server,
while the kubelet side keeps serving."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nvplugin.commands.labels import compute_labels
from nvplugin.configload import ConfigSource, load
from nvplugin.core.labels import TIMESTAMP_LABEL
from nvplugin.nvml import open_backend
from nvplugin.simulate.kubelet import KubeletSimulator
from nvplugin.testing.apiserver import FakeApiServer
from tests.conftest import eventually, nvplugin_process, running_agent, stop_process

ROOT = Path(__file__).resolve().parent.parent
NODE = "gpu-node-7"

pytestmark = pytest.mark.anyio


def spawn(plugin_dir: Path, kubeconfig: Path, *args: str) -> subprocess.Popen[str]:
    return nvplugin_process(
        "run", "--fake-gpus", "2", "--kubelet-socket", str(plugin_dir / "kubelet.sock"),
        "--labels", "--kubeconfig", str(kubeconfig), *args,
        env={"NODE_NAME": NODE},
    )  # fmt: skip


async def finish(proc: subprocess.Popen[str]) -> str:
    code, _, err = await stop_process(proc)
    assert code == 0, err
    return err


def label_flags(plugin_dir: Path, kubeconfig: Path, **more: object) -> dict[str, object]:
    """The flags of an in-process agent that labels NODE on fake GPUs (2 unless `more` says)."""
    return {
        "fake_gpus": "2",
        "kubelet_socket": str(plugin_dir / "kubelet.sock"),
        "labels": "true",
        "node_name": NODE,
        "kubeconfig": str(kubeconfig),
        "metrics_address": "off",
        **more,
    }


async def test_labels_applied_and_kubelet_served_through_an_api_outage(
    plugin_dir: Path, tmp_path: Path
) -> None:
    api = FakeApiServer(bookmark_interval=0.2)
    async with api, KubeletSimulator(plugin_dir) as kubelet:
        api.add_node(NODE)
        proc = spawn(plugin_dir, api.write_kubeconfig(tmp_path / "kubeconfig"))
        try:
            plugin = await kubelet.wait_registered("nvidia.com/gpu", timeout=15)
            await eventually(
                lambda: api.labels(NODE).get("nvidia.com/gpu.product") == "NVIDIA-H100-80GB-HBM3"
            )
            labels = api.labels(NODE)
            assert labels["nvidia.com/gpu.count"] == "2" and labels["nvidia.com/gpu.present"] == "true"
            # Someone tampers with a label: repaired.
            api.set_labels(NODE, {"nvidia.com/gpu.count": "7"})
            await eventually(lambda: api.labels(NODE)["nvidia.com/gpu.count"] == "2")
            # The API server goes away: the kubelet side keeps serving.
            await api.stop()
            response = await kubelet.allocate("nvidia.com/gpu", list(plugin.devices)[:1])
            assert response.envs["NVIDIA_VISIBLE_DEVICES"].startswith("GPU-")
            assert proc.poll() is None
        finally:
            await finish(proc)


async def test_node_label_switches_the_config(plugin_dir: Path, tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "default").write_text("version: v1\n")
    (configs / "shared4").write_text(
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - name: nvidia.com/gpu\n        replicas: 4\n"
    )
    api = FakeApiServer(bookmark_interval=0.2)
    async with api, KubeletSimulator(plugin_dir) as kubelet:
        api.add_node(NODE)
        proc = spawn(plugin_dir, api.write_kubeconfig(tmp_path / "kubeconfig"), "--config-dir", str(configs))
        try:
            plugin = await kubelet.wait_registered("nvidia.com/gpu", timeout=15)
            assert plugin.capacity == 2
            await eventually(lambda: "nvidia.com/gpu.product" in api.labels(NODE))
            api.set_labels(NODE, {"nvidia.com/device-plugin.config": "shared4"})
            plugin = await kubelet.wait_registered("nvidia.com/gpu", count=2, timeout=15)
            assert plugin.capacity == 8
            await eventually(lambda: api.labels(NODE).get("nvidia.com/gpu.replicas") == "4")
            # An unknown name is reported and the current config kept: the next good name
            # is the only other switch.
            api.set_labels(NODE, {"nvidia.com/device-plugin.config": "nope"})
            api.set_labels(NODE, {"nvidia.com/device-plugin.config": "default"})
            plugin = await kubelet.wait_registered("nvidia.com/gpu", count=3, timeout=15)
            assert plugin.capacity == 2
            assert len(kubelet.registrations) == 3
        finally:
            err = await finish(proc)
    assert "names no config" in err


async def test_the_labels_command_prints_what_the_agent_writes(plugin_dir: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n"
        "      - name: nvidia.com/gpu\n        replicas: 4\n"
    )
    api = FakeApiServer(bookmark_interval=0.2)
    async with api, KubeletSimulator(plugin_dir):
        api.add_node(NODE)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        flags = label_flags(plugin_dir, kubeconfig, config_file=str(config_file))
        config = load(flags, {}).config
        async with running_agent(config, open_backend(config), config_source=ConfigSource(flags)):
            await eventually(lambda: "nvidia.com/gpu.product" in api.labels(NODE), within=15)
            written = {
                k: v
                for k, v in api.labels(NODE).items()
                if k.startswith("nvidia.com/") and k != TIMESTAMP_LABEL
            }
    printed = compute_labels(flags, {}, timestamp=False)
    assert written == printed
    assert printed["nvidia.com/gpu.replicas"] == "4"
    assert printed["nvidia.com/gpu.product"].endswith("-SHARED")


async def test_nvml_failing_never_deletes_the_gpu_labels(plugin_dir: Path, tmp_path: Path) -> None:
    """A node whose NVML fails (driver upgrade, a bad mount) keeps nvidia.com/gpu.present and
    its other GPU labels: DaemonSets select nodes by them, and the GPUs are unknown, not gone."""
    layout = tmp_path / "broken.json"
    layout.write_text(json.dumps({"count": 2, "faults": {"library": "missing"}}))
    before = {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": "2", "nvidia.com/gpu.product": "X"}
    api = FakeApiServer(bookmark_interval=0.2)
    async with api, KubeletSimulator(plugin_dir):
        api.add_node(NODE, before)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        flags = label_flags(plugin_dir, kubeconfig, fake_gpus=str(layout), fail_on_init_error="false")
        config = load(flags, {}).config
        async with running_agent(config, open_backend(config)):
            # The one write the agent may make: the timestamp.
            await eventually(lambda: TIMESTAMP_LABEL in api.labels(NODE), within=15)
            assert {k: v for k, v in api.labels(NODE).items() if k in before} == before


def test_kubernetes_client_is_not_imported_without_labels() -> None:
    code = (
        "import sys, nvplugin.cli, nvplugin.agent, nvplugin.nvml.fake, nvplugin.plugin.server;"
        "print(any(m.startswith(('kubernetes_asyncio', 'aiohttp')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
