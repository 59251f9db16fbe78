from __future__ import annotations

import anyio
import pytest

from nvplugin.core.inventory import EMPTY_INVENTORY
from nvplugin.state import NodeState

pytestmark = pytest.mark.anyio


async def test_marks_bump_the_version_and_wake_waiters() -> None:
    state = NodeState(EMPTY_INVENTORY, ())
    seen = state.version
    woke: list[int] = []

    async def waiter() -> None:
        woke.append(await state.wait_changed(seen))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        tg.start_soon(waiter)
        await anyio.sleep(0.01)
        assert state.mark_unhealthy("GPU-1", "XID 79")
    assert woke == [seen + 1, seen + 1]
    assert not state.mark_unhealthy("GPU-1", "XID 48"), "a second mark keeps the first reason"
    assert state.unhealthy == {"GPU-1": "XID 79"}
    assert state.mark_healthy("GPU-1") and not state.mark_healthy("GPU-1")
    assert state.version == seen + 2


async def test_wait_changed_returns_at_once_when_behind() -> None:
    state = NodeState(EMPTY_INVENTORY, ())
    state.mark_unhealthy("GPU-0", "x")
    with anyio.fail_after(0.1):
        assert await state.wait_changed(0) == 1


async def test_poke_wakes_without_a_change() -> None:
    state = NodeState(EMPTY_INVENTORY, ())
    async with anyio.create_task_group() as tg:
        tg.start_soon(state.wait_changed, 0)
        await anyio.sleep(0.01)
        state.poke()
    assert state.version == 0


async def test_marks_are_kept_per_source_and_never_clear_each_other() -> None:
    from nvplugin.state import HealthTransition

    state = NodeState(EMPTY_INVENTORY, ())
    transitions: list[HealthTransition] = []
    state.subscribe(transitions.append)
    assert state.mark_unhealthy("GPU-1", "XID 79", 79)
    assert state.mark_unhealthy("GPU-1", "MPS daemon down", source="mps:nvidia.com/gpu")
    assert state.unhealthy == {"GPU-1": "XID 79; MPS daemon down"}
    assert transitions == [HealthTransition("GPU-1", False, "XID 79", 79)], (
        "one transition: it was already down"
    )
    # The XID watcher's recovery leaves the MPS mark in force, and the reverse.
    assert state.mark_healthy("GPU-1")
    assert state.unhealthy == {"GPU-1": "MPS daemon down"}
    assert not state.mark_healthy("GPU-1"), "the XID mark is gone already"
    assert len(transitions) == 1
    assert state.mark_healthy("GPU-1", source="mps:nvidia.com/gpu")
    assert dict(state.unhealthy) == {}
    assert transitions[-1] == HealthTransition("GPU-1", True, "recovered from: MPS daemon down", None)
