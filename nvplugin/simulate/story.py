"""`nvplugin simulate`: the real agent on simulated GPUs, with an embedded kubelet, narrated.

Meant for a newcomer: it shows in plain words what the kubelet sees (the registration, the
devices and their health, a preferred allocation and an allocation), then keeps running and
prints every change of the device list until Ctrl-C (or stops after one round with --once).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio

from nvplugin.agent import Agent, AgentError
from nvplugin.core.config import Config
from nvplugin.core.xid import DEFAULT_POLICY, HealthPolicy
from nvplugin.nvml import open_backend
from nvplugin.simulate.kubelet import KubeletSimulator, PluginView


def say(text: str = "") -> None:
    print(text, flush=True)


def describe(plugin: PluginView) -> list[str]:
    lines = [
        f"The kubelet sees {plugin.resource_name}: capacity {plugin.capacity}, "
        f"allocatable {plugin.allocatable} (healthy devices)."
    ]
    for device_id, health in plugin.devices.items():
        numa = plugin.numa.get(device_id) or []
        where = f", NUMA node {','.join(map(str, numa))}" if numa else ""
        lines.append(f"  {device_id}  {health}{where}")
    return lines


@contextlib.contextmanager
def _plugin_dir(requested: str | None) -> Iterator[Path]:
    if requested:
        yield Path(requested)
        return
    with tempfile.TemporaryDirectory(prefix="nvplugin-sim-") as tmp:
        yield Path(tmp)


async def simulate(
    config: Config,
    once: bool,
    directory: Path,
    health_policy: HealthPolicy = DEFAULT_POLICY,
    fake_control: str | None = None,
) -> int:
    nvml = open_backend(config)
    kubelet_socket = directory / "kubelet.sock"
    config = config.with_changes(kubelet_socket=str(kubelet_socket))
    say(f"nvplugin simulate: simulated GPUs ({config.fake_gpus}) and an embedded kubelet in {directory}")
    async with KubeletSimulator(directory, narrate=lambda t: say(f"  [{t}]")) as kubelet:
        agent = Agent(
            config, nvml, handle_signals=False, health_policy=health_policy, fake_control=fake_control
        )
        async with anyio.create_task_group() as tg:
            failure: list[AgentError] = []

            async def run_agent() -> None:
                try:
                    await agent.run()
                except AgentError as exc:
                    failure.append(exc)
                    tg.cancel_scope.cancel()

            tg.start_soon(run_agent)
            await _story(agent, kubelet)
            if once:
                tg.cancel_scope.cancel()
            else:
                say("\nRunning. Every change the kubelet sees is printed below; press Ctrl-C to stop.")
                say("Try, from another terminal: python -m nvplugin inject-xid --gpu 0 --xid 79")
                await _follow(agent, kubelet)
        if failure:
            say(f"The agent could not start: {failure[0]}")
            return 1
    say("Stopped: the plugin's sockets are removed.")
    return 0


async def _story(agent: Agent, kubelet: KubeletSimulator) -> None:
    # Wait until the agent has advertised every resource it has.
    with anyio.fail_after(10):
        await agent.wait_started()
        if agent.state.resources:
            await agent.wait_ready()
    for resource in agent.state.resources:
        plugin = await kubelet.wait_registered(resource.name)
        say(f"\nThe agent registered {resource.name} with the kubelet.")
        for line in describe(plugin):
            say(line)
        healthy = [d for d, h in plugin.devices.items() if h == "Healthy"]
        if not healthy:
            say("No healthy device: nothing can be allocated.")
            continue
        size = min(2, len(healthy))
        choice = await kubelet.preferred(resource.name, healthy, [], size)
        say(f"\nA pod asks for {size} {resource.name}; the kubelet asks the plugin which ones to prefer:")
        say(f"  preferred: {', '.join(choice)}")
        response = await kubelet.allocate(resource.name, choice)
        say("The kubelet allocates them; the plugin tells the container runtime what to expose:")
        for key, value in sorted(response.envs.items()):
            say(f"  env {key}={value}")
        for mount in response.mounts:
            say(f"  mount {mount.host_path} -> {mount.container_path}")
        for spec in response.devices:
            say(f"  device {spec.host_path} ({spec.permissions})")
        for name in response.cdi_devices:
            say(f"  CDI device {name.name}")


async def _follow(agent: Agent, kubelet: KubeletSimulator) -> None:
    last: dict[str, Any] = {name: (dict(p.devices), p.stream_ended) for name, p in kubelet.plugins.items()}
    while True:
        await kubelet.wait_for(lambda: _changed(kubelet, last), timeout=1e9, what="a change")
        for name, plugin in kubelet.plugins.items():
            now = (dict(plugin.devices), plugin.stream_ended)
            if last.get(name) != now:
                last[name] = now
                say("")
                for line in describe(plugin):
                    say(line)


def _changed(kubelet: KubeletSimulator, last: dict[str, Any]) -> bool:
    return any(last.get(n) != (dict(p.devices), p.stream_ended) for n, p in kubelet.plugins.items())


def run_simulation(args: argparse.Namespace, config: Config, run_async: Callable[..., Any]) -> int:
    with _plugin_dir(args.dir) as directory:
        try:
            code: int = run_async(
                lambda: simulate(config, args.once, directory, args.health_policy, args.fake_control)
            )
        except KeyboardInterrupt:
            say("\nCtrl-C: stopping.")
            code = 0
    sys.stdout.flush()
    return code
