from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from nvplugin.agent import Agent
from nvplugin.core.config import Config
from nvplugin.nvml.base import Nvml
from nvplugin.nvml.fake import FakeLayout, FakeNvml
from nvplugin.simulate.kubelet import KubeletSimulator


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    # Short paths: a unix socket path must fit in 108 bytes, pytest's tmp_path may not.
    path = Path(tempfile.mkdtemp(prefix="nvp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def fake_nvml(count: int = 4, **layout: object) -> FakeNvml:
    return FakeNvml(FakeLayout.of(count, **layout))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running_agent(config: Config, nvml: Nvml | None = None) -> AsyncIterator[Agent]:
    """The agent running in a task group of the test's loop; cancelled on exit."""
    agent = Agent(config, nvml or fake_nvml(), handle_signals=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(agent.run)
        with anyio.fail_after(5):
            while agent.started is None or not agent.started.is_set():  # noqa: ASYNC110
                await anyio.sleep(0.005)
        try:
            yield agent
        finally:
            tg.cancel_scope.cancel()


@pytest.fixture
async def kubelet(plugin_dir: Path) -> AsyncIterator[KubeletSimulator]:
    async with KubeletSimulator(plugin_dir, dial_timeout=2.0) as sim:
        yield sim


@pytest.fixture
def config(plugin_dir: Path) -> Config:
    # No metrics endpoint by default in tests: many agents would all want :8080.
    return Config(kubelet_socket=str(plugin_dir / "kubelet.sock"), metrics_address=None)
