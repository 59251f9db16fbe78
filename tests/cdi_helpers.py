"""Checking CDI spec documents as a container runtime would, for the CDI tests."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from nvplugin.core.allocation import CONTROL_NODES
from nvplugin.core.cdi import HostFacts, LibraryFact, NodeFact
from nvplugin.core.inventory import Inventory

SCHEMA_DIR = Path(__file__).parent / "data" / "cdi-schema"
LIB_DIR = "/usr/lib/x86_64-linux-gnu"
CHAR_DEVICE_RW = stat.S_IFCHR | 0o666

# The CDI library's rules beyond the JSON schema (pkg/parser, pkg/cdi/container-edits.go).
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$")
_VENDOR = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_HOOK_NAMES = {"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"}


def validate_spec(doc: Mapping[str, Any]) -> None:
    """Fails the test unless `doc` passes the CDI JSON schema and the CDI library's checks."""
    jsonschema = pytest.importorskip("jsonschema")
    referencing = pytest.importorskip("referencing")
    schema = json.loads((SCHEMA_DIR / "schema.json").read_text())
    defs = json.loads((SCHEMA_DIR / "defs.json").read_text())
    registry = referencing.Registry().with_resource(
        "defs.json",
        referencing.Resource.from_contents(defs, default_specification=referencing.jsonschema.DRAFT7),
    )
    jsonschema.Draft7Validator(schema, registry=registry).validate(doc)

    vendor, _, cls = doc["kind"].partition("/")
    assert _VENDOR.match(vendor) and _VENDOR.match(cls), doc["kind"]
    names = [d["name"] for d in doc["devices"]]
    assert names, "a CDI spec must have devices"
    assert len(names) == len(set(names)), "device names must be unique"
    _check_edits(doc.get("containerEdits", {}))
    for device in doc["devices"]:
        assert _NAME.match(device["name"]), device["name"]
        edits = device["containerEdits"]
        assert any(edits.get(k) for k in ("env", "deviceNodes", "hooks", "mounts")), device["name"]
        _check_edits(edits)


def _check_edits(edits: Mapping[str, Any]) -> None:
    for env in edits.get("env", []):
        assert env.index("=") > 0, env
    for node in edits.get("deviceNodes", []):
        assert node["path"].startswith("/") and set(node.get("permissions", "")) <= set("rwm"), node
    for hook in edits.get("hooks", []):
        assert hook["hookName"] in _HOOK_NAMES and hook["path"], hook
        assert all(e.index("=") > 0 for e in hook.get("env", [])), hook
    for mount in edits.get("mounts", []):
        assert mount["hostPath"] and mount["containerPath"], mount


def host_facts(inventory: Inventory, *, version: str | None = None, **changes: Any) -> HostFacts:
    """Facts of a host where every node the inventory names exists (mode 0666, group 0) and
    the driver's libraries are in LIB_DIR."""
    version = version or inventory.driver_version
    nodes = [
        *CONTROL_NODES,
        *(g.device_node for g in inventory.gpus),
        *(n for g in inventory.gpus for m in g.mig_devices for n in m.device_nodes),
    ]
    facts: dict[str, Any] = {
        "driver_version": version,
        "libraries": (
            LibraryFact(
                f"{LIB_DIR}/libcuda.so.{version}", "libcuda.so.1", frozenset({"libcuda.so.1", "libcuda.so"})
            ),
            LibraryFact(
                f"{LIB_DIR}/libnvidia-ml.so.{version}", "libnvidia-ml.so.1", frozenset({"libnvidia-ml.so.1"})
            ),
        ),
        "library_dirs": (LIB_DIR,),
        "binaries": ("/usr/bin/nvidia-smi",),
        "firmware": (f"/lib/firmware/nvidia/{version}/gsp_ga10x.bin",),
        "ipc_sockets": ("/run/nvidia-persistenced/socket",),
        "device_nodes": tuple(NodeFact(p, CHAR_DEVICE_RW, 0) for p in dict.fromkeys(nodes)),
    }
    facts.update(changes)
    return HostFacts(**facts)
