"""The label reconciler, unmodified (real kubernetes_asyncio client, kubeconfig loader and
HTTP), against the real test API server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from nvplugin.core.labels import TIMESTAMP_LABEL
from nvplugin.k8s.reconciler import NodeLabelReconciler, run_reconciler
from nvplugin.k8s.retry import Backoff, RetryPolicy
from nvplugin.observability import Metrics
from nvplugin.testing.apiserver import FakeApiServer, Fault
from tests.conftest import eventually

NODE = "gpu-node-1"
DESIRED = {
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    "nvidia.com/gpu.count": "8",
    "nvidia.com/gpu.family": "hopper",
    "nvidia.com/gpu.present": "true",
}
FAST = RetryPolicy(backoff=Backoff(base=0.05, cap=0.2))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer(bookmark_interval=0.2)
    async with server:
        server.add_node(NODE, {"nvidia.com/device-plugin.config": "a"})
        yield server


async def synced(rec: NodeLabelReconciler, within: float = 5.0) -> None:
    with anyio.fail_after(within):
        await rec.wait_synced()


@contextlib.asynccontextmanager
async def running(rec: NodeLabelReconciler) -> AsyncIterator[NodeLabelReconciler]:
    """`rec.run()` in a task group; cancelled on exit. run() must never end by itself."""

    async def forever() -> None:
        await rec.run()
        raise AssertionError("run() must never end by itself")

    async with anyio.create_task_group() as tg:
        tg.start_soon(forever)
        yield rec
        tg.cancel_scope.cancel()


def reconciling(
    api: FakeApiServer, tmp_path: Path, **options: Any
) -> contextlib.AbstractAsyncContextManager[NodeLabelReconciler]:
    """A running reconciler with the kubeconfig of the test server."""
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    options.setdefault("retry", FAST)
    options.setdefault("rng", random.Random(1))
    return running(NodeLabelReconciler(NODE, DESIRED, kubeconfig=str(kubeconfig), **options))


@pytest.mark.anyio
async def test_labels_applied_on_start_with_one_patch(api: FakeApiServer, tmp_path: Path) -> None:
    async with reconciling(api, tmp_path) as rec:
        await synced(rec)
        labels = api.labels(NODE)
        assert {k: labels[k] for k in DESIRED} == DESIRED
        assert labels["nvidia.com/device-plugin.config"] == "a"  # not ours: untouched
        assert labels[TIMESTAMP_LABEL].isdigit()
        await eventually(lambda: api.open_watches(NODE) == 1)
        assert api.count("patch", NODE) == 1
        assert api.count("list", NODE) == 1
        assert api.count("watch", NODE) == 1


@pytest.mark.anyio
async def test_no_writes_across_many_events_that_change_nothing(api: FakeApiServer, tmp_path: Path) -> None:
    async with reconciling(api, tmp_path) as rec:
        await synced(rec)
        await eventually(lambda: api.open_watches(NODE) == 1)
        patches = api.count("patch", NODE)
        stamp = api.labels(NODE)[TIMESTAMP_LABEL]
        for i in range(200):
            api.touch(NODE)  # kubelet heartbeats
            if i % 20 == 0:
                api.set_labels(NODE, {"example.com/other": str(i)})  # someone else's labels
            await anyio.lowlevel.checkpoint()
        # Bookmarks arrive too; then a change of our own: once it is written, everything before
        # it has been seen, and it is the only patch.
        bookmarks = api.bookmarks_sent
        await eventually(lambda: api.bookmarks_sent > bookmarks)
        assert api.count("patch", NODE) == patches
        assert api.labels(NODE)[TIMESTAMP_LABEL] == stamp
        assert api.count("watch", NODE) == 1


@pytest.mark.anyio
async def test_tampered_label_repaired(api: FakeApiServer, tmp_path: Path) -> None:
    async with reconciling(api, tmp_path) as rec:
        await synced(rec)
        api.set_labels(NODE, {"nvidia.com/gpu.product": "tampered", "nvidia.com/gpu.count": None})
        await eventually(
            lambda: api.labels(NODE).get("nvidia.com/gpu.product") == DESIRED["nvidia.com/gpu.product"]
        )
        await eventually(lambda: api.labels(NODE).get("nvidia.com/gpu.count") == "8")
        assert api.count("patch", NODE) == 2


@pytest.mark.anyio
async def test_stale_owned_label_removed_foreign_kept(api: FakeApiServer, tmp_path: Path) -> None:
    api.set_labels(
        NODE,
        {
            "nvidia.com/gpu.memory": "40960",  # ours from an earlier run, no longer wanted
            "nvidia.com/mig-1g.10gb.count": "7",
            "nvidia.com/gpu.deploy.dcgm": "true",  # the GPU operator's
        },
    )
    async with reconciling(api, tmp_path) as rec:
        await synced(rec)
        labels = api.labels(NODE)
        assert "nvidia.com/gpu.memory" not in labels
        assert "nvidia.com/mig-1g.10gb.count" not in labels
        assert labels["nvidia.com/gpu.deploy.dcgm"] == "true"
        # a desired label dropped later is deleted too, with a new timestamp
        smaller = dict(DESIRED)
        del smaller["nvidia.com/gpu.family"]
        rec.set_desired(smaller)
        await eventually(lambda: "nvidia.com/gpu.family" not in api.labels(NODE))
        assert api.count("patch", NODE) == 2


@pytest.mark.anyio
async def test_api_outage_does_not_stop_the_caller(api: FakeApiServer, tmp_path: Path) -> None:
    ticks = 0

    async def kubelet_side() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(kubelet_side)
        async with reconciling(api, tmp_path) as rec:
            await synced(rec)
            await api.stop()  # the API server goes away, watches drop
            rec.set_desired({**DESIRED, "nvidia.com/gpu.count": "7"})
            before = ticks
            await eventually(lambda: rec.stats.errors > 0)
            await eventually(lambda: ticks - before > 30)  # the loop kept running the caller's work
            assert not rec.in_sync
            await api.start()  # back on the same port: the change lands
            await eventually(lambda: api.labels(NODE).get("nvidia.com/gpu.count") == "7", 10)
            await eventually(lambda: api.open_watches(NODE) == 1)
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_watch_410_relists_and_resumes(api: FakeApiServer, tmp_path: Path) -> None:
    async with reconciling(api, tmp_path, watch_timeout=(1, 1)) as rec:
        await synced(rec)
        await eventually(lambda: api.open_watches(NODE) == 1)
        # the watch drops, the node changes meanwhile and the server compacts its history: the
        # resumed watch asks for a version the server has forgotten
        lists = api.count("list", NODE)
        await api.stop()
        api.touch(NODE)
        api.compact()
        await api.start()
        await eventually(lambda: rec.stats.relists_410 >= 1, 10)
        await eventually(lambda: api.count("list", NODE) > lists)
        api.set_labels(NODE, {"nvidia.com/gpu.family": "tampered"})
        await eventually(lambda: api.labels(NODE).get("nvidia.com/gpu.family") == "hopper", 10)


@pytest.mark.anyio
async def test_429_honours_retry_after(api: FakeApiServer, tmp_path: Path) -> None:
    api.inject(Fault("patch", 429, times=1, retry_after=1, node=NODE))
    started = time.monotonic()
    async with reconciling(api, tmp_path) as rec:
        await synced(rec)
        assert time.monotonic() - started >= 1.0
        assert rec.stats.throttled == 1
        assert api.count("patch", NODE) == 2


@pytest.mark.anyio
async def test_500_and_409_are_retried(api: FakeApiServer, tmp_path: Path) -> None:
    api.inject(Fault("list", 500, times=2, node=NODE))
    api.inject(Fault("patch", 409, times=1, node=NODE))
    metrics = Metrics()
    async with reconciling(api, tmp_path, metrics=metrics) as rec:
        await synced(rec)
        assert api.count("list", NODE) == 3
        assert api.count("patch", NODE) == 2
        assert rec.stats.failed_patches == 1
        assert metrics.value("api_errors", "list_node") == 2
        assert metrics.value("api_retries", "list_node", "server_error") == 2
        assert metrics.value("api_retries", "patch_node", "conflict") == 1
        assert metrics.value("label_writes") == 1


@pytest.mark.anyio
async def test_hung_request_times_out_and_retries(api: FakeApiServer, tmp_path: Path) -> None:
    # the first patch hangs (the server never answers in time): abandoned, then retried
    api.inject(Fault("patch", times=1, node=NODE, action="hang"))
    started = time.monotonic()
    async with reconciling(api, tmp_path, request_timeout=0.5) as rec:
        await synced(rec)
        assert 0.5 <= time.monotonic() - started < 3
        assert rec.stats.failed_patches == 1
        assert "TimeoutError" in (rec.stats.last_error or "")
        assert api.count("patch", NODE) == 2


@pytest.mark.anyio
async def test_missing_node_is_reported_and_retried(api: FakeApiServer, tmp_path: Path) -> None:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    rec = NodeLabelReconciler("late-node", DESIRED, kubeconfig=str(kubeconfig), retry=FAST)
    async with running(rec):
        await eventually(lambda: rec.stats.errors >= 2)
        assert "does not exist" in (rec.stats.last_error or "")
        api.add_node("late-node")
        await synced(rec)


@pytest.mark.anyio
async def test_bad_kubeconfig_is_reported_not_raised(tmp_path: Path) -> None:
    metrics = Metrics()
    rec = NodeLabelReconciler(
        NODE, DESIRED, kubeconfig=str(tmp_path / "missing"), retry=FAST, metrics=metrics
    )
    async with running(rec):
        await eventually(lambda: rec.stats.errors >= 2)
        assert "no usable kubeconfig" in (rec.stats.last_error or "")
        assert metrics.value("api_retries", "load_config", "config") >= 2


@pytest.mark.anyio
async def test_timestamp_disabled_removes_old_timestamp(api: FakeApiServer, tmp_path: Path) -> None:
    api.set_labels(NODE, {TIMESTAMP_LABEL: "1"})
    async with reconciling(api, tmp_path, timestamp=False) as rec:
        await synced(rec)
        assert TIMESTAMP_LABEL not in api.labels(NODE)


@pytest.mark.anyio
async def test_run_reconciler_follows_an_async_iterator(api: FakeApiServer, tmp_path: Path) -> None:
    kubeconfig = str(api.write_kubeconfig(tmp_path / "kubeconfig"))
    send, receive = anyio.create_memory_object_stream[dict[str, str]](10)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: run_reconciler(NODE, receive, kubeconfig=kubeconfig, retry=FAST))
            await send.send({"nvidia.com/gpu.count": "1"})
            await eventually(lambda: api.labels(NODE).get("nvidia.com/gpu.count") == "1")
            await send.send({"nvidia.com/gpu.count": "2"})
            await eventually(lambda: api.labels(NODE).get("nvidia.com/gpu.count") == "2")
            await send.aclose()  # the iterator ends: run_reconciler returns by itself


@pytest.mark.anyio
async def test_invalid_values_are_left_out_not_sent(api: FakeApiServer, tmp_path: Path) -> None:
    async with reconciling(api, tmp_path) as rec:
        rec.set_desired({**DESIRED, "nvidia.com/gpu.machine": "has spaces"})
        await synced(rec)
        assert "nvidia.com/gpu.machine" not in api.labels(NODE)
        assert rec.stats.failed_patches == 0


def test_k8s_modules_do_not_import_the_kube_client() -> None:
    """The agent may import these at start-up; kubernetes_asyncio must load only on connect."""
    import subprocess
    import sys

    code = (
        "import sys, nvplugin.k8s.reconciler, nvplugin.k8s.events, nvplugin.k8s.nodeconfig, "
        "nvplugin.commands.labels, nvplugin.nodefacts; "
        "assert 'kubernetes_asyncio' not in sys.modules, sorted(sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.anyio
async def test_nothing_written_before_desired_labels_are_known(api: FakeApiServer, tmp_path: Path) -> None:
    api.set_labels(NODE, DESIRED)  # left by a previous run
    kubeconfig = str(api.write_kubeconfig(tmp_path / "kubeconfig"))
    rec = NodeLabelReconciler(NODE, kubeconfig=kubeconfig, retry=FAST)
    async with running(rec):
        await eventually(lambda: api.open_watches(NODE) == 1 and rec.actual is not None)
        assert api.count("patch", NODE) == 0
        assert api.labels(NODE)["nvidia.com/gpu.count"] == "8"
        rec.set_desired({**DESIRED, "nvidia.com/gpu.count": "4"})
        await synced(rec)
        assert api.labels(NODE)["nvidia.com/gpu.count"] == "4"
        assert api.count("patch", NODE) == 1


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    backoff = Backoff(base=0.5, cap=30.0)
    rng = random.Random(0)
    for attempt, ceiling in ((0, 0.5), (1, 1.0), (3, 4.0), (6, 30.0), (40, 30.0)):
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not one fixed value


@pytest.mark.anyio
async def test_429_on_the_list_waits_for_retry_after(api: FakeApiServer, tmp_path: Path) -> None:
    api.inject(Fault("list", 429, times=1, retry_after=1, node=NODE))
    started = time.monotonic()
    async with reconciling(api, tmp_path) as rec:
        await synced(rec)
        assert time.monotonic() - started >= 1.0
        assert api.count("list", NODE) == 2
        assert rec.stats.throttled == 1


@pytest.mark.anyio
async def test_kept_keys_are_left_as_the_node_has_them(api: FakeApiServer, tmp_path: Path) -> None:
    present = "nvidia.com/gpu.present"
    async with reconciling(api, tmp_path) as rec:
        await synced(rec)
        # NVML is lost: the labels computed now do not know whether GPUs are present
        unknown = {k: v for k, v in DESIRED.items() if k != present}
        rec.set_desired({**unknown, "nvidia.com/gpu.count": "0"}, keep={present}.__contains__)
        await eventually(lambda: api.labels(NODE).get("nvidia.com/gpu.count") == "0")
        await synced(rec)
        assert api.labels(NODE)[present] == "true"  # an owned key, not desired, yet not deleted
        # a value given for a kept key is not written either
        rec.set_desired({**DESIRED, present: "false"}, keep={present}.__contains__)
        await synced(rec)
        assert api.labels(NODE)[present] == "true"
        # nor is a kept key re-added when someone removes it
        api.set_labels(NODE, {present: None})
        await eventually(lambda: present not in (rec.actual or {}))
        await synced(rec)
        assert present not in api.labels(NODE)
        # known again: written as desired
        rec.set_desired(DESIRED)
        await eventually(lambda: api.labels(NODE).get(present) == "true")
        # and an owned key no longer desired nor kept is deleted
        rec.set_desired(unknown)
        await eventually(lambda: present not in api.labels(NODE))


@pytest.mark.anyio
async def test_repeated_410_backs_off(api: FakeApiServer, tmp_path: Path) -> None:
    metrics = Metrics()
    retry = RetryPolicy(backoff=Backoff(base=0.1, cap=0.4))
    async with reconciling(api, tmp_path, retry=retry, metrics=metrics) as rec:
        await synced(rec)
        await eventually(lambda: api.open_watches(NODE) == 1)
        # every watch from now on expires at once (as after a compaction storm)
        api.inject(Fault("watch", node=NODE, action="expire", times=None))
        began = time.monotonic()
        await api.stop()  # the open watch drops
        await api.start()
        await eventually(lambda: rec.stats.relists_410 >= 6, 10)
        elapsed = time.monotonic() - began
        # list + watch per attempt, at most the backoff allows (first relist at once)
        assert api.requests_since(began, NODE) <= 2 * (retry.backoff.attempts_within(elapsed) + 1)
        assert metrics.value("api_retries", "watch_node", "expired") >= 6
        api.clear_faults()
        api.set_labels(NODE, {"nvidia.com/gpu.family": "tampered"})
        await eventually(lambda: api.labels(NODE).get("nvidia.com/gpu.family") == "hopper", 10)


@pytest.mark.anyio
async def test_watch_that_ends_at_once_is_not_a_hot_loop(api: FakeApiServer, tmp_path: Path) -> None:
    metrics = Metrics()
    retry = RetryPolicy(backoff=Backoff(base=0.1, cap=0.4))
    api.inject(Fault("watch", node=NODE, action="end", times=None))
    async with reconciling(api, tmp_path, retry=retry, metrics=metrics) as rec:
        began = time.monotonic()
        await synced(rec)
        await eventually(lambda: metrics.value("api_retries", "watch_node", "watch_ended") >= 4)
        elapsed = time.monotonic() - began
        assert api.count("watch", NODE) <= retry.backoff.attempts_within(elapsed)
        assert api.count("list", NODE) == 1  # the resource version stays good: no relist
        api.clear_faults()
        await eventually(lambda: api.open_watches(NODE) == 1, 10)


@pytest.mark.anyio
async def test_hung_watch_times_out_and_retries(api: FakeApiServer, tmp_path: Path) -> None:
    metrics = Metrics()
    api.inject(Fault("watch", node=NODE, action="hang"))
    async with reconciling(api, tmp_path, request_timeout=0.3, metrics=metrics) as rec:
        await synced(rec)
        await eventually(lambda: api.open_watches(NODE) == 1)
        assert metrics.value("api_retries", "watch_node", "timeout") == 1
        assert "TimeoutError" in (rec.stats.last_error or "")


@pytest.mark.anyio
async def test_patch_accepted_but_not_applied_backs_off(api: FakeApiServer, tmp_path: Path) -> None:
    product = "nvidia.com/gpu.product"

    def webhook(node: dict[str, Any]) -> None:  # rewrites our label on every patch
        node["metadata"]["labels"][product] = "rewritten"

    api.admission = webhook
    metrics = Metrics()
    retry = RetryPolicy(backoff=Backoff(base=0.1, cap=0.4))
    async with reconciling(api, tmp_path, retry=retry, metrics=metrics) as rec:
        began = time.monotonic()
        await eventually(lambda: metrics.value("api_retries", "patch_node", "not_applied") >= 4)
        elapsed = time.monotonic() - began
        assert api.count("patch", NODE) <= retry.backoff.attempts_within(elapsed) + 1
        assert "not applied: nvidia.com/gpu.product" in (rec.stats.last_error or "")
        api.admission = None
        await synced(rec, 10)
        assert api.labels(NODE)[product] == DESIRED[product]
