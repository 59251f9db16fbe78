"""Node Events for health transitions, and per-node config switching by node label."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from nvplugin.core.labels import DesiredLabels
from nvplugin.k8s.client import NodeApi
from nvplugin.k8s.events import NodeEventPublisher
from nvplugin.k8s.nodeconfig import (
    ConfigSelectionError,
    NodeConfigSwitcher,
    available_configs,
    choose_config,
    parse_fallbacks,
)
from nvplugin.k8s.reconciler import NodeLabelReconciler
from nvplugin.k8s.retry import Backoff, RetryPolicy
from nvplugin.observability import Metrics
from nvplugin.testing.apiserver import FakeApiServer, Fault
from tests.conftest import eventually

NODE = "gpu-node-1"
UUID = "GPU-cf556fce-0000-0000-0000-000000000000"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer(bookmark_interval=0.2) as server:
        server.add_node(NODE)
        yield server


@contextlib.asynccontextmanager
async def running(run: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        yield
        tg.cancel_scope.cancel()


def events_of(api: FakeApiServer) -> list[dict]:
    return [e for (ns, _), e in api.events.items() if ns == "default"]


# --- Events


@pytest.fixture
async def client(api: FakeApiServer, tmp_path: Path) -> AsyncIterator[NodeApi]:
    client = await NodeApi.connect(str(api.write_kubeconfig(tmp_path / "kc")))
    yield client
    await client.close()


@pytest.mark.anyio
async def test_health_events_created_aggregated_and_rate_limited(api: FakeApiServer, client: NodeApi) -> None:
    metrics = Metrics()
    publisher = NodeEventPublisher(
        NODE, lambda: client, node_uid=lambda: "uid-1", burst=3, refill_seconds=3600, metrics=metrics
    )
    async with running(publisher.run):
        publisher.publish_health_event(UUID, 79, "GPU has fallen off the bus", healthy=False)
        await eventually(lambda: publisher.created == 1)
        (event,) = events_of(api)
        assert event["involvedObject"] == {"kind": "Node", "apiVersion": "v1", "name": NODE, "uid": "uid-1"}
        assert event["reason"] == "GPUUnhealthy"
        assert event["type"] == "Warning"
        assert UUID in event["message"] and "XID 79" in event["message"]
        # the same transition again: one Event with count 2, not a new object
        publisher.publish_health_event(UUID, 79, "GPU has fallen off the bus", healthy=False)
        await eventually(lambda: publisher.aggregated == 1)
        (event,) = events_of(api)
        assert event["count"] == 2
        publisher.publish_health_event(UUID, None, "no XID for 5 minutes", healthy=True)
        await eventually(lambda: publisher.created == 2)
        healthy = next(e for e in events_of(api) if e["reason"] == "GPUHealthy")
        assert healthy["type"] == "Normal"
        # the burst of 3 is spent: a flood is dropped, not sent
        for i in range(50):
            publisher.publish_health_event(UUID, 48 + i, "DBE", healthy=False)
        await eventually(lambda: publisher.dropped == 50)
        assert api.count("create-event") == 2 and api.count("patch-event") == 1
        assert metrics.value("event_writes") == 3


@pytest.mark.anyio
async def test_events_survive_api_outage_without_blocking(api: FakeApiServer, client: NodeApi) -> None:
    metrics = Metrics()
    publisher = NodeEventPublisher(
        NODE, lambda: client, retry=RetryPolicy(backoff=Backoff(0.05, 0.2)), metrics=metrics
    )
    async with running(publisher.run):
        api.inject(Fault("create-event", 500, times=2))
        started = time.monotonic()
        publisher.publish_health_event(UUID, 48, "double-bit ECC error", healthy=False)
        assert time.monotonic() - started < 0.01  # never waits for the API
        await eventually(lambda: publisher.created == 1)
        assert api.count("create-event") == 3
        assert metrics.value("api_retries", "create_event", "server_error") == 2
        assert metrics.value("api_errors", "create_event") == 2


@pytest.mark.anyio
async def test_event_refused_is_dropped_not_retried(api: FakeApiServer, client: NodeApi) -> None:
    metrics = Metrics()
    publisher = NodeEventPublisher(NODE, lambda: client, metrics=metrics)
    async with running(publisher.run):
        api.inject(Fault("create-event", 422, times=1))
        publisher.publish_health_event(UUID, 48, "double-bit ECC error", healthy=False)
        await eventually(lambda: publisher.failed == 1)
        publisher.publish_health_event(UUID, 79, "fell off the bus", healthy=False)
        await eventually(lambda: publisher.created == 1)
        assert api.count("create-event") == 2
        assert metrics.value("api_errors", "create_event") == 1
        assert metrics.value("api_retries", "create_event", "client_error") == 0


@pytest.mark.anyio
async def test_event_queue_is_bounded() -> None:
    publisher = NodeEventPublisher(NODE, lambda: None, max_queue=5)
    for i in range(8):
        publisher.publish_health_event(UUID, i, "x", healthy=False)
    assert publisher.dropped == 3


# --- config selection (NVIDIA config-manager semantics)


def test_choose_config_rules() -> None:
    assert choose_config("a", ["a", "b"]) == "a"
    with pytest.raises(ConfigSelectionError, match=r"names no config .* available: a, b"):
        choose_config("zzz", ["a", "b"])
    assert choose_config("", ["a", "default"]) == "default"  # named fallback
    assert choose_config("", ["only"]) == "only"  # single fallback
    assert choose_config("", ["a", "b"], default_config="b") == "b"
    with pytest.raises(ConfigSelectionError, match="default config 'c'"):
        choose_config("", ["a", "b"], default_config="c")
    with pytest.raises(ConfigSelectionError, match="no fallback"):
        choose_config("", ["a", "b"])
    assert choose_config("", ["a", "b"], fallbacks=["named", "empty"]) is None
    assert choose_config("", [], fallbacks=["empty"]) is None
    assert parse_fallbacks("named, single") == ("named", "single")
    with pytest.raises(ConfigSelectionError, match="unknown fallback strategy 'nope'"):
        parse_fallbacks("named,nope")


def test_available_configs_skips_configmap_internals(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("version: v1\n")
    (tmp_path / "b").write_text("version: v1\n")
    (tmp_path / "..data").mkdir()
    (tmp_path / "..2026_11_26").write_text("")
    (tmp_path / "sub").mkdir()
    assert available_configs(tmp_path) == ["a", "b"]
    with pytest.raises(ConfigSelectionError, match="cannot read the config directory"):
        available_configs(tmp_path / "missing")


def test_switcher_unknown_name_keeps_current(tmp_path: Path) -> None:
    for name in ("default", "ts4"):
        (tmp_path / name).write_text("version: v1\n")
    calls: list[tuple[str | None, Path | None]] = []
    switcher = NodeConfigSwitcher(tmp_path, lambda n, p: calls.append((n, p)))
    assert switcher.initial() == ("default", tmp_path / "default")
    switcher.observe({"nvidia.com/device-plugin.config": "ts4"})
    assert calls == [("ts4", tmp_path / "ts4")]
    switcher.observe({"nvidia.com/device-plugin.config": "ts4", "other": "x"})  # no change
    switcher.observe({"nvidia.com/device-plugin.config": "nope"})
    assert switcher.current == "ts4"
    assert switcher.problem is not None and "nope" in switcher.problem
    switcher.observe({})  # label removed: back to the default
    assert calls[-1] == ("default", tmp_path / "default")


def test_switcher_failed_reload_keeps_current(tmp_path: Path) -> None:
    for name in ("default", "bad"):
        (tmp_path / name).write_text("version: v1\n")

    def reload(name: str | None, path: Path | None) -> None:
        if name == "bad":
            raise ValueError("invalid config")

    switcher = NodeConfigSwitcher(tmp_path, reload)
    switcher.initial()
    switcher.observe({"nvidia.com/device-plugin.config": "bad"})
    assert switcher.current == "default"
    assert "failed" in (switcher.problem or "")


@pytest.mark.anyio
async def test_config_switched_by_node_label(api: FakeApiServer, tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    for name in ("default", "time-sliced"):
        (configs / name).write_text("version: v1\n")
    reloads: list[str | None] = []
    switcher = NodeConfigSwitcher(configs, lambda name, path: reloads.append(name))
    switcher.initial()
    reconciler = NodeLabelReconciler(
        NODE,
        {"nvidia.com/gpu.count": "1"},
        kubeconfig=str(api.write_kubeconfig(tmp_path / "kc")),
        on_node_labels=switcher.observe,
        retry=RetryPolicy(backoff=Backoff(0.05, 0.2)),
        rng=random.Random(2),
    )
    async with running(reconciler.run):
        with anyio.fail_after(5):
            await reconciler.wait_synced()
        assert reloads == []  # no label: the start-up config stays
        api.set_labels(NODE, {"nvidia.com/device-plugin.config": "time-sliced"})
        await eventually(lambda: reloads == ["time-sliced"])
        api.set_labels(NODE, {"nvidia.com/device-plugin.config": "missing"})
        await eventually(lambda: switcher.problem is not None)
        assert switcher.current == "time-sliced"
        api.set_labels(NODE, {"nvidia.com/device-plugin.config": None})
        await eventually(lambda: reloads == ["time-sliced", "default"])
        # the selector label is the user's: the reconciler never wrote it
        assert api.count("patch", NODE) == 1


def test_switcher_started_with_a_choice_made_elsewhere(tmp_path: Path) -> None:
    for name in ("default", "ts4"):
        (tmp_path / name).write_text("version: v1\n")
    calls: list[str | None] = []
    switcher = NodeConfigSwitcher(tmp_path, lambda n, p: calls.append(n))
    switcher.started_with("default")
    switcher.observe({})  # the label is still unset: nothing to switch
    assert calls == [] and switcher.current == "default"
    switcher.observe({"nvidia.com/device-plugin.config": "ts4"})
    assert calls == ["ts4"]


# --- all of it behind NodeIntegration, one watch


@pytest.mark.anyio
async def test_node_integration_labels_events_and_config(api: FakeApiServer, tmp_path: Path) -> None:
    from nvplugin.k8s.integration import NodeIntegration, resolve_node_name

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "default").write_text("version: v1\n")
    (configs / "ts").write_text("version: v1\n")
    reloads: list[str | None] = []
    metrics = Metrics()
    node = NodeIntegration(
        resolve_node_name(None, {"NODE_NAME": NODE}),
        kubeconfig=str(api.write_kubeconfig(tmp_path / "kc")),
        config_dir=str(configs),
        on_config_change=lambda name, path: reloads.append(name),
        initial_config="default",  # what the wiring's one NodeConfigSwitcher.initial() chose
        metrics=metrics,
    )
    assert node.config_switcher is not None and node.config_switcher.current == "default"
    # an event published before the client is connected is kept and sent once it is
    node.publish_health_event(UUID, 79, "fell off the bus", healthy=False)
    async with running(node.run):
        node.set_desired(DesiredLabels({"nvidia.com/gpu.count": "8"}))
        await eventually(lambda: api.labels(NODE).get("nvidia.com/gpu.count") == "8")
        await eventually(lambda: node.events.created == 1)
        (event,) = events_of(api)
        assert event["involvedObject"]["uid"] == api.node(NODE)["metadata"]["uid"]
        assert reloads == []  # the start-up choice is not made (or applied) a second time
        api.set_labels(NODE, {"nvidia.com/device-plugin.config": "ts"})
        await eventually(lambda: reloads == ["ts"])
        assert api.count("watch", NODE) == 1 and api.open_watches(NODE) == 1
        assert metrics.value("label_writes") == 1 and metrics.value("event_writes") == 1


def test_node_integration_needs_the_initial_config_with_a_config_dir(tmp_path: Path) -> None:
    from nvplugin.k8s.integration import NodeIntegration

    with pytest.raises(ValueError, match="initial_config"):
        NodeIntegration(NODE, config_dir=str(tmp_path), on_config_change=lambda name, path: None)
    empty = NodeIntegration(
        NODE, config_dir=str(tmp_path), on_config_change=lambda name, path: None, initial_config=None
    )
    assert empty.config_switcher is not None and empty.config_switcher.current is None


def test_node_name_required() -> None:
    from nvplugin.k8s.integration import resolve_node_name

    assert resolve_node_name("flag-node", {"NODE_NAME": "env-node"}) == "flag-node"
    assert resolve_node_name(None, {"NODE_NAME": "env-node"}) == "env-node"
    with pytest.raises(ValueError, match="NODE_NAME"):
        resolve_node_name(None, {})
