"""The test API server's own semantics, over plain HTTP (what docs/apiserver.md promises)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from nvplugin.testing.apiserver import (
    FakeApiServer,
    Fault,
    json_merge_patch,
    json_patch,
    strategic_merge_patch,
)

pytestmark = pytest.mark.anyio
NODE = "n1"
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer(bookmark_interval=0.1) as api:
        api.add_node(NODE, {"a": "1"})
        yield api


@pytest.fixture
async def http(server: FakeApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Authorization": f"Bearer {server.token}"}
    async with aiohttp.ClientSession(server.url, headers=headers) as session:
        yield session


async def patch(
    http: aiohttp.ClientSession, body: Any, headers: dict[str, str] = MERGE
) -> aiohttp.ClientResponse:
    return await http.patch(f"/api/v1/nodes/{NODE}", data=json.dumps(body), headers=headers)


async def test_get_list_and_merge_patch_with_null_delete(
    server: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    node = await (await http.get(f"/api/v1/nodes/{NODE}")).json()
    rv = int(node["metadata"]["resourceVersion"])
    resp = await patch(http, {"metadata": {"labels": {"a": None, "b": "2"}}})
    assert resp.status == 200
    patched = await resp.json()
    assert patched["metadata"]["labels"] == {"kubernetes.io/hostname": NODE, "b": "2"}
    assert int(patched["metadata"]["resourceVersion"]) > rv
    listed = await (await http.get("/api/v1/nodes", params={"fieldSelector": f"metadata.name={NODE}"})).json()
    assert listed["kind"] == "NodeList" and [i["metadata"]["name"] for i in listed["items"]] == [NODE]
    assert listed["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]
    assert (await (await http.get("/api/v1/nodes/nope")).json())["reason"] == "NotFound"


async def test_noop_patch_keeps_resource_version(server: FakeApiServer, http: aiohttp.ClientSession) -> None:
    before = server.node(NODE)["metadata"]["resourceVersion"]
    resp = await patch(http, {"metadata": {"labels": {"a": "1"}}})
    assert resp.status == 200
    assert server.node(NODE)["metadata"]["resourceVersion"] == before


async def test_patch_validation_conflict_and_media_types(http: aiohttp.ClientSession) -> None:
    bad = await patch(http, {"metadata": {"labels": {"x": "has space"}}})
    assert bad.status == 422 and "Invalid value" in (await bad.json())["message"]
    conflict = await patch(http, {"metadata": {"resourceVersion": "999", "labels": {"x": "y"}}})
    assert conflict.status == 409
    unsupported = await patch(http, {"metadata": {}}, {"Content-Type": "application/json"})
    assert unsupported.status == 415
    jp = await patch(
        http,
        [{"op": "add", "path": "/metadata/labels/nvidia.com~1gpu.count", "value": "8"}],
        {"Content-Type": "application/json-patch+json"},
    )
    assert jp.status == 200 and (await jp.json())["metadata"]["labels"]["nvidia.com/gpu.count"] == "8"
    smp = await patch(
        http,
        {"metadata": {"labels": {"nvidia.com/gpu.count": None}}},
        {"Content-Type": "application/strategic-merge-patch+json"},
    )
    assert "nvidia.com/gpu.count" not in (await smp.json())["metadata"]["labels"]


async def test_auth_and_selectors(server: FakeApiServer) -> None:
    async with aiohttp.ClientSession(server.url) as anonymous:
        assert (await anonymous.get(f"/api/v1/nodes/{NODE}")).status == 401
    async with aiohttp.ClientSession(server.url, headers={"Authorization": f"Bearer {server.token}"}) as http:
        resp = await http.get("/api/v1/nodes", params={"fieldSelector": "spec.unschedulable=true"})
        assert resp.status == 400


async def read_events(resp: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    events = []
    while len(events) < count:
        line = await asyncio.wait_for(resp.content.readline(), 5)
        if not line:
            break
        events.append(json.loads(line))
    return events


async def test_watch_from_version_bookmarks_and_timeout(
    server: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    rv = server.node(NODE)["metadata"]["resourceVersion"]
    server.set_labels(NODE, {"b": "2"})  # after rv: replayed
    params = {
        "watch": "true",
        "fieldSelector": f"metadata.name={NODE}",
        "resourceVersion": rv,
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "1",
    }
    async with http.get("/api/v1/nodes", params=params) as resp:
        first = await read_events(resp, 1)
        assert first[0]["type"] == "MODIFIED" and first[0]["object"]["metadata"]["labels"]["b"] == "2"
        server.touch(NODE)
        server.add_node("other")  # not selected: never sent
        rest = await read_events(resp, 100)  # until the server ends the watch at timeoutSeconds
    kinds = [e["type"] for e in rest]
    assert "MODIFIED" in kinds and "BOOKMARK" in kinds and "ADDED" not in kinds
    assert server.count("watch", NODE) == 1


async def test_watch_from_compacted_version_gets_410(
    server: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    old = server.node(NODE)["metadata"]["resourceVersion"]
    server.touch(NODE)
    server.compact()
    params = {"watch": "1", "fieldSelector": f"metadata.name={NODE}", "resourceVersion": old}
    async with http.get("/api/v1/nodes", params=params) as resp:
        (event,) = await read_events(resp, 5)
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


async def test_watch_without_version_starts_with_added(
    server: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    params = {"watch": "1", "fieldSelector": f"metadata.name={NODE}", "timeoutSeconds": "1"}
    async with http.get("/api/v1/nodes", params=params) as resp:
        events = await read_events(resp, 1)
    assert events[0]["type"] == "ADDED"


async def test_injected_faults(server: FakeApiServer, http: aiohttp.ClientSession) -> None:
    server.inject(Fault("get", 429, times=1, retry_after=3))
    resp = await http.get(f"/api/v1/nodes/{NODE}")
    assert resp.status == 429 and resp.headers["Retry-After"] == "3"
    assert (await http.get(f"/api/v1/nodes/{NODE}")).status == 200
    server.inject(Fault("patch", 500, node="someone-else"))
    assert (await patch(http, {"metadata": {"labels": {"c": "3"}}})).status == 200
    with pytest.raises(ValueError, match="unknown verb"):
        server.inject(Fault("delete", 500))
    assert server.count("get", NODE) == 2 and server.count("patch", NODE) == 1


async def test_events_create_patch_list(server: FakeApiServer, http: aiohttp.ClientSession) -> None:
    body = {
        "metadata": {"name": "e1"},
        "involvedObject": {"kind": "Node", "name": NODE},
        "reason": "R",
        "count": 1,
    }
    assert (await http.post("/api/v1/namespaces/default/events", json=body)).status == 201
    assert (await http.post("/api/v1/namespaces/default/events", json=body)).status == 409
    resp = await http.patch(
        "/api/v1/namespaces/default/events/e1", data=json.dumps({"count": 2}), headers=MERGE
    )
    assert (await resp.json())["count"] == 2
    missing = await http.patch("/api/v1/namespaces/default/events/e2", data="{}", headers=MERGE)
    assert missing.status == 404
    listed = await (await http.get("/api/v1/namespaces/default/events")).json()
    assert [e["metadata"]["name"] for e in listed["items"]] == ["e1"]
    assert server.count("create-event", NODE) == 2


def test_patch_functions() -> None:
    assert json_merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {"a": {"c": 2, "d": 3}}
    assert json_merge_patch({"a": 1}, {"a": [1, 2]}) == {"a": [1, 2]}
    with pytest.raises(Exception, match="directives are not supported"):
        strategic_merge_patch({}, {"metadata": {"labels": {"$patch": "replace"}}})
    doc = {"m": {"l": {"x": "1"}}}
    assert json_patch(doc, [{"op": "remove", "path": "/m/l/x"}]) == {"m": {"l": {}}}
    with pytest.raises(Exception, match="test failed"):
        json_patch(doc, [{"op": "test", "path": "/m/l/x", "value": "2"}])


def test_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FakeApiServer(host="0.0.0.0")


WATCH = {"watch": "1", "fieldSelector": f"metadata.name={NODE}"}


async def test_close_cuts_the_answer_mid_body(server: FakeApiServer, http: aiohttp.ClientSession) -> None:
    server.inject(Fault("list", action="close"))
    with pytest.raises(aiohttp.ClientPayloadError):
        resp = await http.get("/api/v1/nodes", params={"fieldSelector": f"metadata.name={NODE}"})
        await resp.read()
    # a patch is applied before its answer is lost
    server.inject(Fault("patch", action="close"))
    with pytest.raises(aiohttp.ClientPayloadError):
        resp = await patch(http, {"metadata": {"labels": {"cut": "1"}}})
        await resp.read()
    assert server.labels(NODE)["cut"] == "1"
    # a watch sends what it has, then the stream breaks (no terminating chunk)
    server.inject(Fault("watch", action="close"))
    async with http.get("/api/v1/nodes", params=WATCH) as resp:
        assert json.loads(await resp.content.readline())["type"] == "ADDED"
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.content.readline()
    assert (await http.get(f"/api/v1/nodes/{NODE}")).status == 200  # one request each


async def test_watch_that_ends_at_once_or_expires(server: FakeApiServer, http: aiohttp.ClientSession) -> None:
    server.inject(Fault("watch", action="end"))
    async with http.get("/api/v1/nodes", params=WATCH) as resp:
        assert resp.status == 200 and await resp.read() == b""
    server.inject(Fault("watch", action="expire"))
    async with http.get("/api/v1/nodes", params=WATCH) as resp:
        (event,) = await read_events(resp, 5)
    assert resp.status == 200 and event["type"] == "ERROR" and event["object"]["code"] == 410
    with pytest.raises(ValueError, match="watch verb only"):
        server.inject(Fault("list", action="end"))
    with pytest.raises(ValueError, match="unknown fault action"):
        server.inject(Fault("list", action="explode"))


async def test_hang_never_answers_until_stop(server: FakeApiServer, http: aiohttp.ClientSession) -> None:
    server.inject(Fault("get", action="hang"))
    with pytest.raises(TimeoutError):
        await http.get(f"/api/v1/nodes/{NODE}", timeout=aiohttp.ClientTimeout(total=0.3))
    assert (await http.get(f"/api/v1/nodes/{NODE}")).status == 200  # only the one request hung


async def test_fault_until_cleared_and_request_log(
    server: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    began = time.monotonic()
    server.inject(Fault("get", 503, times=None, node=NODE))
    for _ in range(5):
        assert (await http.get(f"/api/v1/nodes/{NODE}")).status == 503
    server.clear_faults()
    assert (await http.get(f"/api/v1/nodes/{NODE}")).status == 200
    assert (await http.get("/api/v1/nodes/other")).status == 404
    assert server.requests_since(began, NODE) == 6
    assert server.requests_since(began) == 7
    assert server.peak_rate(began, NODE, window=60.0) == 6
    assert server.requests_since(time.monotonic() + 1) == 0


async def test_admission_rewrites_client_patches_only(
    server: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    def webhook(node: dict[str, Any]) -> None:
        node["metadata"]["labels"]["b"] = "admitted"

    server.admission = webhook
    answer = await (await patch(http, {"metadata": {"labels": {"b": "2"}}})).json()
    assert answer["metadata"]["labels"]["b"] == "admitted"
    server.set_labels(NODE, {"b": "3"})  # another client's edit through the test control
    assert server.labels(NODE)["b"] == "3"
