"""Fault injection from another process: the control socket and `nvplugin inject-xid`."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from nvplugin.commands import inject_xid
from nvplugin.core.config import Config
from nvplugin.core.resources import build_resources
from nvplugin.health import HealthWatcher
from nvplugin.nvml import fakecontrol
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.fake import FakeLayout, FakeNvml
from nvplugin.state import NodeState

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
GPU0_48 = ("--gpu", "0", "--xid", "48")


@pytest.fixture
def sock_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    # short: unix socket paths are limited to 107 bytes
    return str(tmp_path_factory.mktemp("ctl") / "f.sock")


@asynccontextmanager
async def agent(path: str, count: int = 2) -> AsyncIterator[tuple[FakeNvml, NodeState]]:
    """What the agent runs on the fake backend: the watcher and the control socket."""
    fake = FakeNvml(FakeLayout.of(count))
    fake.init()
    inventory = discover(fake)
    state = NodeState(inventory, build_resources(inventory, Config()))
    watcher = HealthWatcher(fake, state, wait_timeout_ms=200)
    async with anyio.create_task_group() as tg:
        tg.start_soon(watcher.run)
        await tg.start(fakecontrol.serve_fake_control, fake, path)
        await watcher.ready.wait()
        yield fake, state
        tg.cancel_scope.cancel()


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    inject_xid.add_parser(parser.add_subparsers())
    return parser.parse_args(["inject-xid", *argv])


async def test_command_round_trip_marks_the_gpu(sock_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    async with agent(sock_path) as (_, state):
        seen = state.version
        code = await anyio.to_thread.run_sync(
            inject_xid.run, args("--gpu", "1", "--xid", "79", "--control", sock_path)
        )
        assert code == 0
        with anyio.fail_after(2):
            await state.wait_changed(seen)
        assert set(state.unhealthy) == {state.inventory.gpus[1].uuid}
    assert "delivered to 1 event set" in capsys.readouterr().out
    assert not await anyio.Path(sock_path).exists()  # removed on cancel


async def test_separate_process_injects(sock_path: str) -> None:
    async with agent(sock_path) as (_, state):
        seen = state.version
        result = await anyio.run_process(
            [
                sys.executable,
                "-m",
                "nvplugin",
                "inject-xid",
                "--control",
                sock_path,
                *GPU0_48,
            ],
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        with anyio.fail_after(2):
            await state.wait_changed(seen)
        assert "XID 48" in state.unhealthy[state.inventory.gpus[0].uuid]


async def test_every_operation(sock_path: str) -> None:
    async with agent(sock_path, count=2) as (fake, state):

        def ask(payload: dict[str, object]) -> dict[str, object]:
            return fakecontrol.request(sock_path, payload)

        assert (await anyio.to_thread.run_sync(ask, {"op": "status"}))["gpus"] == 2
        answer = await anyio.to_thread.run_sync(ask, {"op": "inject-ecc", "gpu": 0})
        assert answer == {"ok": True, "delivered": 1}
        assert (await anyio.to_thread.run_sync(ask, {"op": "wait-error", "kind": "unknown"}))["ok"]
        assert (await anyio.to_thread.run_sync(ask, {"op": "lose-gpu", "gpu": 1}))["ok"]
        with anyio.fail_after(3):
            seen = state.version
            while state.inventory.gpus[1].uuid not in state.unhealthy:
                seen = await state.wait_changed(seen)
        assert (await anyio.to_thread.run_sync(ask, {"op": "reset-gpu", "gpu": 0}))["ok"]
        assert (await anyio.to_thread.run_sync(ask, {"op": "clear"}))["ok"]
        assert fake.event_stats()["lost"] == 0


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"op": "inject-xid", "gpu": 9, "xid": 79}, "no fake GPU 9: this agent has 2 GPU(s), indexes 0 to 1"),
        ({"op": "inject-xid", "gpu": 0}, "'xid': expected an XID number (an integer >= 0), got None"),
        ({"op": "inject-xid", "gpu": True, "xid": 1}, "'gpu': expected a GPU index"),
        ({"op": "inject-xid", "gpu": 0, "xid": 1, "ci": 0}, "'ci' needs 'gi'"),
        ({"op": "wait-error", "kind": "boom"}, "'kind': expected one of not-supported, gpu-lost"),
        ({"op": "explode"}, "'op': expected one of inject-xid"),
    ],
)
async def test_bad_requests_get_clear_answers(
    sock_path: str, payload: dict[str, object], message: str
) -> None:
    async with agent(sock_path):
        answer = await anyio.to_thread.run_sync(fakecontrol.request, sock_path, payload)
    assert answer["ok"] is False
    assert message in str(answer["error"])


async def test_not_json_is_answered_and_the_connection_kept(sock_path: str) -> None:
    async with agent(sock_path):

        def raw() -> list[bytes]:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(sock_path)
                s.sendall(b"nope\n" + b'{"op": "status"}\n')
                data = b""
                while data.count(b"\n") < 2:
                    data += s.recv(4096)
                return data.splitlines()

        first, second = await anyio.to_thread.run_sync(raw)
    assert b"not a JSON object" in first and b'"ok": true' in second


def test_no_agent_listening_says_what_to_do(sock_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert inject_xid.run(args("--gpu", "0", "--xid", "79", "--control", sock_path)) == 1
    err = capsys.readouterr().err
    assert f"no fake-GPU agent is listening on {sock_path}" in err and "--fake-gpus" in err


def test_flag_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert inject_xid.run(args("--xid", "79")) == 2
    assert "--gpu INDEX is required" in capsys.readouterr().err
    assert inject_xid.run(args("--gpu", "0", "--xid", "79", "--ci", "1")) == 2
    assert "--ci needs --gi" in capsys.readouterr().err


def test_refused_request_exits_1(capsys: pytest.CaptureFixture[str], sock_path: str) -> None:
    async def main() -> int:
        async with agent(sock_path):
            return await anyio.to_thread.run_sync(
                inject_xid.run, args("--gpu", "5", "--xid", "79", "--control", sock_path)
            )

    assert anyio.run(main) == 1
    assert "the agent refused: no fake GPU 5" in capsys.readouterr().err


async def test_stale_socket_is_replaced_live_one_refused(sock_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # a socket file nobody listens on
    async with agent(sock_path):
        with pytest.raises(fakecontrol.ControlError, match="another agent already serves"):
            await fakecontrol.serve_fake_control(FakeNvml(FakeLayout.of(1)), sock_path)


async def test_refuses_the_kubelet_plugin_dir(tmp_path: Path) -> None:
    fake = FakeNvml(FakeLayout.of(1))
    with pytest.raises(
        fakecontrol.ControlError, match="must not be in the kubelet's device-plugin directory"
    ):
        await fakecontrol.serve_fake_control(fake, str(tmp_path / "x.sock"), forbidden_dir=str(tmp_path))


def test_default_path() -> None:
    assert fakecontrol.default_control_path({"NVPLUGIN_FAKE_CONTROL": "/x/y.sock"}) == "/x/y.sock"
    assert fakecontrol.default_control_path({}) == f"/tmp/nvplugin-fake-{os.getuid()}.sock"
