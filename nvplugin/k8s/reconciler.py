"""Keeps this node's labels true: watches its own Node, patches only what differs.

One watch (fieldSelector metadata.name=<node>) feeds the last seen labels; a writer compares
them with the desired labels and sends one JSON merge patch of the changed keys (None deletes
an owned key nobody wants any more). In steady state nothing is written: watch events that
change nothing (kubelet heartbeats, other controllers) only cost a dict comparison.

Failures never reach the caller: every API error is logged and retried with jittered
exponential backoff; a 429 waits at least its Retry-After; a 410 on the watch relists and
resumes. `run()` returns only when cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nvplugin.core.labels import is_owned_key, label_diff, valid_only
from nvplugin.k8s.client import ApiError, NodeApi

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


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with equal jitter: attempt n waits uniform(d/2, d), d = base*2^n
    capped at `cap`."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        d = min(self.cap, self.base * (2 ** min(attempt, 30)))
        return rng.uniform(d / 2, d)


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
        connect: Callable[[], Awaitable[NodeApi]] | None = None,
        timestamp: bool = True,
        owned: Callable[[str], bool] = is_owned_key,
        on_node_labels: NodeLabelsCallback | None = None,
        backoff: Backoff = Backoff(),
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
        self._connect = connect or (lambda: NodeApi.connect(kubeconfig))
        self._timestamp = timestamp
        self._owned = owned
        self._on_node_labels = on_node_labels
        self._backoff = backoff
        self._watch_timeout = watch_timeout
        self._clock = clock
        self._rng = rng or random.Random()
        self._desired: dict[str, str] = {}
        # Nothing is written before the agent has said what it wants: an empty start must not
        # wipe the labels a previous run left (they stay until the first set_desired).
        self._desired_known = False
        self._dirty = asyncio.Event()
        self._synced = asyncio.Event()
        # The connection, published once the Node has been read (the Event publisher and the
        # writer need its uid and labels, not just a client).
        self.api: NodeApi | None = None
        self._client: NodeApi | None = None
        self.node_uid: str | None = None
        # Labels of the newest Node version seen (watch or patch answer); None: not seen yet.
        self.actual: dict[str, str] | None = None
        self._actual_rv: int | None = None
        self._last_notified: dict[str, str] | None = None
        self.stats = ReconcilerStats()
        # Metrics hooks: a successful patch of the Node; a failed API call (what failed).
        self.on_write: Callable[[], None] | None = None
        self.on_api_error: Callable[[str], None] | None = None
        self._last_logged_error: str | None = None
        if desired is not None:
            self.set_desired(desired)

    # --- the agent's side

    def set_desired(self, labels: Mapping[str, str]) -> None:
        """New desired labels (timestamp excluded: the reconciler writes it). Never blocks."""
        good, bad = valid_only(labels)
        if bad:
            log.error(
                "leaving out labels the API server would refuse (values must be at most 63 "
                "characters of A-Z a-z 0-9 - _ . and start and end alphanumeric): %s",
                ", ".join(bad),
            )
        if good != self._desired or not self._desired_known:
            self._desired = good
            self._desired_known = True
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

    async def run(self) -> None:
        """Reconcile until cancelled. Never raises anything else."""
        writer = asyncio.create_task(self._writer(), name=f"labels-writer:{self.node_name}")
        try:
            await self._watch_forever()
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if self._client is not None:
                with contextlib.suppress(Exception):
                    await self._client.close()

    # --- internals

    def _changes(self, actual: Mapping[str, str]) -> dict[str, str | None]:
        """The patch to send; empty when the Node already carries what we want (the timestamp's
        value is never compared, so this does not depend on the clock)."""
        if not self._desired_known:
            return {}
        stamp = str(int(self._clock())) if self._timestamp else None
        return label_diff(self._desired, actual, timestamp=stamp, owned=self._owned)

    def _log_error(self, what: str, exc: BaseException, delay: float) -> None:
        text = f"{what}: {exc}"
        self.stats.errors += 1
        if self.on_api_error is not None:
            self.on_api_error(what)
        self.stats.last_error = text
        level = logging.WARNING if text != self._last_logged_error else logging.DEBUG
        self._last_logged_error = text
        log.log(level, "node %s: %s; retrying in %.1f s", self.node_name, text, delay)

    def _delay(self, exc: BaseException, attempt: int) -> float:
        if isinstance(exc, ApiError) and exc.status == 429:
            self.stats.throttled += 1
            wait = exc.retry_after if exc.retry_after is not None else self._backoff.delay(attempt, self._rng)
            # at least Retry-After, plus a little jitter so many nodes do not return together
            return wait + self._rng.uniform(0, min(1.0, 0.1 * wait + 0.05))
        return self._backoff.delay(attempt, self._rng)

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
        attempt = 0
        # Where the watch resumes; None: list first (start, or the version was compacted away).
        self._resume_rv: str | None = None
        while True:
            try:
                api = await self._api()
                if self._resume_rv is None:
                    self._resume_rv = await self._relist(api)
                began = time.monotonic()
                await self._watch_once(api)
                if time.monotonic() - began >= 1.0:
                    attempt = 0
                    continue  # the server ended the watch: resume from the last version seen
                # A watch that ends at once (a proxy, a broken server) must not become a hot loop.
                delay = self._backoff.delay(attempt, self._rng)
                log.debug("node %s: watch ended at once; re-watching in %.1f s", self.node_name, delay)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.status == 410:
                    # our resourceVersion was compacted away: relist now, no backoff
                    self.stats.relists_410 += 1
                    self._resume_rv = None
                    log.info("node %s: watch expired (410), relisting", self.node_name)
                    continue
                delay = self._delay(exc, attempt)
                self._log_error("watching the node", exc, delay)
            except Exception as exc:
                delay = self._backoff.delay(attempt, self._rng)
                log.exception("node %s: unexpected error in the label watch", self.node_name)
                self.stats.errors += 1
                self.stats.last_error = repr(exc)
                self._resume_rv = None
            attempt += 1
            await asyncio.sleep(delay)

    async def _relist(self, api: NodeApi) -> str:
        self.stats.lists += 1
        node, list_rv = await api.list_node(self.node_name)
        if node is None:
            raise ApiError("list node", 404, f"node {self.node_name!r} does not exist (check NODE_NAME)")
        self._actual_rv = None  # a fresh list is authoritative
        self._observe(node)
        self.api = api
        return str((node.get("metadata") or {}).get("resourceVersion") or list_rv)

    async def _watch_once(self, api: NodeApi) -> None:
        """One watch request from the resume version, until the server ends it."""
        assert self._resume_rv is not None
        self.stats.watches += 1
        low, high = self._watch_timeout
        timeout = self._rng.randint(low, high)
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

    async def _writer(self) -> None:
        attempt = 0
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
                if self.on_write is not None:
                    self.on_write()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.failed_patches += 1
                delay = self._delay(exc, attempt)
                if isinstance(exc, ApiError) and exc.status == 409:
                    delay = self._rng.uniform(0, 0.1)  # a conflict is retried at once with fresh labels
                self._log_error("patching labels", exc, delay)
                attempt += 1
                await asyncio.sleep(delay)
                self._dirty.set()
                continue
            attempt = 0
            log.info(
                "node %s: labels applied (%d set, %d removed)",
                self.node_name,
                sum(v is not None for v in changes.values()),
                sum(v is None for v in changes.values()),
            )
            self._observe(node)


async def run_reconciler(
    node_name: str,
    desired: AsyncIterable[Mapping[str, str]],
    **options: Any,
) -> None:
    """Reconcile `node_name` to each label set `desired` yields (the agent yields a new set
    whenever the inventory, health or config changes). Returns only when cancelled or when
    `desired` ends."""
    reconciler = NodeLabelReconciler(node_name, **options)
    task = asyncio.create_task(reconciler.run(), name=f"labels:{node_name}")
    try:
        async for labels in desired:
            reconciler.set_desired(labels)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
