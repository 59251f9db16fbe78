"""NVML start-up in a thread, begun before the rest of the agent is even imported.

On a real node nvmlInit and the first queries take around a hundred milliseconds in the driver,
with the GIL released; importing the gRPC stack takes about as long on the main thread. Doing
both at once takes the NVML time off the start -> Register path.
"""

from __future__ import annotations

import threading

from nvplugin.core.inventory import Inventory
from nvplugin.nvml.base import Nvml


class EarlyStart:
    def __init__(self, nvml: Nvml, *, topology: bool = True) -> None:
        self.nvml = nvml
        self._topology = topology
        self._init_error: BaseException | None = None
        self._discover_error: BaseException | None = None
        self._inventory: Inventory | None = None
        self._thread = threading.Thread(target=self._run, name="nvml-early-start", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.nvml.init()
        except BaseException as exc:  # handed to the agent, which decides what it means
            self._init_error = exc
            return
        try:
            from nvplugin.nvml.discovery import discover

            self._inventory = discover(self.nvml, topology=self._topology)
        except BaseException as exc:
            self._discover_error = exc

    def initialised(self) -> None:
        """Blocks until nvmlInit is done; raises what it raised."""
        self._thread.join()
        if self._init_error is not None:
            raise self._init_error

    def initialised_ok(self) -> bool:
        """Whether nvmlInit succeeded (blocks until it is done)."""
        self._thread.join()
        return self._init_error is None

    def inventory(self) -> Inventory:
        """Blocks until the first discovery is done; raises what it raised."""
        self.initialised()
        if self._discover_error is not None:
            raise self._discover_error
        assert self._inventory is not None
        return self._inventory
