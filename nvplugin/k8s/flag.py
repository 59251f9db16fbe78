"""A flag tasks wait for, that can be cleared again (anyio.Event cannot)."""

from __future__ import annotations

import anyio


class Flag:
    """`set()`, `clear()` and `is_set()` work anywhere, even before the event loop runs (the
    objects that own flags are built by synchronous wiring); `await wait()` returns once the
    flag is set."""

    def __init__(self) -> None:
        self._set = False
        self._event: anyio.Event | None = None  # exists only while someone waits

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()
            self._event = None

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()
