"""The node's Kubernetes side (NodeIntegration: label reconciler + Event publisher, unmodified,
production retry policy) against a hostile API server: the real HTTP stand-in with faults
injected on every request of the fault window.

For each fault: the labels are in sync and watched; a fault window of WINDOW seconds opens (the
open watch is ended, the desired labels change and a health Event is published, so every path
runs into the fault); then the fault ends. Asserted per fault:
  - the requests the server received for the node during the window stay under the bound the
    retry policy gives (nvplugin.k8s.retry: Backoff.attempts_within), and so does the busiest
    second (no hot loop); during the outage the server cannot count, so the client's own
    request count is used;
  - the fault was really met (its retry reason is in nvplugin_api_retries_total), nothing
    crashed (run() still running, no "unexpected" retry);
  - after the fault the Node carries the desired labels, a watch is open again and the Event
    is recorded, within a generous deadline; the time is measured and printed.
The faults run concurrently (one API server and one NodeIntegration each) so the whole file
takes about WINDOW + the slowest convergence; the summary table is printed at the end. A longer
window shows the sustained rate: NVPLUGIN_FAULT_WINDOW=120 pytest tests/reliability/test_apiserver_faults.py
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from nvplugin.core.labels import DesiredLabels
from nvplugin.k8s.events import EVENT_RETRY
from nvplugin.k8s.integration import NodeIntegration
from nvplugin.k8s.retry import DEFAULT_RETRY, RetryPolicy
from nvplugin.observability import Metrics
from nvplugin.testing.apiserver import FakeApiServer, Fault

NODE = "gpu-node-1"
UUID = "GPU-cf556fce-0000-0000-0000-000000000000"
WINDOW = float(os.environ.get("NVPLUGIN_FAULT_WINDOW", "3"))  # seconds each fault lasts
REQUEST_TIMEOUT = 1.0  # the client's per-request deadline (production: 30 s): hangs end sooner
DEADLINE = 45.0  # generous: longer than the longest backoff delay (30 s)
BEFORE = {
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    "nvidia.com/gpu.count": "8",
    "nvidia.com/gpu.present": "true",
}
AFTER = {**BEFORE, "nvidia.com/gpu.count": "7"}  # a GPU fell off the bus during the fault
ALL_VERBS = ("list", "watch", "patch", "create-event", "patch-event")


def on_every(verbs: tuple[str, ...], **fault: Any) -> tuple[Fault, ...]:
    return tuple(Fault(verb, times=None, node=NODE, **fault) for verb in verbs)


@dataclass(frozen=True)
class Scenario:
    name: str
    faults: tuple[Fault, ...] = ()
    outage: bool = False  # stop listening (connection refused) instead of injecting faults
    compact: bool = False  # forget the history: the resumed watch gets 410 and the node is relisted
    expect: tuple[tuple[str, str], ...] = ()  # (call, reason) retries the fault must cause


def scenarios() -> list[Scenario]:
    # fresh Fault objects per run: the server mutates them
    return [
        Scenario(
            "500 storm (every verb)",
            on_every(ALL_VERBS, status=500),
            expect=(
                ("watch_node", "server_error"),
                ("patch_node", "server_error"),
                ("create_event", "server_error"),
            ),
        ),
        Scenario(
            "429 + Retry-After: 1 (every verb)",
            on_every(ALL_VERBS, status=429, retry_after=1),
            expect=(("watch_node", "throttled"), ("patch_node", "throttled"), ("create_event", "throttled")),
        ),
        Scenario(
            "410 storm on watch (ERROR event)",
            on_every(("watch",), action="expire"),
            expect=(("watch_node", "expired"),),
        ),
        Scenario(
            "410 storm on watch (HTTP status)",
            on_every(("watch",), status=410),
            expect=(("watch_node", "expired"),),
        ),
        Scenario(
            "watches end at once", on_every(("watch",), action="end"), expect=(("watch_node", "watch_ended"),)
        ),
        Scenario(
            "hang (every verb, never answers)",
            on_every(ALL_VERBS, action="hang"),
            expect=(("watch_node", "timeout"), ("patch_node", "timeout"), ("create_event", "timeout")),
        ),
        Scenario(
            "connection closed mid-body: list",
            on_every(("list",), action="close"),
            compact=True,
            expect=(("list_node", "connection"),),
        ),
        Scenario(
            "connection closed mid-stream: watch",
            on_every(("watch",), action="close"),
            expect=(("watch_node", "connection"),),
        ),
        Scenario(
            "connection closed mid-body: patch",
            on_every(("patch",), action="close"),
            expect=(("patch_node", "connection"),),
        ),
        Scenario(
            "outage (connection refused), then back",
            outage=True,
            expect=(
                ("watch_node", "connection"),
                ("patch_node", "connection"),
                ("create_event", "connection"),
            ),
        ),
    ]


def request_bound(
    window: float, labels: RetryPolicy = DEFAULT_RETRY, events: RetryPolicy = EVENT_RETRY
) -> int:
    """The most requests one node may send in `window` seconds of failures: the watch loop
    (a list and a watch per attempt, plus the first 410's relist at once), the label writer (a
    patch per attempt) and the Event sender (one request per attempt)."""
    attempts = labels.backoff.attempts_within(window)
    return 2 * (attempts + 1) + attempts + events.backoff.attempts_within(window)


@dataclass
class Outcome:
    name: str
    counted_by: str = "server"
    requests: int = 0
    peak_1s: int = 0
    labels_s: float | None = None
    event_s: float | None = None
    retries: dict[str, float] = field(default_factory=dict)
    unexpected: float = 0
    missing: list[str] = field(default_factory=list)
    error: str | None = None


async def until(check: Callable[[], bool], within: float) -> float:
    """Seconds until `check()` holds (polled every 10 ms); AssertionError after `within`."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > within:
            raise AssertionError(f"not reached within {within:g} s")
        await anyio.sleep(0.01)
    return time.monotonic() - began


async def converged(**checks: Callable[[], bool]) -> dict[str, float]:
    """Seconds until each check holds, all measured from now."""
    times: dict[str, float] = {}

    async def measure(name: str, check: Callable[[], bool]) -> None:
        times[name] = await until(check, DEADLINE)

    async with anyio.create_task_group() as tg:
        for name, check in checks.items():
            tg.start_soon(measure, name, check)
    return times


async def run_scenario(scenario: Scenario, tmp_path: Path, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[scenario.name] = Outcome(scenario.name, "client" if scenario.outage else "server")
    metrics = Metrics()
    api = FakeApiServer(bookmark_interval=30.0)
    try:
        async with api, anyio.create_task_group() as tg:
            api.add_node(NODE)
            kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
            node = NodeIntegration(
                NODE, kubeconfig=str(kubeconfig), metrics=metrics, request_timeout=REQUEST_TIMEOUT
            )

            async def forever() -> None:
                await node.run()
                raise AssertionError("NodeIntegration.run() ended by itself")

            tg.start_soon(forever)
            node.set_desired(DesiredLabels(BEFORE))
            await until(lambda: node.labels.in_sync and api.open_watches(NODE) == 1, 10)

            # --- the fault window: every path meets the fault
            began = time.monotonic()
            client_before = node.labels.api.requests if node.labels.api else 0
            if scenario.outage:
                await api.stop()
            for fault in scenario.faults:
                api.inject(fault)
            api.end_watches(NODE)
            if scenario.compact:
                api.touch(NODE)
                api.compact()
            node.set_desired(DesiredLabels(AFTER))
            node.publish_health_event(UUID, 79, "GPU has fallen off the bus", healthy=False)
            await anyio.sleep(WINDOW)
            ended = time.monotonic()
            if scenario.outage:
                assert node.labels.api is not None
                outcome.requests = node.labels.api.requests - client_before
                await api.start()
            else:
                outcome.requests = api.requests_since(began, NODE, until=ended)
                outcome.peak_1s = api.peak_rate(began, NODE, window=1.0)
            api.clear_faults()

            # --- recovery
            def labels_converged() -> bool:
                labels = api.labels(NODE)
                return all(labels.get(k) == v for k, v in AFTER.items()) and api.open_watches(NODE) == 1

            times = await converged(labels=labels_converged, event=lambda: bool(api.events))
            outcome.labels_s, outcome.event_s = times["labels"], times["event"]
            _, counters, _ = metrics.snapshot()
            retries = counters["api_retries"]
            outcome.retries = {f"{call}/{reason}": n for (call, reason), n in sorted(retries.items())}
            outcome.unexpected = sum(n for (_, reason), n in retries.items() if reason == "unexpected")
            outcome.missing = [f"{c}/{r}" for c, r in scenario.expect if retries.get((c, r), 0) == 0]
            tg.cancel_scope.cancel()
    except Exception as exc:  # recorded and asserted per scenario, so the others still run
        outcome.error = f"{type(exc).__name__}: {exc}"


def summary(outcomes: dict[str, Outcome]) -> list[str]:
    bound, peak_bound = request_bound(WINDOW), request_bound(1.0)
    lines = [
        f"hostile API server: {WINDOW:g} s fault windows, production retry policy, request timeout "
        f"{REQUEST_TIMEOUT:g} s; bound {bound} requests per window per node ({bound / WINDOW:.1f}/s), "
        f"{peak_bound} in any second",
        f"{'fault':42} {'requests':>8} {'req/s':>6} {'peak 1s':>7} {'labels s':>8} {'event s':>7}  retries",
    ]
    for o in outcomes.values():
        peak = str(o.peak_1s) if o.counted_by == "server" else "-"
        labels = f"{o.labels_s:.2f}" if o.labels_s is not None else "-"
        event = f"{o.event_s:.2f}" if o.event_s is not None else "-"
        counted = o.requests if o.counted_by == "server" else f"{o.requests}c"
        reasons = ", ".join(f"{k}={v:g}" for k, v in o.retries.items())
        lines.append(
            f"{o.name:42} {counted!s:>8} {o.requests / WINDOW:>6.1f} {peak:>7} {labels:>8} {event:>7}  {reasons}"
            + (f"  ERROR {o.error}" if o.error else "")
        )
    lines.append("(c: counted by the client: a server that is not listening cannot count)")
    return lines


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def outcomes(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> AsyncIterator[dict[str, Outcome]]:
    results: dict[str, Outcome] = {}
    async with anyio.create_task_group() as tg:
        for scenario in scenarios():
            tg.start_soon(run_scenario, scenario, tmp_path_factory.mktemp("fault"), results)
    # the figures for docs/benchmarks.md, shown even when output is captured
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + "\n".join(summary(results)))
    yield results


@pytest.mark.anyio
@pytest.mark.parametrize("name", [s.name for s in scenarios()])
async def test_bounded_and_converges(name: str, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[name]
    assert outcome.error is None, outcome.error
    bound = request_bound(WINDOW)
    assert outcome.requests <= bound, f"{outcome.requests} requests in {WINDOW:g} s (bound {bound})"
    assert outcome.peak_1s <= request_bound(1.0), f"{outcome.peak_1s} requests in one second"
    assert not outcome.missing, f"the fault was not met: no retry {outcome.missing}"
    assert outcome.unexpected == 0
    assert outcome.labels_s is not None and outcome.event_s is not None
