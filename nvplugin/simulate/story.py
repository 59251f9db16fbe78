"""`nvplugin simulate`: the real agent on simulated GPUs, with an embedded kubelet, narrated.

Meant for a newcomer: it shows in plain words what the kubelet sees (the registration, the
devices and their health, a preferred allocation and an allocation, or the plugin's refusal as
a real kubelet would meet it), then keeps running and prints every change of the device list
until Ctrl-C or SIGTERM (or stops after one round with --once). SIGHUP reloads the agent's
configuration, as it does for `nvplugin run`. Everything it creates (sockets, its temporary
directory) is removed when it stops.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
from grpclib import GRPCError

from nvplugin.agent import Agent, AgentError
from nvplugin.core.config import Config
from nvplugin.core.resources import Resource
from nvplugin.core.xid import DEFAULT_POLICY, HealthPolicy
from nvplugin.nvml import open_backend
from nvplugin.nvml.fakecontrol import default_control_path
from nvplugin.simulate.kubelet import KubeletSimulator, PluginView


def say(text: str = "") -> None:
    print(text, flush=True)


def describe(plugin: PluginView) -> list[str]:
    lines = [
        f"The kubelet sees {plugin.resource_name}: capacity {plugin.capacity}, "
        f"allocatable {plugin.allocatable} (healthy devices)."
    ]
    if plugin.stream_ended:
        lines[0] += " The plugin's stream has ended: nothing is allocatable until it registers again."
    for device_id, health in plugin.devices.items():
        numa = plugin.numa.get(device_id) or []
        where = f", NUMA node {','.join(map(str, numa))}" if numa else ""
        lines.append(f"  {device_id}  {health}{where}")
    return lines


def python_command(*args: str) -> str:
    """A command line that works in a new terminal too (the interpreter's full path: no venv
    to activate)."""
    return shlex.join([sys.executable, "-m", "nvplugin", *args])


@contextlib.contextmanager
def _workspace(requested: str | None, fake_control: str | None) -> Iterator[tuple[Path, str]]:
    """(the kubelet's directory, the fake-GPU control socket). Without --dir, both live in a new
    temporary directory, removed on the way out (the control socket beside the kubelet's
    directory, never in it)."""
    if requested:
        yield Path(requested), fake_control or default_control_path()
        return
    with tempfile.TemporaryDirectory(prefix="nvplugin-sim-") as tmp:
        yield Path(tmp) / "device-plugins", fake_control or str(Path(tmp) / "fake-control.sock")


async def simulate(
    config: Config,
    once: bool,
    directory: Path,
    health_policy: HealthPolicy = DEFAULT_POLICY,
    fake_control: str | None = None,
) -> int:
    nvml = open_backend(config)
    config = config.with_changes(kubelet_socket=str(directory / "kubelet.sock"))
    control = fake_control or default_control_path()
    say(f"nvplugin simulate: simulated GPUs ({config.fake_gpus}) and an embedded kubelet in {directory}")
    async with KubeletSimulator(directory, narrate=lambda t: say(f"  [{t}]")) as kubelet:
        # The agent handles SIGTERM, SIGINT (stop) and SIGHUP (reload) as `nvplugin run` does.
        agent = Agent(config, nvml, health_policy=health_policy, fake_control=control)
        failure: list[AgentError] = []
        async with anyio.create_task_group() as tg:

            async def run_agent() -> None:
                try:
                    await agent.run()
                except AgentError as exc:
                    failure.append(exc)
                tg.cancel_scope.cancel()  # the agent stopped (a signal or a failure): so do we

            tg.start_soon(run_agent)
            await _story(agent, kubelet)
            if once:
                agent.stop()
            else:
                say("\nRunning. Every change the kubelet sees is printed below; Ctrl-C stops.")
                say("Try, from another terminal:")
                say(f"  {python_command('inject-xid', '--control', control, '--gpu', '0', '--xid', '79')}")
                await follow(kubelet)
        if failure:
            say(f"The agent could not start: {failure[0]}")
            return failure[0].exit_code
    say("Stopped: the plugin's sockets are removed.")
    return 0


async def _story(agent: Agent, kubelet: KubeletSimulator) -> None:
    with anyio.fail_after(10):
        await agent.wait_started()
        if any(r.devices for r in agent.state.resources):
            await agent.wait_ready()
        else:
            say("\nNo GPUs: the agent registers nothing (a resource without devices is not advertised).")
    for resource in agent.state.resources:
        if resource.devices:
            await _one_resource(resource, kubelet)


async def _one_resource(resource: Resource, kubelet: KubeletSimulator) -> None:
    plugin = await kubelet.wait_registered(resource.name)
    say(f"\nThe agent registered {resource.name} with the kubelet.")
    for line in describe(plugin):
        say(line)
    healthy = [d for d, h in plugin.devices.items() if h == "Healthy"]
    if not healthy:
        say("No healthy device: nothing can be allocated.")
        return
    size = min(2, len(healthy))
    choice = await kubelet.preferred(resource.name, healthy, [], size)
    say(f"\nA pod asks for {size} {resource.name}; the kubelet asks the plugin which ones to prefer:")
    say(f"  preferred: {', '.join(choice)}")
    try:
        response = await kubelet.allocate(resource.name, choice)
    except GRPCError as exc:
        say("The plugin refuses the allocation, so a real kubelet fails the pod's admission:")
        say(f"  {exc.message or exc.status.name}")
        if size == 1:
            return
        choice = choice[:1]
        say(f"A pod that asks for one {resource.name} instead:")
        response = await kubelet.allocate(resource.name, choice)
    say("The kubelet allocates them; the plugin tells the container runtime what to expose:")
    for key, value in sorted(response.envs.items()):
        say(f"  env {key}={value}")
    for mount in response.mounts:
        say(f"  mount {mount.host_path} -> {mount.container_path}")
    for spec in response.devices:
        say(f"  device {spec.host_path} ({spec.permissions})")
    for key, value in sorted(response.annotations.items()):
        say(f"  annotation {key}={value}")
    for name in response.cdi_devices:
        say(f"  CDI device {name.name}")


async def follow(kubelet: KubeletSimulator) -> None:
    """Print what the kubelet sees whenever it changes, until cancelled."""
    last: dict[str, Any] = {name: _view(p) for name, p in kubelet.plugins.items()}
    while True:
        await kubelet.wait_for(lambda: _changed(kubelet, last), timeout=1e9, what="a change")
        for name, plugin in kubelet.plugins.items():
            now = _view(plugin)
            if last.get(name) != now:
                last[name] = now
                say("")
                for line in describe(plugin):
                    say(line)


def _view(plugin: PluginView) -> tuple[dict[str, str], bool]:
    return dict(plugin.devices), plugin.stream_ended


def _changed(kubelet: KubeletSimulator, last: dict[str, Any]) -> bool:
    return any(last.get(n) != _view(p) for n, p in kubelet.plugins.items())


def run_simulation(args: argparse.Namespace, config: Config, run_async: Callable[..., Any]) -> int:
    with _workspace(args.dir, args.fake_control) as (directory, control):
        try:
            code: int = run_async(lambda: simulate(config, args.once, directory, args.health_policy, control))
        except KeyboardInterrupt:
            say("\nCtrl-C: stopping.")
            code = 0
    sys.stdout.flush()
    return code
