"""Fuzzing the device-plugin handlers from outside, on the agent's real socket, while a probe
checks that the agent keeps answering.

Each target is a hypothesis search run in a worker thread with an independent client (grpcio,
or a raw HTTP/2 client for what grpcio would not send). Every answer is checked against what
the request deserves (status, answer size, message length); the probe asks
GetDevicePluginOptions throughout, each within a generous bound, and holds a ListAndWatch
stream open: a handler that held the loop for seconds would make it miss.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvplugin.api import v1beta1 as api
from nvplugin.core.config import Config
from nvplugin.core.resources import GPU_RESOURCE
from nvplugin.plugin.guard import MAX_REQUEST_BYTES
from nvplugin.plugin.server import MAX_CONTAINER_REQUESTS, MAX_DEVICE_IDS
from nvplugin.simulate.kubelet import KubeletSimulator
from tests.conftest import fake_nvml, running_agent
from tests.rawgrpc import RawGrpcClient
from tests.reliability.clients import Outcome, Probe, unary
from tests.reliability.conftest import Figures, scaled

pytestmark = pytest.mark.anyio

GPUS = 8
# No answer or status message may grow with the request.
MAX_DETAILS = 512
MAX_ANSWER = 64 * 1024
OK, INVALID, EXHAUSTED, UNIMPLEMENTED = (
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
)


@dataclass
class Target:
    """The plugin under fuzzing: where it listens, what it advertises, what was sent."""

    socket_path: str
    ids: list[str]
    tally: Counter[str]
    largest: int = 0

    def sent(self, name: str, body_size: int, outcome: Outcome) -> None:
        self.tally[f"{name}: {outcome.code.name}"] += 1
        self.largest = max(self.largest, body_size)
        assert len(outcome.details) <= MAX_DETAILS, (
            f"{name}: a {len(outcome.details)}-character status message"
        )
        assert len(outcome.response) <= MAX_ANSWER, f"{name}: a {len(outcome.response)}-byte answer"


def fuzz(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


def device_ids(ids: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(ids),
        st.sampled_from(["", f"{ids[0]}::0", ids[0].lower(), "MIG-unknown", "GPU-unknown"]),
        st.text(max_size=24),
        st.integers(65, 300_000).map(lambda n: "GPU-" + "f" * n),  # longer than any real ID
    )


def id_lists(ids: list[str]) -> st.SearchStrategy[list[str]]:
    return st.one_of(
        st.lists(device_ids(ids), max_size=6),
        st.lists(st.sampled_from(ids), min_size=2, max_size=12),  # duplicates
        st.integers(100, 10_000).map(lambda n: [f"GPU-{i}" for i in range(n)]),  # many unknown
    )


def container_counts() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, 3), st.just(MAX_CONTAINER_REQUESTS), st.just(MAX_CONTAINER_REQUESTS + 1))


# --- the targets, each run in a worker thread


def fuzz_allocate(target: Target, examples: int) -> None:
    known = set(target.ids)
    with grpc.insecure_channel(f"unix://{target.socket_path}") as channel:

        @fuzz(examples)
        @given(data=st.data())
        def allocate(data: st.DataObject) -> None:
            count = data.draw(container_counts())
            containers = [data.draw(id_lists(target.ids)) for _ in range(min(count, 3))]
            containers += [target.ids[:1]] * (count - len(containers))  # many small ones
            body = bytes(
                api.AllocateRequest(
                    container_requests=[api.ContainerAllocateRequest(devices_ids=c) for c in containers]
                )
            )
            outcome = unary(channel, "Allocate", body)
            target.sent("Allocate", len(body), outcome)
            if len(body) > MAX_REQUEST_BYTES:
                assert outcome.code == EXHAUSTED, outcome
            elif (
                not containers
                or count > MAX_CONTAINER_REQUESTS
                or any(not c or set(c) - known for c in containers)
            ):
                assert outcome.code == INVALID, outcome
            else:
                assert outcome.code == OK, outcome
                answers = api.AllocateResponse.parse(outcome.response).container_responses
                # Each device once, in request order: NVIDIA de-duplicates too.
                assert [a.envs["NVIDIA_VISIBLE_DEVICES"] for a in answers] == [
                    ",".join(dict.fromkeys(c)) for c in containers
                ]

        allocate()


def fuzz_preferred(target: Target, examples: int) -> None:
    with grpc.insecure_channel(f"unix://{target.socket_path}") as channel:

        @fuzz(examples)
        @given(data=st.data())
        def preferred(data: st.DataObject) -> None:
            count = data.draw(container_counts())
            requests = [
                api.ContainerPreferredAllocationRequest(
                    available_deviceIDs=data.draw(id_lists(target.ids)),
                    must_include_deviceIDs=data.draw(st.lists(device_ids(target.ids), max_size=4)),
                    allocation_size=data.draw(
                        st.integers(-3, GPUS + 3) | st.sampled_from([2**31 - 1, -(2**31)])
                    ),
                )
                for _ in range(min(count, 3))
            ]
            many = api.ContainerPreferredAllocationRequest(available_deviceIDs=target.ids, allocation_size=2)
            requests += [many] * (count - len(requests))
            body = bytes(api.PreferredAllocationRequest(container_requests=requests))
            outcome = unary(channel, "GetPreferredAllocation", body)
            target.sent("GetPreferredAllocation", len(body), outcome)
            if len(body) > MAX_REQUEST_BYTES:
                assert outcome.code == EXHAUSTED, outcome
                return
            if count > MAX_CONTAINER_REQUESTS:
                assert outcome.code == INVALID, outcome
                return
            # A hint: always answered, within its promises.
            assert outcome.code == OK, outcome
            answers = api.PreferredAllocationResponse.parse(outcome.response).container_responses
            assert len(answers) == len(requests)
            for request, answer in zip(requests, answers, strict=True):
                offered = [i for i in dict.fromkeys(request.available_deviceIDs) if i in target.ids]
                chosen = answer.device_i_ds
                assert len(chosen) == len(set(chosen)) and set(chosen) <= set(offered)
                assert len(chosen) == max(0, min(request.allocation_size, len(offered)))

        preferred()


METHODS = ("Allocate", "GetPreferredAllocation", "GetDevicePluginOptions", "PreStartContainer")


def fuzz_random_bytes(target: Target, examples: int) -> None:
    with grpc.insecure_channel(f"unix://{target.socket_path}") as channel:

        @fuzz(examples)
        @given(method=st.sampled_from(METHODS), body=st.binary(max_size=512))
        def random_bytes(method: str, body: bytes) -> None:
            outcome = unary(channel, method, body)
            target.sent(f"{method} (random bytes)", len(body), outcome)
            # Some random bytes are a valid message; the rest are refused cleanly, never UNKNOWN.
            assert outcome.code in (OK, INVALID), outcome

        random_bytes()


def fuzz_framing(target: Target, examples: int) -> None:
    """What grpcio would never send: bad flags, lying or truncated prefixes, cut bodies."""
    with RawGrpcClient(target.socket_path) as client:

        @fuzz(examples)
        @given(
            method=st.sampled_from(["Allocate", "GetPreferredAllocation"]),
            flag=st.sampled_from([0, 0, 1, 2, 128, 255]),
            declared=st.one_of(st.integers(0, 80), st.sampled_from([MAX_REQUEST_BYTES + 1, 2**32 - 1])),
            body=st.binary(max_size=64),
            cut=st.integers(0, 80),
        )
        def framing(method: str, flag: int, declared: int, body: bytes, cut: int) -> None:
            sent = (struct.pack(">BI", flag, declared) + body)[:cut]
            answer = client.call(f"/v1beta1.DevicePlugin/{method}", sent)
            assert answer.grpc_status is not None
            code = next(c for c in grpc.StatusCode if c.value[0] == answer.grpc_status)
            target.sent("raw framing", len(sent), Outcome(code, answer.grpc_message, answer.data))
            if not sent:
                assert code == UNIMPLEMENTED, answer
            elif len(sent) < 5:
                assert code == INVALID, answer
            elif flag == 1:
                assert code == UNIMPLEMENTED, answer
            elif flag != 0:
                assert code == INVALID, answer
            elif declared > MAX_REQUEST_BYTES:
                assert code == EXHAUSTED, answer
            elif declared > len(sent) - 5:
                assert code == INVALID, answer
            else:
                assert code in (OK, INVALID), answer

        framing()


def send_worst_cases(target: Target, rounds: int) -> None:
    """The costliest requests: at the limits, and past them."""
    tiny_ids = b"\x0a\x00" * ((MAX_REQUEST_BYTES - 16) // 2)  # 2 million empty IDs
    container = b"\x0a" + _varint(len(tiny_ids)) + tiny_ids
    distinct = [f"{i:x}" for i in range(MAX_DEVICE_IDS - len(target.ids))] + target.ids
    preferred = api.ContainerPreferredAllocationRequest(available_deviceIDs=distinct, allocation_size=GPUS)
    cases = [
        ("Allocate", container, INVALID),
        ("GetPreferredAllocation", container, INVALID),
        ("Allocate", allocate_body(distinct), INVALID),
        ("GetPreferredAllocation", bytes(api.PreferredAllocationRequest(container_requests=[preferred])), OK),
        ("Allocate", b"\x0a" * (16 << 20), EXHAUSTED),
    ]
    with grpc.insecure_channel(f"unix://{target.socket_path}") as channel:
        for _ in range(rounds):
            for method, body, expected in cases:
                outcome = unary(channel, method, body)
                target.sent(f"{method} (worst case)", len(body), outcome)
                assert outcome.code == expected, outcome


def allocate_body(ids: list[str]) -> bytes:
    return bytes(api.AllocateRequest(container_requests=[api.ContainerAllocateRequest(devices_ids=ids)]))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


# --- the test


@pytest.fixture
async def target(kubelet: KubeletSimulator, config: Config, plugin_dir: Path) -> AsyncIterator[Target]:
    async with running_agent(config, fake_nvml(GPUS)):
        plugin = await kubelet.wait_registered(GPU_RESOURCE)
        yield Target(str(plugin_dir / plugin.endpoint), list(plugin.devices), Counter())
        # The kubelet's own stream lived through it all, and allocation still works.
        assert not kubelet.plugins[GPU_RESOURCE].stream_ended
        await kubelet.allocate(GPU_RESOURCE, list(plugin.devices)[:2])


async def test_fuzzing_the_handlers_never_hurts_the_agent(target: Target, figures: Figures) -> None:
    probe = Probe(target.socket_path)
    examples = scaled(600, minimum=20)
    work: list[tuple[Callable[[Target, int], None], int]] = [
        (fuzz_allocate, examples),
        (fuzz_preferred, examples),
        (fuzz_random_bytes, examples),
        (fuzz_framing, examples),
        (send_worst_cases, scaled(2)),
    ]
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, probe.ask)
        tg.start_soon(anyio.to_thread.run_sync, probe.watch)
        answered_during: dict[str, int] = {}
        try:
            with anyio.fail_after(30):
                while not (probe.answers and probe.listed):  # noqa: ASYNC110 - counters in threads
                    await anyio.sleep(0.01)
            for run, amount in work:
                answers_before = probe.answers
                await anyio.to_thread.run_sync(run, target, amount)
                answered_during[run.__name__] = probe.answers - answers_before
        finally:
            probe.end()
    name = "gRPC fuzzing (8 fake GPUs)"
    figures.record(name, "requests sent", sum(target.tally.values()))
    figures.record(
        name, "refused (not OK)", sum(n for k, n in target.tally.items() if not k.endswith(": OK"))
    )
    figures.record(name, "largest request (bytes)", target.largest)
    figures.record(name, "answers by target and status", dict(sorted(target.tally.items())))
    figures.record(name, "probe answers / misses", f"{probe.answers} / {len(probe.misses)}")
    figures.record(name, "probe answers during each target", answered_during)
    figures.record(name, "slowest probe answer (s, informative)", round(probe.slowest, 3))
    assert probe.misses == [], f"the agent did not answer within the probe's bound: {probe.misses[:5]}"
    assert probe.stream_error is None, probe.stream_error
