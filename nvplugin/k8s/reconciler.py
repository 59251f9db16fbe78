"""Keeps this node's labels true: watches its own Node, patches only what differs.

One watch (fieldSelector metadata.name=<node>) feeds the last seen labels; a writer compares
them with the desired labels and sends one JSON merge patch of the changed keys (None deletes
an owned key nobody wants any more). In steady state nothing is written: watch events that
change nothing (kubelet heartbeats, other controllers) only cost a dict comparison. Keys the
agent cannot currently know (NVML is down) can be marked `keep`: left as the Node has them.

Failures never reach the caller: every API error is logged and retried on the watch's or the
writer's own backoff (nvplugin.k8s.retry: jittered, exponential, capped, Retry-After honoured,
a repeated 410 backs off too); a watch the server ends long before its timeout counts as a
failure, so no fault of the server turns into a hot loop. `run()` returns only when cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from nvplugin.core.labels import TIMESTAMP_LABEL, is_owned_key, keep_nothing, label_diff, valid_only
from nvplugin.k8s.client import ApiError, NodeApi, RateLimit
from nvplugin.k8s.flag import Flag
from nvplugin.k8s.retry import DEFAULT_RETRY, NOT_APPLIED, WATCH_ENDED, Retrier, RetryPolicy
from nvplugin.observability import NULL_METRICS, Metrics

log = logging.getLogger(__name__)

NodeLabelsCallback = Callable[[Mapping[str, str]], None]


@dataclass
class ReconcilerStats:
    lists: int = 0
    watches: int = 0
    relists_410: int = 0
    patches: int = 0
    failed_patches: int = 0
    errors: int = 0
    throttled: int = 0
    last_error: str | None = None


def _rv_number(rv: str) -> int | None:
    return int(rv) if rv.isdigit() else None


class NodeLabelReconciler:
    """Start with `await reconciler.run()` in a task; push new labels with `set_desired`."""

    def __init__(
        self,
        node_name: str,
        desired: Mapping[str, str] | None = None,
        *,
        kubeconfig: str | None = None,
        request_timeout: float = 30.0,
        rate_limit: RateLimit | None = None,
        connect: Callable[[], Awaitable[NodeApi]] | None = None,
        timestamp: bool = True,
        owned: Callable[[str], bool] = is_owned_key,
        on_node_labels: NodeLabelsCallback | None = None,
        metrics: Metrics = NULL_METRICS,
        retry: RetryPolicy = DEFAULT_RETRY,
        watch_timeout: tuple[int, int] = (240, 360),
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if not node_name:
            raise ValueError(
                "the node name is empty: set NODE_NAME from the downward API (fieldRef spec.nodeName) "
                "or pass --node-name"
            )
        self.node_name = node_name
        self._connect = connect or (
            lambda: NodeApi.connect(kubeconfig, request_timeout=request_timeout, rate_limit=rate_limit)
        )
        self._timestamp = timestamp
        self._owned = owned
        self._on_node_labels = on_node_labels
        self._metrics = metrics
        self._watch_timeout = watch_timeout
        self._clock = clock
        self._rng = rng or random.Random()
        self._watch_retry = Retrier(retry, self._rng, metrics)
        self._patch_retry = Retrier(retry, self._rng, metrics)
        self._desired: dict[str, str] = {}
        self._keep: Callable[[str], bool] = keep_nothing
        # The relabel period asked for a fresh timestamp (GFD's --sleep-interval).
        self._refresh_timestamp = False
        # Nothing is written before the agent has said what it wants: an empty start must not
        # wipe the labels a previous run left (they stay until the first set_desired).
        self._desired_known = False
        self._dirty = Flag()
        self._synced = Flag()
        self._connected = Flag()
        # The connection, published once the Node has been read (the Event publisher and the
        # writer need its uid and labels, not just a client).
        self.api: NodeApi | None = None
        self._client: NodeApi | None = None
        self.node_uid: str | None = None
        # Labels of the newest Node version seen (watch or patch answer); None: not seen yet.
        self.actual: dict[str, str] | None = None
        self._actual_rv: int | None = None
        self._last_notified: dict[str, str] | None = None
        self._resume_rv: str | None = None
        self.stats = ReconcilerStats()
        self._last_logged_error: str | None = None
        if desired is not None:
            self.set_desired(desired)

    # --- the agent's side

    def set_desired(self, labels: Mapping[str, str], keep: Callable[[str], bool] = keep_nothing) -> None:
        """New desired labels (timestamp excluded: the reconciler writes it). Never blocks.

        `keep`: accepts the keys whose true value is unknown right now (NVML failed): they are
        left as the Node has them - neither changed nor deleted, whatever `labels` says of them -
        until a later call no longer keeps them (core.labels.DesiredLabels)."""
        good, bad = valid_only(labels)
        if bad:
            log.error(
                "leaving out labels the API server would refuse (values must be at most 63 "
                "characters of A-Z a-z 0-9 - _ . and start and end alphanumeric): %s",
                ", ".join(bad),
            )
        if good != self._desired or keep is not self._keep or not self._desired_known:
            self._desired = good
            self._keep = keep
            self._desired_known = True
            self._synced.clear()
            self._dirty.set()

    def refresh_timestamp(self) -> None:
        """Write a fresh nvidia.com/gfd.timestamp with the next patch, even if nothing else
        changed (GFD's relabel period). Nothing when timestamps are off."""
        if self._timestamp and not self._refresh_timestamp:
            self._refresh_timestamp = True
            self._synced.clear()
            self._dirty.set()

    @property
    def desired(self) -> Mapping[str, str]:
        return dict(self._desired)

    @property
    def in_sync(self) -> bool:
        return self.actual is not None and not self._changes(self.actual)

    async def wait_synced(self) -> None:
        """Until the Node is known to carry the desired labels (for tests and start-up logs)."""
        await self._synced.wait()

    async def connected(self) -> NodeApi:
        """The connection, once the Node has been read (the Event publisher waits here)."""
        await self._connected.wait()
        assert self.api is not None
        return self.api

    async def run(self) -> None:
        """Reconcile until cancelled. Never raises anything else."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._writer, name=f"labels-writer:{self.node_name}")
                await self._watch_forever()
        finally:
            if self._client is not None:
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await self._client.close()

    # --- internals

    def _changes(self, actual: Mapping[str, str]) -> dict[str, str | None]:
        """The patch to send; empty when the Node already carries what we want (the timestamp's
        value is never compared, so this does not depend on the clock)."""
        if not self._desired_known:
            return {}
        stamp = str(int(self._clock())) if self._timestamp else None
        return label_diff(
            self._desired,
            actual,
            timestamp=stamp,
            owned=self._owned,
            keep=self._keep,
            refresh_timestamp=self._refresh_timestamp,
        )

    def _log_error(self, what: str, exc: BaseException | str, delay: float) -> None:
        text = f"{what}: {exc}"
        self.stats.errors += 1
        if isinstance(exc, ApiError) and exc.status == 429:
            self.stats.throttled += 1
        self.stats.last_error = text
        level = logging.WARNING if text != self._last_logged_error else logging.DEBUG
        self._last_logged_error = text
        log.log(level, "node %s: %s; retrying in %.1f s", self.node_name, text, delay)

    async def _api(self) -> NodeApi:
        if self._client is None:
            self._client = await self._connect()
        return self._client

    def _observe(self, node: Mapping[str, Any]) -> None:
        """Take the labels of a Node version that is not older than what we hold."""
        meta = node.get("metadata") or {}
        rv = _rv_number(str(meta.get("resourceVersion", "")))
        if rv is not None and self._actual_rv is not None and rv < self._actual_rv:
            return  # an older version than a patch answer already seen: nothing new
        self._actual_rv = rv
        self.node_uid = meta.get("uid") or self.node_uid
        labels = dict(meta.get("labels") or {})
        self.actual = labels
        if self._on_node_labels is not None and labels != self._last_notified:
            self._last_notified = labels
            try:
                self._on_node_labels(labels)
            except Exception:
                log.exception("node %s: the node-labels callback failed", self.node_name)
        if self._changes(labels):
            self._synced.clear()
            self._dirty.set()
        else:
            self._synced.set()

    async def _watch_forever(self) -> None:
        # Where the watch resumes; None: list first (start, or the version was compacted away).
        self._resume_rv = None
        retry = self._watch_retry
        while True:
            try:
                api = await self._api()
                if self._resume_rv is None:
                    self._resume_rv = await self._relist(api)
                if await self._watch_once(api):
                    continue  # the server ended the watch at its timeout: resume from the last version
                # A watch that ends long before its timeout (a proxy, a broken server) is retried
                # on the backoff, or it would become a hot loop.
                delay = retry.failed("watch node", WATCH_ENDED)
                log.debug("node %s: watch ended early; re-watching in %.1f s", self.node_name, delay)
            except ApiError as exc:
                if exc.status == 410:
                    # our resourceVersion was compacted away: relist (at once the first time)
                    self.stats.relists_410 += 1
                    self._resume_rv = None
                    delay = retry.failed(exc.call, exc, first_at_once=True)
                    log.info("node %s: watch expired (410), relisting in %.1f s", self.node_name, delay)
                else:
                    delay = retry.failed(exc.call, exc)
                    self._log_error("watching the node", exc, delay)
            except Exception as exc:
                delay = retry.failed("watch node", exc)
                log.exception("node %s: unexpected error in the label watch", self.node_name)
                self.stats.errors += 1
                self.stats.last_error = repr(exc)
                self._resume_rv = None
            await anyio.sleep(delay)

    async def _relist(self, api: NodeApi) -> str:
        self.stats.lists += 1
        node, list_rv = await api.list_node(self.node_name)
        if node is None:
            raise ApiError("list node", 404, f"node {self.node_name!r} does not exist (check NODE_NAME)")
        self._actual_rv = None  # a fresh list is authoritative
        self._observe(node)
        self.api = api
        self._connected.set()
        return str((node.get("metadata") or {}).get("resourceVersion") or list_rv)

    async def _watch_once(self, api: NodeApi) -> bool:
        """One watch request from the resume version, until the server ends it. True when it
        lasted at least half its timeout (a normal end), False when it ended early."""
        assert self._resume_rv is not None
        self.stats.watches += 1
        low, high = self._watch_timeout
        timeout = self._rng.randint(low, high)
        began = anyio.current_time()
        events = api.watch_node(self.node_name, self._resume_rv, timeout, read_timeout=timeout + 30.0)
        async with contextlib.aclosing(events):
            async for event in events:
                obj = event.get("object") or {}
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self._resume_rv = str(rv)
                kind = event.get("type")
                if kind == "BOOKMARK":
                    continue
                if kind == "DELETED":
                    log.warning("node %s was deleted; labels wait for it to come back", self.node_name)
                    self.actual = None
                    self._actual_rv = None
                    continue
                self._observe(obj)
        return anyio.current_time() - began >= timeout / 2

    async def _writer(self) -> None:
        retry = self._patch_retry
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if self.actual is None or self.api is None or not self._desired_known:
                continue  # set again once the Node has been seen and the labels are known
            changes = self._changes(self.actual)
            if not changes:
                self._synced.set()
                continue
            try:
                self.stats.patches += 1
                node = await self.api.patch_node_labels(self.node_name, changes)
            except Exception as exc:
                self.stats.failed_patches += 1
                delay = retry.failed("patch node", exc)
                self._log_error("patching labels", exc, delay)
                await anyio.sleep(delay)
                self._dirty.set()
                continue
            self._metrics.label_write()
            labels = (node.get("metadata") or {}).get("labels") or {}
            lost = sorted(k for k, v in changes.items() if labels.get(k) != v)
            self._observe(node)
            if lost:
                # Accepted but not carried (an admission webhook rewrote it?): patching again at
                # once would be a hot loop against the API server.
                delay = retry.failed("patch node", NOT_APPLIED)
                self._log_error("patching labels", f"accepted but not applied: {', '.join(lost)}", delay)
                await anyio.sleep(delay)
                self._dirty.set()
                continue
            self._refresh_timestamp = False
            log.log(
                logging.DEBUG if changes.keys() == {TIMESTAMP_LABEL} else logging.INFO,
                "node %s: labels applied (%d set, %d removed)",
                self.node_name,
                sum(v is not None for v in changes.values()),
                sum(v is None for v in changes.values()),
            )


async def run_reconciler(
    node_name: str,
    desired: AsyncIterable[Mapping[str, str]],
    **options: Any,
) -> None:
    """Reconcile `node_name` to each label set `desired` yields (the agent yields a new set
    whenever the inventory, health or config changes). Returns only when cancelled or when
    `desired` ends."""
    reconciler = NodeLabelReconciler(node_name, **options)
    async with anyio.create_task_group() as tg:
        tg.start_soon(reconciler.run, name=f"labels:{node_name}")
        async for labels in desired:
            reconciler.set_desired(labels)
        tg.cancel_scope.cancel()
