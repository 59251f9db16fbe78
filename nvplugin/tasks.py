"""Long-lived tasks: declared once, started by the agent, guarded while they run.

Every task of the agent is a `TaskSpec` in one list (nvplugin.agent.TASKS): its name, whether it
starts for this configuration, whether it may end by itself, and what happens when it fails.
`guarded` runs one task the way kopf's guarded tasks do: an unexpected end or a crash is logged
as a fault, then the task starts again after a backoff, or the agent stops on purpose. Nothing
dies silently, and no task carries a supervisor of its own.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio

log = logging.getLogger(__name__)

T = TypeVar("T")


class TaskFailed(Exception):
    """An expected failure with a message for the user (a taken port, a bad path): logged as
    one line, without a traceback, then handled by the task's restart policy."""


class StopAgent(Exception):
    """Raised by `guarded` when a task with no restart policy fails: the agent stops, and
    its run() raises this (the CLI turns it into exit code 1 with the message)."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Restart delays: `initial`, doubling up to `cap`, with jitter (±25 %) so tasks of many
    agents never retry in lockstep; back to `initial` after `healthy_after` seconds of running."""

    initial: float = 0.1
    cap: float = 10.0
    healthy_after: float = 30.0

    def delays(self) -> Callable[[float], float]:
        """A stateful delay function: call it with how long the last run lasted."""
        delay = self.initial

        def next_delay(ran_for: float) -> float:
            nonlocal delay
            if ran_for >= self.healthy_after:
                delay = self.initial
            current = delay
            delay = min(delay * 2, self.cap)
            return current * random.uniform(0.75, 1.25)

        return next_delay


@dataclass(frozen=True)
class TaskSpec(Generic[T]):
    """One task of the agent. `run(owner)` is the task body; `enabled(owner)` says whether it
    starts at all (a task that does not apply is never started, rather than started to sleep);
    `may_finish`: returning is its normal end (else a fault); `restart`: None stops the agent when
    the task fails, else the backoff before it runs again."""

    name: str
    run: Callable[[T], Awaitable[None]]
    enabled: Callable[[T], bool] = lambda owner: True
    may_finish: bool = False
    restart: Backoff | None = Backoff()


async def guarded(spec: TaskSpec[T], owner: T) -> None:
    """Run `spec` for `owner` until it finishes normally (may_finish) or the caller cancels.
    Raises StopAgent when a task without a restart policy fails."""
    next_delay = spec.restart.delays() if spec.restart is not None else None
    while True:
        started = anyio.current_time()
        try:
            await spec.run(owner)
        except Exception as exc:
            cause = _unwrap(exc)
            if isinstance(cause, TaskFailed):
                why = str(cause)
                log.error("task %s failed: %s", spec.name, why)
            else:
                why = f"{type(cause).__name__}: {cause}"
                log.error("task %s crashed: %s", spec.name, why, exc_info=cause)
        else:
            if spec.may_finish:
                log.debug("task %s finished", spec.name)
                return
            why = "it ended unexpectedly"
            log.error("task %s ended unexpectedly", spec.name)
        if next_delay is None:
            raise StopAgent(f"{spec.name}: {why}")
        delay = next_delay(anyio.current_time() - started)
        log.info("restarting task %s in %.2f s", spec.name, delay)
        await anyio.sleep(delay)


def _unwrap(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups (task groups wrap)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
