"""GFD's ways of writing labels, honoured by `nvplugin run`: --oneshot (label once, exit),
--output-file (an NFD features file), --sleep-interval (relabel and refresh the timestamp), and
the Kubernetes client's --kube-api-qps / --kube-api-burst."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from nvplugin.core.labels import TIMESTAMP_LABEL
from nvplugin.k8s.client import RateLimit
from nvplugin.simulate.kubelet import KubeletSimulator
from nvplugin.testing.apiserver import FakeApiServer
from tests.conftest import eventually, nvplugin_process, stop_process

pytestmark = pytest.mark.anyio
NODE = "gpu-node-3"


def parse(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_oneshot_writes_the_features_file_once_and_exits(tmp_path: Path) -> None:
    out = tmp_path / "gfd"
    proc = nvplugin_process("run", "--fake-gpus", "2", "--oneshot", "--output-file", str(out))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    labels = parse(out.read_text())
    assert labels["nvidia.com/gpu.count"] == "2" and labels[TIMESTAMP_LABEL].isdigit()
    assert [p.name for p in tmp_path.iterdir()] == ["gfd"]  # no temporary file left behind


async def test_oneshot_with_labels_writes_the_node_and_exits(tmp_path: Path) -> None:
    api = FakeApiServer()
    async with api:
        api.add_node(NODE)
        proc = nvplugin_process(
            "run", "--fake-gpus", "2", "--oneshot", "--labels", "--node-name", NODE,
            "--kubeconfig", str(api.write_kubeconfig(tmp_path / "kubeconfig")),
        )  # fmt: skip
        _, err = await anyio.to_thread.run_sync(proc.communicate)
        assert proc.returncode == 0, err
        assert api.labels(NODE)["nvidia.com/gpu.count"] == "2"


async def test_the_agent_keeps_the_features_file_and_relabels_every_period(
    plugin_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "gfd"
    async with KubeletSimulator(plugin_dir) as kubelet:
        proc = nvplugin_process(
            "run", "--fake-gpus", "2", "--kubelet-socket", str(plugin_dir / "kubelet.sock"),
            "--output-file", str(out), "--sleep-interval", "1s",
        )  # fmt: skip
        try:
            await kubelet.wait_registered("nvidia.com/gpu", timeout=15)
            await eventually(out.exists, within=15, what="the features file")
            first = parse(out.read_text())
            assert first["nvidia.com/gpu.count"] == "2"
            # The next period writes it again with a later timestamp.
            await eventually(
                lambda: parse(out.read_text()).get(TIMESTAMP_LABEL, "0") > first[TIMESTAMP_LABEL],
                within=15,
                what="a refreshed timestamp",
            )
        finally:
            code, _, err = await stop_process(proc)
    assert code == 0, err


async def test_the_relabel_period_refreshes_the_node_timestamp(plugin_dir: Path, tmp_path: Path) -> None:
    api = FakeApiServer(bookmark_interval=0.2)
    async with api, KubeletSimulator(plugin_dir) as kubelet:
        api.add_node(NODE)
        proc = nvplugin_process(
            "run", "--fake-gpus", "1", "--kubelet-socket", str(plugin_dir / "kubelet.sock"),
            "--labels", "--node-name", NODE, "--sleep-interval", "1s",
            "--kubeconfig", str(api.write_kubeconfig(tmp_path / "kubeconfig")),
        )  # fmt: skip
        try:
            await kubelet.wait_registered("nvidia.com/gpu", timeout=15)
            await eventually(lambda: TIMESTAMP_LABEL in api.labels(NODE), within=15)
            first = api.labels(NODE)[TIMESTAMP_LABEL]
            await eventually(lambda: api.labels(NODE)[TIMESTAMP_LABEL] > first, within=15)
        finally:
            code, _, err = await stop_process(proc)
    assert code == 0, err


async def test_the_api_rate_limit_is_a_token_bucket() -> None:
    now = [100.0]
    limit = RateLimit(qps=10.0, burst=3, clock=lambda: now[0])
    for _ in range(3):  # the burst goes through at once
        with anyio.fail_after(1):
            await limit.take()
    with anyio.move_on_after(0.2) as waiting:  # the clock stands still: no token comes
        await limit.take()
    assert waiting.cancelled_caught
    now[0] += 0.1  # a tenth of a second at 10 a second: one token
    with anyio.fail_after(1):
        await limit.take()
