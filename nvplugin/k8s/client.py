"""The few Kubernetes API calls the agent makes, over kubernetes_asyncio, with raw JSON.

kubernetes_asyncio is imported inside `NodeApi.connect`, never at module import: with labels
disabled it is never loaded, and with labels enabled it is loaded only when the agent starts the
reconciler (after the kubelet registration). Responses are read as plain JSON (no model
objects): the agent only needs labels, the resourceVersion and the uid, and deserialising whole
Node objects on every watch event would cost far more than the work itself.

Every request has a deadline of its own (an anyio cancel scope): a hung API server turns into
an ApiError with `timed_out` set, which the callers retry (nvplugin.k8s.retry); a watch must
start answering within the same deadline, then may stay open until its timeoutSeconds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import anyio

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
# Where the in-cluster service account lives (the downward API gives NODE_NAME).
SERVICE_HOST_ENV = "KUBERNETES_SERVICE_HOST"
# A watch event is one JSON line; etcd refuses objects over 1.5 MiB, so a longer line is garbage.
MAX_WATCH_LINE = 16 * 1024 * 1024


class ApiError(Exception):
    """A failed API call. status 0: no HTTP answer (connection refused, reset, timed out:
    `timed_out`, closed mid-answer)."""

    def __init__(
        self,
        call: str,
        status: int,
        message: str,
        retry_after: float | None = None,
        *,
        timed_out: bool = False,
    ) -> None:
        super().__init__(f"{call}: {status or 'no answer'}: {message}")
        self.call = call
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.timed_out = timed_out


def _no_answer(call: str, exc: Exception, deadline: float) -> ApiError:
    if isinstance(exc, TimeoutError):
        return ApiError(call, 0, f"no answer within {deadline:g} s (TimeoutError)", timed_out=True)
    return ApiError(call, 0, f"{type(exc).__name__}: {exc}")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


async def _error(call: str, response: Any) -> ApiError:
    try:
        body = await response.read()
        message = json.loads(body).get("message", body.decode(errors="replace"))
    except Exception:  # an unreadable error body still gives the status
        message = response.reason or ""
    return ApiError(call, response.status, message, _retry_after(response.headers))


async def _lines(call: str, content: Any) -> AsyncIterator[bytes]:
    """The stream's lines, without the newline, until it ends (aiohttp's readline() refuses
    lines over 128 KiB, and a Node can be larger than that)."""
    pending = bytearray()
    while True:
        try:
            chunk = await content.readany()
        except Exception as exc:  # aiohttp.ClientPayloadError (cut mid-stream), the read timeout
            raise ApiError(
                call, 0, f"watch stream broke: {type(exc).__name__}", timed_out=isinstance(exc, TimeoutError)
            ) from None
        if not chunk:
            return  # the server ended the stream
        start = len(pending)
        pending += chunk
        while (end := pending.find(b"\n", start)) >= 0:
            yield bytes(pending[:end])
            del pending[: end + 1]
            start = 0
        if len(pending) > MAX_WATCH_LINE:
            raise ApiError(call, 0, f"a watch event longer than {MAX_WATCH_LINE} bytes")


class RateLimit:
    """client-go's token bucket (NVIDIA's --kube-api-qps / --kube-api-burst): up to `burst`
    requests at once, then `qps` a second. Every request of the agent takes a token first."""

    def __init__(self, qps: float, burst: int, clock: Any = time.monotonic) -> None:
        self.qps = qps
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._clock = clock
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now

    async def take(self) -> None:
        self._refill()
        while self._tokens < 1.0 - 1e-9:  # (float sums of refills)
            await anyio.sleep((1.0 - self._tokens) / self.qps)
            self._refill()
        self._tokens -= 1.0


class NodeApi:
    """Node get/list/watch/patch and Event create/patch for one agent."""

    def __init__(
        self,
        api_client: Any,
        own_client: bool = True,
        request_timeout: float = 30.0,
        rate_limit: RateLimit | None = None,
    ) -> None:
        from kubernetes_asyncio import client

        # Every request is abandoned after this long without its answer (a watch: without the
        # start of its answer): a hung API server must not stall the labels forever.
        self.request_timeout = request_timeout
        self._rate_limit = rate_limit
        self._api_client = api_client
        self._core = client.CoreV1Api(api_client)
        self._own_client = own_client
        self.requests = 0

    @classmethod
    async def connect(
        cls,
        kubeconfig: str | None = None,
        *,
        pool_size: int = 4,
        request_timeout: float = 30.0,
        rate_limit: RateLimit | None = None,
    ) -> NodeApi:
        """In-cluster config when running in a pod (KUBERNETES_SERVICE_HOST is set) and no
        kubeconfig is named; else the kubeconfig (the named file, $KUBECONFIG or
        ~/.kube/config). Raises ApiError(0, ...) with the loader's reason when neither works."""
        from kubernetes_asyncio import client, config

        configuration = client.Configuration()
        try:
            if kubeconfig is None and os.environ.get(SERVICE_HOST_ENV):
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            else:
                await config.load_kube_config(
                    config_file=kubeconfig, client_configuration=configuration, persist_config=False
                )
        except Exception as exc:  # the loaders raise ConfigException, OSError, YAML errors...
            where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise ApiError(
                "load config",
                0,
                f"no in-cluster service account and no usable kubeconfig at {where}: {exc}",
            ) from None
        configuration.connection_pool_maxsize = pool_size
        return cls(client.ApiClient(configuration), request_timeout=request_timeout, rate_limit=rate_limit)

    async def close(self) -> None:
        if self._own_client:
            await self._api_client.close()

    async def _json(self, call: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one request within the request timeout; the decoded 2xx answer, or ApiError."""
        if self._rate_limit is not None:
            await self._rate_limit.take()
        self.requests += 1
        try:
            with anyio.fail_after(self.request_timeout):
                response = await method(*args, _preload_content=False, **kwargs)
                try:
                    if not 200 <= response.status <= 299:
                        raise await _error(call, response)
                    body = await response.read()
                finally:
                    response.release()
        except ApiError:
            raise
        except Exception as exc:  # aiohttp.ClientError, OSError, TimeoutError
            raise _no_answer(call, exc, self.request_timeout) from None
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ApiError(call, 0, f"unreadable answer: {exc}") from None

    async def list_node(self, name: str) -> tuple[dict[str, Any] | None, str]:
        """The Node (None when it does not exist) and the list's resourceVersion."""
        body = await self._json("list node", self._core.list_node, field_selector=f"metadata.name={name}")
        items = body.get("items") or []
        return (items[0] if items else None), str(body.get("metadata", {}).get("resourceVersion", ""))

    async def get_runtime_class(self, name: str) -> dict[str, Any] | None:
        """The RuntimeClass (node.k8s.io/v1), None when it does not exist."""
        from kubernetes_asyncio import client

        try:
            result: dict[str, Any] = await self._json(
                "get runtimeclass",
                client.NodeV1Api(self._api_client).read_runtime_class,
                name,
                _request_timeout=self.request_timeout,
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def watch_node(
        self, name: str, resource_version: str, timeout_seconds: int, read_timeout: float
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Watch events for one Node from `resource_version`, BOOKMARKs included. An ERROR
        event is raised as ApiError with its code (410 when the version is too old). The
        answer must start within the request timeout; then a silence of `read_timeout`
        seconds is a dead connection."""
        call = "watch node"
        if self._rate_limit is not None:
            await self._rate_limit.take()
        self.requests += 1
        try:
            with anyio.fail_after(self.request_timeout):
                response: Any = await self._core.list_node(
                    field_selector=f"metadata.name={name}",
                    watch=True,
                    resource_version=resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=timeout_seconds,
                    _preload_content=False,
                    # (connect, read): the read timeout catches a connection that went silent
                    _request_timeout=(self.request_timeout, read_timeout),
                )
                if not 200 <= response.status <= 299:
                    try:
                        raise await _error(call, response)
                    finally:
                        response.release()
        except ApiError:
            raise
        except Exception as exc:
            raise _no_answer(call, exc, self.request_timeout) from None
        try:
            async for line in _lines(call, response.content):
                try:
                    event = json.loads(line)
                except ValueError:
                    raise ApiError(call, 0, f"malformed watch event {line[:200]!r}") from None
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise ApiError(call, int(status.get("code") or 0), str(status.get("message")))
                yield event
        finally:
            response.release()
            response.close()

    async def patch_node_labels(self, name: str, changes: Mapping[str, str | None]) -> dict[str, Any]:
        """One JSON merge patch of metadata.labels (None deletes a key); returns the Node."""
        result: dict[str, Any] = await self._json(
            "patch node",
            self._core.patch_node,
            name,
            {"metadata": {"labels": dict(changes)}},
            _content_type=MERGE_PATCH,
        )
        return result

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(
            "create event",
            self._core.create_namespaced_event,
            namespace,
            dict(event),
        )
        return result

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(
            "patch event",
            self._core.patch_namespaced_event,
            name,
            namespace,
            dict(patch),
            _content_type=MERGE_PATCH,
        )
        return result
