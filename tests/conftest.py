"""Shared fixtures and helpers: a short plugin directory, the kubelet simulator, an agent in the
test's loop or in its own process, polling with a deadline, and the real NVML or a skip."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from nvplugin.agent import Agent
from nvplugin.core.config import Config
from nvplugin.nvml.base import Nvml
from nvplugin.nvml.fake import FakeLayout, FakeNvml
from nvplugin.simulate.kubelet import KubeletSimulator

ROOT = Path(__file__).resolve().parent.parent


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


async def eventually(check: Callable[[], object], within: float = 5.0, what: str = "") -> None:
    """Poll `check` until it is true; fail after `within` seconds (a deadline, not a timing
    assertion: use it for state that has no change notification of its own)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within:g} s: {what or check}")
        await anyio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_agent(config: Config, nvml: Nvml | None = None, **options: Any) -> AsyncIterator[Agent]:
    """The agent running in a task group of the test's loop; cancelled on exit."""
    # Each agent its own fault-injection socket: agents of other test runs may hold the default.
    options.setdefault("fake_control", f"{config.plugin_dir}-fake.sock")
    agent = Agent(config, nvml or fake_nvml(), handle_signals=False, **options)
    async with anyio.create_task_group() as tg:
        tg.start_soon(agent.run)
        with anyio.fail_after(5):
            await agent.wait_started()
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


# --- nvplugin in its own process


def nvplugin_process(*args: str, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen[str]:
    """`python -m nvplugin ARGS` from this checkout, without a metrics port unless `env` asks."""
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    full_env = {**os.environ, "PYTHONPATH": pythonpath, "NVPLUGIN_METRICS_ADDRESS": "off", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "nvplugin", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


async def read_until(
    proc: subprocess.Popen[str], text: str, within: float = 15.0, stream: str = "stderr"
) -> str:
    """Read the process's stderr (or stdout) until a line contains `text`; returns what was read
    up to the end of that line. Reads the pipe's file descriptor directly, so what follows stays
    for stop_process (a buffered reader would keep it from communicate())."""
    pipe = proc.stderr if stream == "stderr" else proc.stdout
    assert pipe is not None
    pending: dict[str, str] = proc.__dict__.setdefault("_pending_output", {"stdout": "", "stderr": ""})
    fd = pipe.fileno()

    def read() -> str:
        data = pending[stream]
        while True:
            found = data.find(text)
            if found >= 0:
                cut = data.find("\n", found)
                cut = len(data) if cut < 0 else cut + 1
                pending[stream] = data[cut:]
                return data[:cut]
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the process ended before printing {text!r}:\n{data}")
            data += chunk.decode(errors="replace")

    with anyio.fail_after(within):
        return await anyio.to_thread.run_sync(read, abandon_on_cancel=True)


async def stop_process(proc: subprocess.Popen[str], signum: int = signal.SIGTERM) -> tuple[int, str, str]:
    """Signal the process and collect (exit code, stdout, stderr)."""
    proc.send_signal(signum)
    out, err = await anyio.to_thread.run_sync(proc.communicate)
    pending = proc.__dict__.get("_pending_output", {})
    return proc.returncode, pending.get("stdout", "") + (out or ""), pending.get("stderr", "") + (err or "")


# --- the real GPU


@pytest.fixture
def real_nvml() -> Iterator[Nvml]:
    """The real backend, initialised; skips where there is no NVIDIA driver and GPU."""
    from nvplugin.nvml.base import NvmlError
    from nvplugin.nvml.real import RealNvml

    nvml = RealNvml()
    try:
        nvml.init()
    except NvmlError as exc:
        pytest.skip(f"no NVIDIA GPU/driver here: {exc}")
    try:
        yield nvml
    finally:
        with contextlib.suppress(NvmlError):
            nvml.shutdown()
