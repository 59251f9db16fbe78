"""The few Kubernetes API calls the agent makes, over kubernetes_asyncio, with raw JSON.

kubernetes_asyncio is imported inside `NodeApi.connect`, never at module import: with labels
disabled it is never loaded, and with labels enabled it is loaded only when the agent starts the
reconciler (after the kubelet registration). Responses are read as plain JSON (no model
objects): the agent only needs labels, the resourceVersion and the uid, and deserialising whole
Node objects on every watch event would cost far more than the work itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncGenerator, Mapping
from typing import Any

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
# Where the in-cluster service account lives (the downward API gives NODE_NAME).
SERVICE_HOST_ENV = "KUBERNETES_SERVICE_HOST"


class ApiError(Exception):
    """A failed API call. status 0: no HTTP answer (connection refused, reset, timed out)."""

    def __init__(self, call: str, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{call}: {status or 'no answer'}: {message}")
        self.call = call
        self.status = status
        self.message = message
        self.retry_after = retry_after


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
    finally:
        response.release()
    return ApiError(call, response.status, message, _retry_after(response.headers))


class NodeApi:
    """Node get/list/watch/patch and Event create/patch for one agent."""

    def __init__(self, api_client: Any, own_client: bool = True, request_timeout: float = 30.0) -> None:
        from kubernetes_asyncio import client

        # Every request but a watch is abandoned after this long (a hung API server must not
        # stall the labels forever).
        self.request_timeout = request_timeout
        self._api_client = api_client
        self._core = client.CoreV1Api(api_client)
        self._own_client = own_client
        self.requests = 0

    @classmethod
    async def connect(
        cls, kubeconfig: str | None = None, *, pool_size: int = 4, request_timeout: float = 30.0
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
        return cls(client.ApiClient(configuration), request_timeout=request_timeout)

    async def close(self) -> None:
        if self._own_client:
            await self._api_client.close()

    async def _call(self, call: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one request; return the open response (2xx) or raise ApiError."""
        self.requests += 1
        try:
            response = await method(*args, _preload_content=False, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # aiohttp.ClientError, OSError, TimeoutError
            raise ApiError(call, 0, f"{type(exc).__name__}: {exc}") from None
        if not 200 <= response.status <= 299:
            raise await _error(call, response)
        return response

    async def _json(self, call: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        response = await self._call(call, method, *args, **kwargs)
        try:
            return json.loads(await response.read())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise ApiError(call, 0, f"unreadable answer: {exc}") from None
        finally:
            response.release()

    async def list_node(self, name: str) -> tuple[dict[str, Any] | None, str]:
        """The Node (None when it does not exist) and the list's resourceVersion."""
        body = await self._json(
            "list node",
            self._core.list_node,
            field_selector=f"metadata.name={name}",
            _request_timeout=self.request_timeout,
        )
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
        event is raised as ApiError with its code (410 when the version is too old)."""
        response = await self._call(
            "watch node",
            self._core.list_node,
            field_selector=f"metadata.name={name}",
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_seconds,
            # connect timeout, and a read timeout that catches a dead connection
            _request_timeout=(10.0, read_timeout),
        )
        try:
            while True:
                try:
                    line = await response.content.readline()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raise ApiError("watch node", 0, f"watch stream broke: {type(exc).__name__}") from None
                if not line:
                    return  # the server ended the watch (timeoutSeconds): resume from the last version
                try:
                    event = json.loads(line)
                except ValueError:
                    raise ApiError("watch node", 0, f"malformed watch event {line[:200]!r}") from None
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise ApiError("watch node", int(status.get("code") or 0), str(status.get("message")))
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
            _request_timeout=self.request_timeout,
        )
        return result

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(
            "create event",
            self._core.create_namespaced_event,
            namespace,
            dict(event),
            _request_timeout=self.request_timeout,
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
            _request_timeout=self.request_timeout,
        )
        return result
