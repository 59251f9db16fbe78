"""A small real Kubernetes API server (aiohttp) for the parts of the API the node agent uses.

Not a mock: a real HTTP server on a real socket, with the API server's semantics for what it
implements (docs/apiserver.md lists exactly what that is): Nodes (get, list and watch with a
metadata.name field selector, resourceVersion, bookmarks, 410 Gone for a compacted
resourceVersion, JSON merge patch, strategic merge patch for maps, JSON patch, optimistic
concurrency) and Events (create, patch, list), plus RuntimeClasses (get, list) for
`nvplugin doctor`. Faults can be injected per verb (status codes, Retry-After, delays, requests
that never answer, connections closed mid-response, watches that end at once or expire), for a
number of requests or until cleared, and every request is counted per node and verb, and logged
with its time (for request rates over a fault window).

Tests, benchmarks and `nvplugin simulate` use it; it never listens on anything but the address
it is given (127.0.0.1 by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import re
import time
import uuid as uuidlib
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9\-_.]*[A-Za-z0-9])?)?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9\-_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9\-.]*[a-z0-9])?$")

VERBS = (
    "get",
    "list",
    "watch",
    "patch",
    "create-event",
    "patch-event",
    "list-events",
    "get-runtimeclass",
    "list-runtimeclasses",
)

# What a faulty request gets (after `delay`): "answer": the `status` (None: the normal answer,
# only delayed); "hang": no answer at all until the server stops (the client's timeout must
# fire); "close": the answer starts, then the connection is closed mid-body (a patch is applied
# first: the answer is what is lost; a watch sends what it has, then the stream breaks);
# "end" (watch only): a 200 whose stream ends at once; "expire" (watch only): a 200 whose
# stream is one ERROR event with code 410, as for a compacted resourceVersion.
ACTIONS = ("answer", "hang", "close", "end", "expire")
WATCH_ONLY_ACTIONS = ("end", "expire")


@dataclass
class Fault:
    """An injected failure for the next `times` requests of `verb` (optionally one node's);
    `times=None`: every such request until `clear_faults()`."""

    verb: str
    status: int | None = None  # None: only the delay
    times: int | None = 1
    retry_after: int | None = None
    node: str | None = None
    delay: float = 0.0
    message: str = "injected fault"
    action: str = "answer"


@dataclass(eq=False)
class _Watcher:
    node: str | None  # None: every node
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiServerError(Exception):
    def __init__(self, code: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def response(self) -> web.Response:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return web.json_response(
            status_body(self.code, _REASONS.get(self.code, "Unknown"), self.message),
            status=self.code,
            headers=headers,
        )


# --- patch semantics


def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge for the fields a Node's metadata has: maps merge as in a JSON merge
    patch. Directives ($patch, $retainKeys, $setElementOrder...) are refused."""

    def check(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                if key.startswith("$"):
                    raise ApiServerError(422, f"{path}{key}: strategic merge directives are not supported")
                check(sub, f"{path}{key}.")

    check(patch, "")
    return json_merge_patch(target, patch)


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiServerError(422, f"JSON patch path {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 add, remove, replace and test on objects (no array indices: Node metadata
    maps are what the agent patches)."""
    if not isinstance(ops, list):
        raise ApiServerError(400, "a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiServerError(400, f"malformed JSON patch operation {op!r}")
        parts = _pointer(op["path"])
        if not parts:
            raise ApiServerError(422, "JSON patch on the whole object is not supported")
        parent = doc
        for part in parts[:-1]:
            if not isinstance(parent, dict) or part not in parent:
                raise ApiServerError(422, f"JSON patch path {op['path']!r} does not exist")
            parent = parent[part]
        if not isinstance(parent, dict):
            raise ApiServerError(422, f"JSON patch path {op['path']!r} is not inside an object")
        last = parts[-1]
        kind = op["op"]
        if kind in ("add", "replace"):
            if kind == "replace" and last not in parent:
                raise ApiServerError(422, f"replace: {op['path']!r} does not exist")
            parent[last] = copy.deepcopy(op.get("value"))
        elif kind == "remove":
            if last not in parent:
                raise ApiServerError(422, f"remove: {op['path']!r} does not exist")
            del parent[last]
        elif kind == "test":
            if parent.get(last) != op.get("value"):
                raise ApiServerError(422, f"test failed at {op['path']!r}")
        else:
            raise ApiServerError(422, f"JSON patch op {kind!r} is not supported")
    return doc


def validate_labels(labels: Any) -> None:
    if labels is None:
        return
    if not isinstance(labels, dict):
        raise ApiServerError(422, "metadata.labels: must be a map of strings")
    for key, value in labels.items():
        prefix, slash, name = key.rpartition("/")
        if (
            not isinstance(value, str)
            or len(value) > 63
            or not _LABEL_VALUE.match(value)
            or len(name) > 63
            or not _LABEL_NAME.match(name)
            or (slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)))
        ):
            raise ApiServerError(
                422,
                f'Node is invalid: metadata.labels: Invalid value: "{key}={value}": a valid label '
                "must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character (at most 63 characters)",
            )


class FakeApiServer:
    """Start with `async with FakeApiServer() as api:`; `api.url` is where it listens."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        history: int = 10_000,
        bookmark_interval: float = 60.0,
        default_watch_timeout: float = 1800.0,
        token: str | None = "nvplugin-test-token",
    ) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("the test API server listens on loopback only")
        self.host = host
        self.port = port
        self.token = token
        self.bookmark_interval = bookmark_interval
        # BOOKMARK events written to watches so far.
        self.bookmarks_sent = 0
        self.default_watch_timeout = default_watch_timeout
        self.nodes: dict[str, dict[str, Any]] = {}
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.runtime_classes: dict[str, dict[str, Any]] = {}
        self._rv = itertools.count(1)
        self.resource_version = 0
        # (rv, type, node name, object) of every change, oldest first.
        self._history: deque[tuple[int, str, str, dict[str, Any]]] = deque(maxlen=history)
        # Highest resourceVersion a watch can no longer resume from.
        self._compacted = 0
        self._watchers: dict[str | None, set[_Watcher]] = {}
        self.faults: list[Fault] = []
        # A mutating admission step for clients' Node patches (not set_labels): called with the
        # patched Node before it is stored, may change it (a webhook that rewrites labels).
        self.admission: Callable[[dict[str, Any]], None] | None = None
        self.requests: Counter[tuple[str, str]] = Counter()
        # (time.monotonic(), node, verb) of the latest requests, faults included.
        self.request_log: deque[tuple[float, str, str]] = deque(maxlen=100_000)
        self.watches_opened: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    # --- lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen (again) on the same port; state survives a stop/start (an API outage)."""
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_get("/api/v1/nodes", self._list_nodes)
        app.router.add_get("/api/v1/nodes/{name}", self._get_node)
        app.router.add_patch("/api/v1/nodes/{name}", self._patch_node)
        app.router.add_post("/api/v1/namespaces/{ns}/events", self._create_event)
        app.router.add_get("/api/v1/namespaces/{ns}/events", self._list_events)
        app.router.add_patch("/api/v1/namespaces/{ns}/events/{name}", self._patch_event)
        app.router.add_get("/apis/node.k8s.io/v1/runtimeclasses", self._list_runtime_classes)
        app.router.add_get("/apis/node.k8s.io/v1/runtimeclasses/{name}", self._get_runtime_class)
        app.router.add_get("/version", self._version)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=4096, reuse_address=True)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """Stop listening and drop every connection, watches included."""
        self.end_watches()
        for task in list(self._handlers):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """A kubeconfig pointing at this server, for the real client's config loader."""
        user: dict[str, Any] = {"token": self.token} if self.token else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "agent", "user": user}],
            "contexts": [
                {"name": "fake", "context": {"cluster": "fake", "user": "agent", "namespace": namespace}}
            ],
            "current-context": "fake",
        }
        target = Path(path)
        target.write_text(json.dumps(config))
        return target

    # --- state helpers for tests

    def add_node(self, name: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        rv = next(self._rv)
        node = {
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "uid": str(uuidlib.uuid4()),
                "resourceVersion": str(rv),
                "creationTimestamp": _now(),
                "labels": {"kubernetes.io/hostname": name, **(labels or {})},
            },
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": _now()}]},
        }
        self.nodes[name] = node
        self._record(rv, "ADDED", name, node)
        return copy.deepcopy(node)

    def delete_node(self, name: str) -> None:
        node = self.nodes.pop(name)
        rv = next(self._rv)
        node = copy.deepcopy(node)
        node["metadata"]["resourceVersion"] = str(rv)
        self._record(rv, "DELETED", name, node)

    def set_resources(
        self, name: str, capacity: Mapping[str, str], allocatable: Mapping[str, str] | None = None
    ) -> None:
        """The kubelet reports the node's capacity and allocatable (allocatable defaults to the
        capacity): a status update, seen by watches like any other change."""
        node = copy.deepcopy(self.nodes[name])
        node["status"]["capacity"] = dict(capacity)
        node["status"]["allocatable"] = dict(capacity if allocatable is None else allocatable)
        self._replace(name, node)

    def add_runtime_class(self, name: str, handler: str) -> dict[str, Any]:
        """A RuntimeClass (node.k8s.io/v1, cluster-scoped)."""
        runtime_class = {
            "kind": "RuntimeClass",
            "apiVersion": "node.k8s.io/v1",
            "metadata": {
                "name": name,
                "uid": str(uuidlib.uuid4()),
                "resourceVersion": str(next(self._rv)),
                "creationTimestamp": _now(),
            },
            "handler": handler,
        }
        self.runtime_classes[name] = runtime_class
        return copy.deepcopy(runtime_class)

    def node(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.nodes[name])

    def labels(self, name: str) -> dict[str, str]:
        return dict(self.nodes[name]["metadata"].get("labels") or {})

    def set_labels(self, name: str, changes: Mapping[str, str | None]) -> None:
        """Another client edits labels (a merge patch that is not counted as ours)."""
        self._update(name, {"metadata": {"labels": dict(changes)}}, json_merge_patch)

    def touch(self, name: str) -> None:
        """A status heartbeat from the kubelet: a MODIFIED event with the labels unchanged."""
        node = copy.deepcopy(self.nodes[name])
        node["status"]["conditions"][0]["lastHeartbeatTime"] = f"{_now()}#{next(self._rv)}"
        self._replace(name, node)

    def compact(self) -> None:
        """Forget the change history: a watch resuming from an older version gets 410 Gone."""
        self._history.clear()
        self._compacted = self.resource_version

    def inject(self, fault: Fault) -> None:
        if fault.verb not in VERBS:
            raise ValueError(f"unknown verb {fault.verb!r}; expected one of {', '.join(VERBS)}")
        if fault.action not in ACTIONS:
            raise ValueError(f"unknown fault action {fault.action!r}; expected one of {', '.join(ACTIONS)}")
        if fault.action in WATCH_ONLY_ACTIONS and fault.verb != "watch":
            raise ValueError(
                f"fault action {fault.action!r} applies to the watch verb only, not {fault.verb!r}"
            )
        self.faults.append(fault)

    def clear_faults(self) -> None:
        """End every injected fault (requests already hanging stay hung until stop())."""
        self.faults.clear()

    def requests_since(self, since: float, node: str | None = None, until: float | None = None) -> int:
        """Requests (of `node`, or all) received between the time.monotonic() values given."""
        return sum(
            1
            for at, who, _ in self.request_log
            if at >= since and (until is None or at <= until) and node in (None, who)
        )

    def peak_rate(self, since: float, node: str | None = None, window: float = 1.0) -> int:
        """The most requests (of `node`, or all) received in any `window` seconds since `since`."""
        times = [at for at, who, _ in self.request_log if at >= since and node in (None, who)]
        peak, first = 0, 0
        for last, at in enumerate(times):
            while at - times[first] > window:
                first += 1
            peak = max(peak, last - first + 1)
        return peak

    def end_watches(self, name: str | None = None) -> None:
        """End the open watches of `name` (None: every watch) cleanly, as the API server does
        at a watch's timeout or when it restarts: the client has to watch again."""
        for key, watchers in self._watchers.items():
            if name in (None, key):
                for watcher in watchers:
                    watcher.queue.put_nowait(None)

    def open_watches(self, name: str | None = None) -> int:
        return len(self._watchers.get(name, ()))

    def count(self, verb: str, node: str | None = None) -> int:
        if node is not None:
            return self.requests[(node, verb)]
        return sum(n for (_, v), n in self.requests.items() if v == verb)

    # --- internals

    def _record(self, rv: int, kind: str, name: str, node: dict[str, Any]) -> None:
        self.resource_version = rv
        snapshot = copy.deepcopy(node)
        self._history.append((rv, kind, name, snapshot))
        if self._history.maxlen is not None and len(self._history) == self._history.maxlen:
            self._compacted = max(self._compacted, self._history[0][0] - 1)
        event = {"type": kind, "object": snapshot}
        for key in (name, None):
            for watcher in self._watchers.get(key, ()):
                watcher.queue.put_nowait(event)

    def _replace(self, name: str, node: dict[str, Any]) -> bool:
        """Store `node` if it differs: a no-op write keeps the resourceVersion, as the API
        server does."""
        old = self.nodes[name]
        if _without_rv(node) == _without_rv(old):
            return False
        validate_labels(node["metadata"].get("labels"))
        rv = next(self._rv)
        node["metadata"]["resourceVersion"] = str(rv)
        self.nodes[name] = node
        self._record(rv, "MODIFIED", name, node)
        return True

    def _update(self, name: str, patch: Any, apply: Any, *, admit: bool = False) -> dict[str, Any]:
        old = self.nodes[name]
        sent_rv = patch.get("metadata", {}).get("resourceVersion") if isinstance(patch, dict) else None
        if sent_rv is not None and sent_rv != old["metadata"]["resourceVersion"]:
            raise ApiServerError(
                409,
                f'Operation cannot be fulfilled on nodes "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
            )
        new = apply(copy.deepcopy(old), patch)
        if not isinstance(new, dict) or not isinstance(new.get("metadata"), dict):
            raise ApiServerError(422, "the patch removed the object's metadata")
        if new["metadata"].get("name") != name or new["metadata"].get("uid") != old["metadata"]["uid"]:
            raise ApiServerError(422, "metadata.name and metadata.uid cannot be changed")
        if admit and self.admission is not None:
            self.admission(new)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        self._replace(name, new)
        return self.nodes[name]

    async def _gate(self, request: web.Request, verb: str, node: str) -> str:
        """Count the request, check auth and apply any injected fault; returns the action the
        handler still has to carry out ("answer": none, "close", "end" or "expire")."""
        self.requests[(node, verb)] += 1
        self.request_log.append((time.monotonic(), node, verb))
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            raise ApiServerError(401, "Unauthorized")
        for fault in self.faults:
            if fault.verb == verb and fault.node in (None, node):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.action == "hang":
                    await self._hang()
                if fault.status is not None:
                    raise ApiServerError(fault.status, fault.message, fault.retry_after)
                return fault.action
        return "answer"

    async def _hang(self) -> None:
        """Never answer: wait until stop() cancels this handler."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await asyncio.Event().wait()
        finally:
            self._handlers.discard(task)

    @staticmethod
    async def _cut(request: web.Request, body: Any, status: int = 200) -> web.StreamResponse:
        """Start a JSON answer, send half of it and close the connection."""
        data = json.dumps(body).encode()
        response = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        if request.transport is not None:
            request.transport.close()
        return response

    @staticmethod
    def _selected_node(request: web.Request) -> str | None:
        selector = request.query.get("fieldSelector", "")
        if request.query.get("labelSelector"):
            raise ApiServerError(400, "labelSelector is not supported by this test server")
        if not selector:
            return None
        match = re.fullmatch(r"metadata\.name==?([^,]+)", selector)
        if not match:
            raise ApiServerError(
                400, f"field selector {selector!r} is not supported; only metadata.name=<name>"
            )
        return match.group(1)

    # --- handlers

    async def _get_runtime_class(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            await self._gate(request, "get-runtimeclass", "*")
            if name not in self.runtime_classes:
                raise ApiServerError(404, f'runtimeclasses.node.k8s.io "{name}" not found')
        except ApiServerError as exc:
            return exc.response()
        return web.json_response(self.runtime_classes[name])

    async def _list_runtime_classes(self, request: web.Request) -> web.Response:
        try:
            await self._gate(request, "list-runtimeclasses", "*")
        except ApiServerError as exc:
            return exc.response()
        return web.json_response(
            {
                "kind": "RuntimeClassList",
                "apiVersion": "node.k8s.io/v1",
                "metadata": {"resourceVersion": str(self.resource_version)},
                "items": list(self.runtime_classes.values()),
            }
        )

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"major": "1", "minor": "31", "gitVersion": "v1.31.0-nvplugin-test"})

    async def _answer(
        self, request: web.Request, action: str, body: Any, status: int = 200
    ) -> web.StreamResponse:
        if action == "close":
            return await self._cut(request, body, status)
        return web.json_response(body, status=status)

    async def _get_node(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        try:
            action = await self._gate(request, "get", name)
            if name not in self.nodes:
                raise ApiServerError(404, f'nodes "{name}" not found')
        except ApiServerError as exc:
            return exc.response()
        return await self._answer(request, action, self.nodes[name])

    async def _list_nodes(self, request: web.Request) -> web.StreamResponse:
        watch = request.query.get("watch", "").lower() in ("true", "1")
        try:
            name = self._selected_node(request)
            action = await self._gate(request, "watch" if watch else "list", name or "*")
        except ApiServerError as exc:
            return exc.response()
        if watch:
            return await self._watch(request, name, action)
        items = [n for key, n in self.nodes.items() if name in (None, key)]
        body = {
            "kind": "NodeList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self.resource_version)},
            "items": items,
        }
        return await self._answer(request, action, body)

    async def _watch(self, request: web.Request, name: str | None, action: str) -> web.StreamResponse:
        rv_text = request.query.get("resourceVersion", "")
        bookmarks = request.query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        timeout = float(request.query.get("timeoutSeconds", self.default_watch_timeout))
        watcher = _Watcher(name)
        initial: list[dict[str, Any]] = []
        gone = False
        if action == "end":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await response.write_eof()
            return response
        if action == "expire":
            gone = True
        elif rv_text in ("", "0"):
            initial = [
                {"type": "ADDED", "object": copy.deepcopy(n)}
                for key, n in self.nodes.items()
                if name in (None, key)
            ]
        else:
            try:
                since = int(rv_text)
            except ValueError:
                return ApiServerError(400, f"invalid resourceVersion {rv_text!r}").response()
            if since < self._compacted:
                gone = True
            else:
                initial = [
                    {"type": kind, "object": copy.deepcopy(obj)}
                    for rv, kind, key, obj in self._history
                    if rv > since and name in (None, key)
                ]
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if gone:
            error = status_body(
                410, "Expired", f"too old resource version: {rv_text} ({self._compacted + 1})"
            )
            await response.write(json.dumps({"type": "ERROR", "object": error}).encode() + b"\n")
            return response
        self._watchers.setdefault(name, set()).add(watcher)
        if name is not None:
            self.watches_opened[name] += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        deadline = time.monotonic() + timeout
        try:
            for first in initial:
                await response.write(json.dumps(first).encode() + b"\n")
            if action == "close":
                # the stream breaks: no terminating chunk, the connection just goes away
                if request.transport is not None:
                    request.transport.close()
                return response
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wait = min(remaining, self.bookmark_interval) if bookmarks else remaining
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if bookmarks and time.monotonic() < deadline:
                        item = {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": "Node",
                                "apiVersion": "v1",
                                "metadata": {"resourceVersion": str(self.resource_version)},
                            },
                        }
                    else:
                        continue
                if item is None:
                    break
                await response.write(json.dumps(item).encode() + b"\n")
                if item.get("type") == "BOOKMARK":
                    self.bookmarks_sent += 1
        except (ConnectionResetError, asyncio.CancelledError):
            # The watcher hung up or the stand-in is shutting down: the stream simply ends.
            pass
        finally:
            self._watchers.get(name, set()).discard(watcher)
            self._handlers.discard(task)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write_eof()
        return response

    async def _read_patch(self, request: web.Request) -> tuple[Any, Any]:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        appliers = {
            MERGE_PATCH: json_merge_patch,
            STRATEGIC_MERGE_PATCH: strategic_merge_patch,
            JSON_PATCH: json_patch,
        }
        if content_type not in appliers:
            raise ApiServerError(
                415,
                f"the body of the request was in an unknown format - accepted media types include: "
                f"{', '.join(appliers)}",
            )
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            raise ApiServerError(400, f"the patch is not valid JSON: {exc}") from None
        return body, appliers[content_type]

    async def _patch_node(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        try:
            action = await self._gate(request, "patch", name)
            if name not in self.nodes:
                raise ApiServerError(404, f'nodes "{name}" not found')
            patch, apply = await self._read_patch(request)
            node = self._update(name, patch, apply, admit=True)
        except ApiServerError as exc:
            return exc.response()
        return await self._answer(request, action, node)

    async def _create_event(self, request: web.Request) -> web.StreamResponse:
        ns = request.match_info["ns"]
        try:
            try:
                body = json.loads(await request.read())
            except ValueError as exc:
                raise ApiServerError(400, f"the event is not valid JSON: {exc}") from None
            involved = (body.get("involvedObject") or {}).get("name", "")
            action = await self._gate(request, "create-event", involved)
            meta = body.setdefault("metadata", {})
            if not meta.get("name"):
                if not meta.get("generateName"):
                    raise ApiServerError(422, "Event is invalid: metadata.name: Required value")
                meta["name"] = meta["generateName"] + uuidlib.uuid4().hex[:5]
            if (ns, meta["name"]) in self.events:
                raise ApiServerError(409, f'events "{meta["name"]}" already exists')
            for required in ("reason", "involvedObject"):
                if not body.get(required):
                    raise ApiServerError(422, f"Event is invalid: {required}: Required value")
            meta["namespace"] = ns
            meta["uid"] = str(uuidlib.uuid4())
            meta["resourceVersion"] = str(next(self._rv))
            self.events[(ns, meta["name"])] = body
        except ApiServerError as exc:
            return exc.response()
        return await self._answer(request, action, body, status=201)

    async def _patch_event(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["ns"], request.match_info["name"]
        try:
            involved = (self.events.get((ns, name), {}).get("involvedObject") or {}).get("name", "")
            action = await self._gate(request, "patch-event", involved)
            if (ns, name) not in self.events:
                raise ApiServerError(404, f'events "{name}" not found')
            patch, apply = await self._read_patch(request)
            event = apply(copy.deepcopy(self.events[(ns, name)]), patch)
            event["metadata"]["resourceVersion"] = str(next(self._rv))
            self.events[(ns, name)] = event
        except ApiServerError as exc:
            return exc.response()
        return await self._answer(request, action, event)

    async def _list_events(self, request: web.Request) -> web.StreamResponse:
        ns = request.match_info["ns"]
        try:
            action = await self._gate(request, "list-events", "*")
        except ApiServerError as exc:
            return exc.response()
        items = [e for (n, _), e in self.events.items() if n == ns]
        body = {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": items}
        return await self._answer(request, action, body)


def _without_rv(node: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in node["metadata"].items() if k != "resourceVersion"}
    return {**node, "metadata": meta}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
