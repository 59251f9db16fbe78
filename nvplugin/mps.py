"""The MPS control daemons: one per MPS-shared resource, started and supervised by the agent.

NVIDIA runs these from a second DaemonSet (its mps-control-daemon); nvplugin runs them from the
agent, the same way (cmd/mps-control-daemon/mps/daemon.go): `nvidia-cuda-mps-control -d` with
the resource's pipe and log directories under the MPS root (core.mps), then the pinned device
memory limits and the active thread percentage set through the control pipe, then a .started
file. On stop: `quit`, the .started file and the log directory removed.

Beyond NVIDIA's: the daemon sees only its resource's GPUs (CUDA_VISIBLE_DEVICES); a daemon left
by an earlier run is asked to quit and its pipe directory emptied before a new one starts (the
directory itself is kept: running pods have it mounted); a daemon that dies is noticed at once
(through a pidfd, no polling) and started again with backoff, its resource's GPUs marked
Unhealthy in NodeState meanwhile (source "mps:<resource>") so the kubelet stops allocating them.

Every process runs through anyio and every file operation in a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import select
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Protocol

import anyio
from anyio.abc import TaskStatus

from nvplugin.core.config import Config
from nvplugin.core.mps import (
    CONTAINER_ROOT,
    CONTROL_BINARY,
    MpsDaemonPlan,
    MpsRoot,
    is_mps_shared,
    plan_mps_daemons,
)
from nvplugin.nvml.base import Nvml
from nvplugin.state import NodeState
from nvplugin.tasks import Backoff

log = logging.getLogger(__name__)

# Where driver containers (GKE's installer, some operators) put the driver's binaries.
EXTRA_BINARY_DIRS = ("/usr/local/nvidia/bin",)
# A daemon that dies is started again after 0.5 s, doubling up to 30 s.
RESTART = Backoff(initial=0.5, cap=30.0, healthy_after=60.0)
# Bounds on one control command (the client forwards a line and prints the reply) and on the
# daemon's exit after `quit`, before it is killed.
COMMAND_TIMEOUT_S = 10.0
STOP_GRACE_S = 5.0
# NVIDIA labels the pipe directory so that unprivileged containers may use it (SELinux hosts).
SELINUX_CONTAINER_LABEL = b"system_u:object_r:container_file_t:s0"
_FAKE_CONTROL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nvml", "fakempscontrol.py")


class MpsError(Exception):
    """A daemon could not be started, configured or stopped; the message says what and where."""


# --- the task


class MpsOwner(Protocol):
    """What the task needs of the agent (nvplugin.agent.Agent)."""

    @property
    def state(self) -> NodeState: ...
    @property
    def config(self) -> Config: ...
    @property
    def nvml(self) -> Nvml: ...


def wants_mps_daemons(owner: MpsOwner) -> bool:
    """The task applies: some advertised resource is shared with MPS, or an MPS root is set.
    The task list is decided once, at start; with an MPS root the node is set up for MPS (the
    DaemonSet mounts it), so a reload (SIGHUP, a node-label config switch) may share a resource
    with MPS later, and its daemon must then run."""
    return owner.config.mps_root is not None or any(is_mps_shared(r) for r in owner.state.resources)


async def run_mps_daemons(owner: MpsOwner) -> None:
    """The agent's "mps-daemons" task: fake GPUs get the fake control daemon
    (nvml/fakempscontrol.py), real ones NVIDIA's, found under the driver root."""
    from nvplugin.nvml.fake import FakeNvml

    control = fake_control_command if isinstance(owner.nvml, FakeNvml) else find_control_command
    await MpsDaemons(owner.state, lambda: owner.config, control).run()


def fake_control_command(config: Config) -> tuple[str, ...]:
    return (sys.executable, _FAKE_CONTROL)


def find_control_command(config: Config) -> tuple[str, ...]:
    """NVIDIA's nvidia-cuda-mps-control: under the container driver root (where the host's
    driver root is mounted), then the driver root, in the standard bin directories (symlinks
    resolved inside the root), then /usr/local/nvidia/bin and this process's PATH. Blocking."""
    # Here, not at the top: the CDI modules cost the agent's start-up ~15 ms otherwise.
    from nvplugin.cdi.hostfacts import DriverRoot
    from nvplugin.core.cdi import BINARY_DIRS

    searched = []
    roots = [config.container_driver_root] if os.path.isdir(config.container_driver_root) else []
    roots.append(config.nvidia_driver_root)
    for root in dict.fromkeys(roots):
        driver_root = DriverRoot(root)
        for directory in BINARY_DIRS:
            path = posixpath.join(directory, CONTROL_BINARY)
            searched.append(driver_root.host(path))
            real = driver_root.real_path(path)
            if real is not None and _is_executable(driver_root.host(real)):
                return (driver_root.host(real),)
    for directory in (*EXTRA_BINARY_DIRS, *os.get_exec_path()):
        path = os.path.join(directory, CONTROL_BINARY)
        if path in searched:
            continue
        searched.append(path)
        if _is_executable(path):
            return (path,)
    raise MpsError(
        f"{CONTROL_BINARY} not found: looked in {', '.join(dict.fromkeys(os.path.dirname(p) for p in searched))}. "
        "MPS sharing needs the driver's MPS binaries in the agent's container: ask the NVIDIA "
        "container runtime for them (NVIDIA_DRIVER_CAPABILITIES=compute,utility) or mount the "
        "host's driver root at the container driver root"
    )


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def agent_mps_root(config: Config, container_root: str = CONTAINER_ROOT) -> MpsRoot:
    """Where this process sees the MPS root: /mps when the DaemonSet mounts the host's root
    there (as NVIDIA's charts do), else --mps-root itself (the agent runs on the host). Blocking."""
    if os.path.isdir(container_root) or config.mps_root is None:
        return MpsRoot(container_root)
    return MpsRoot(config.mps_root)


ControlLookup = Callable[[Config], tuple[str, ...]]


class MpsDaemons:
    """Keeps one control daemon running per MPS-shared resource, following NodeState: a
    resource that stops being MPS-shared (a reload) has its daemon stopped, a new one gets
    one, and one whose GPUs or limits change is restarted."""

    def __init__(
        self,
        state: NodeState,
        config: Callable[[], Config],
        control: ControlLookup = find_control_command,
        *,
        container_root: str = CONTAINER_ROOT,
    ) -> None:
        self._state = state
        self._config = config
        self._control = control
        self._container_root = container_root

    async def run(self) -> None:
        running: dict[str, tuple[MpsDaemonPlan, anyio.CancelScope, anyio.Event]] = {}
        async with anyio.create_task_group() as tg:
            while True:
                seen = self._state.version
                wanted = {}
                if any(is_mps_shared(r) for r in self._state.resources):
                    root = await anyio.to_thread.run_sync(
                        agent_mps_root, self._config(), self._container_root
                    )
                    plans = plan_mps_daemons(self._state.resources, self._state.inventory, root)
                    wanted = {p.resource: p for p in plans}
                for name, (plan, scope, stopped) in list(running.items()):
                    if wanted.get(name) != plan:
                        why = (
                            "its GPUs or limits changed"
                            if name in wanted
                            else "it is no longer shared with MPS"
                        )
                        log.info("stopping the MPS control daemon for %s: %s", name, why)
                        scope.cancel()
                        await stopped.wait()
                        del running[name]
                for name, plan in wanted.items():
                    if name not in running:
                        stopped = anyio.Event()
                        scope = await tg.start(self._supervise, plan, stopped)
                        running[name] = (plan, scope, stopped)
                await self._state.wait_changed(seen)

    async def _supervise(
        self, plan: MpsDaemonPlan, stopped: anyio.Event, *, task_status: TaskStatus[anyio.CancelScope]
    ) -> None:
        source = f"mps:{plan.resource}"
        next_delay = RESTART.delays()
        daemon: MpsDaemon | None = None
        try:
            with anyio.CancelScope() as scope:
                task_status.started(scope)
                while True:
                    began = anyio.current_time()
                    try:
                        control = await anyio.to_thread.run_sync(self._control, self._config())
                        daemon = MpsDaemon(plan, control)
                        pid = await daemon.start()
                    except MpsError as exc:
                        why = f"MPS control daemon for {plan.resource} could not start: {exc}"
                        log.error("%s", why)
                        self._mark(plan, source, why)
                    else:
                        self._clear(plan, source)
                        log.info(
                            "MPS control daemon for %s running (pid %d, GPUs %s, %d replicas each)",
                            plan.resource,
                            pid,
                            ", ".join(plan.gpu_uuids),
                            plan.replicas,
                        )
                        await daemon.wait_exit()
                        why = f"MPS control daemon for {plan.resource} (pid {pid}) exited"
                        log.error(
                            "%s; starting it again. Its control.log ends:\n%s", why, await daemon.log_tail()
                        )
                        self._mark(plan, source, f"{why}; restarting it")
                    await anyio.sleep(next_delay(anyio.current_time() - began))
        finally:
            with anyio.CancelScope(shield=True):
                if daemon is not None:
                    await daemon.stop()
                self._clear(plan, source)
                stopped.set()

    def _mark(self, plan: MpsDaemonPlan, source: str, reason: str) -> None:
        for uuid in plan.gpu_uuids:
            self._state.mark_unhealthy(uuid, reason, source=source)

    def _clear(self, plan: MpsDaemonPlan, source: str) -> None:
        for uuid in plan.gpu_uuids:
            self._state.mark_healthy(uuid, source=source)


# --- one daemon


class MpsDaemon:
    """One resource's control daemon: `start`, `wait_exit`, `command`, `stop`."""

    def __init__(self, plan: MpsDaemonPlan, control: Sequence[str]) -> None:
        self.plan = plan
        self.control = tuple(control)
        self.pid: int | None = None
        self._process: _Watched | None = None
        # Set once this daemon's pipe directory was emptied: a PID file there is then its own
        # (until `pid` is set, when it is watched, or has ended).
        self._prepared = False
        path = os.pathsep.join([os.path.dirname(self.control[0]), os.environ.get("PATH", os.defpath)])
        passed = {k: os.environ[k] for k in ("LD_LIBRARY_PATH",) if k in os.environ}
        self.environment = {"PATH": path, **passed, **plan.environment()}

    async def start(self) -> int:
        """Start the daemon with the plan's defaults set; its PID. MpsError says why not."""
        await self._retire_leftover()
        await anyio.to_thread.run_sync(prepare_directories, self.plan)
        self._prepared = True
        await self._daemonize()
        pid = await self._wait_for_pid()
        self._process = _Watched(pid)
        self.pid = pid
        try:
            for setting in self.plan.settings():
                await self.command(setting)
            await anyio.to_thread.run_sync(_touch, self.plan.started_file)
        except MpsError:
            await self.stop()
            raise
        return pid

    async def wait_exit(self) -> None:
        """Until the daemon ends, however it ends."""
        process = self._process
        assert process is not None
        try:
            await process.wait()
        finally:
            if not process.alive():
                self._process = None
                process.close()

    async def command(self, text: str) -> str:
        """Send one control command (as `echo TEXT | nvidia-cuda-mps-control`); its output."""
        with anyio.move_on_after(COMMAND_TIMEOUT_S) as scope, _os_errors(f"run {self.control[-1]}"):
            result = await anyio.run_process(
                self.control, input=text.encode() + b"\n", env=self.environment, check=False
            )
        if scope.cancelled_caught:
            raise MpsError(f"{text!r}: the control daemon did not answer within {COMMAND_TIMEOUT_S:g} s")
        output = (result.stdout + result.stderr).decode(errors="replace").strip()
        if result.returncode != 0:
            raise MpsError(f"{text!r} failed (exit code {result.returncode}): {output or 'no output'}")
        return output

    async def stop(self) -> None:
        """`quit`, killed if it does not exit within STOP_GRACE_S; then its files removed."""
        process, self._process = self._process, None
        if process is None and self._prepared and self.pid is None:
            # Stopped while starting, after the daemon forked but before its PID was read.
            pid = await anyio.to_thread.run_sync(_read_pid_if_any, self.plan.pid_file)
            process = _Watched(pid) if pid is not None else None
        if process is not None:
            try:
                if process.alive():
                    await self.command("quit")
                    with anyio.move_on_after(STOP_GRACE_S):
                        await process.wait()
            except MpsError as exc:
                log.warning("MPS control daemon for %s did not take quit: %s", self.plan.resource, exc)
            if process.alive():
                log.warning(
                    "MPS control daemon for %s (pid %d) still runs: killing it",
                    self.plan.resource,
                    process.pid,
                )
                process.kill()
                with anyio.move_on_after(1.0):
                    await process.wait()
            process.close()
            log.info("MPS control daemon for %s stopped", self.plan.resource)
        try:
            await anyio.to_thread.run_sync(remove_daemon_files, self.plan)
        except MpsError as exc:
            log.warning("%s", exc)

    async def log_tail(self, lines: int = 10) -> str:
        return await anyio.to_thread.run_sync(_tail, self.plan.control_log, lines)

    async def _daemonize(self) -> None:
        """`nvidia-cuda-mps-control -d`: returns once the daemon was forked off. Its output goes
        to a file, not a pipe: the daemon might keep a pipe open, and we would wait forever."""
        import subprocess  # not at the top: it is only needed here, not at the agent's start-up

        output = await anyio.to_thread.run_sync(_scratch_file)
        with output:
            with anyio.move_on_after(COMMAND_TIMEOUT_S) as scope, _os_errors(f"run {self.control[-1]}"):
                process = await anyio.open_process(
                    [*self.control, "-d"],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=self.environment,
                    start_new_session=True,
                )
                async with process:
                    code = await process.wait()
            text = await anyio.to_thread.run_sync(_read_back, output)
        where = f"{' '.join(self.control)} -d with CUDA_MPS_PIPE_DIRECTORY={self.plan.pipe_dir}"
        if scope.cancelled_caught:
            raise MpsError(f"{where} did not return within {COMMAND_TIMEOUT_S:g} s")
        if code != 0:
            raise MpsError(f"{where} failed (exit code {code}): {text or 'no output'}")

    async def _wait_for_pid(self) -> int:
        """The daemon's PID from its PID file, which it may write just after `-d` returned."""
        with anyio.move_on_after(COMMAND_TIMEOUT_S):
            while True:
                pid = await anyio.to_thread.run_sync(_read_pid_if_any, self.plan.pid_file)
                if pid is not None:
                    return pid
                await anyio.sleep(0.02)
        raise MpsError(f"the control daemon started but wrote no PID to {self.plan.pid_file}")

    async def _retire_leftover(self) -> None:
        """A daemon from an earlier run (the agent restarted on the host) is asked to quit. A PID
        file whose process is not a control daemon is stale (after a container restart, its PID
        belongs to someone else)."""
        pid = await anyio.to_thread.run_sync(_read_pid_if_any, self.plan.pid_file)
        program = os.path.basename(self.control[-1])
        if pid is None or not await anyio.to_thread.run_sync(_runs, pid, program):
            return
        try:
            await self.command("quit")
        except MpsError:
            return  # nothing answers on that pipe: the PID file is stale
        leftover = _Watched(pid)
        try:
            with anyio.move_on_after(STOP_GRACE_S):
                await leftover.wait()
            if leftover.alive():
                raise MpsError(
                    f"an MPS control daemon (pid {pid}) from an earlier run still serves "
                    f"{self.plan.pipe_dir} and did not quit"
                )
        finally:
            leftover.close()
        log.info("MPS control daemon for %s left by an earlier run (pid %d) quit", self.plan.resource, pid)


class _Watched:
    """A process we did not fork (the daemon forks itself away): its end is awaited through a
    pidfd (Linux 5.3+), else by checking once a second where pidfds are not allowed."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None = None
        self._gone = False
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._gone = True
        except OSError as exc:
            log.debug("no pidfd for pid %d (%s): checking it once a second", pid, exc)

    @staticmethod
    def exists(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def alive(self) -> bool:
        if self._gone:
            return False
        if self._fd is not None:
            readable, _, _ = select.select([self._fd], [], [], 0)
            self._gone = bool(readable)
        else:
            self._reap()
            self._gone = not self.exists(self.pid)
        if self._gone:
            self._reap()
        return not self._gone

    async def wait(self) -> None:
        if self._fd is not None and not self._gone:
            await anyio.wait_readable(self._fd)
        while self.alive():  # noqa: ASYNC110 - no pidfd: nothing to wait on but the clock
            await anyio.sleep(1.0)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self._fd is not None:
                signal.pidfd_send_signal(self._fd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _reap(self) -> None:
        """When the agent is PID 1 of its container, the orphaned daemon is its child."""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, os.WNOHANG)


# --- files (blocking: called in worker threads)


def prepare_directories(plan: MpsDaemonPlan) -> None:
    """The pipe, log and shm directories, with nothing left in the pipe directory by an earlier
    daemon (the directory itself stays: running pods have it mounted)."""
    with _os_errors("prepare the MPS directories"):
        for directory in (plan.pipe_dir, plan.log_dir, plan.shm_dir):
            os.makedirs(directory, mode=0o755, exist_ok=True)
        _empty(plan.pipe_dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(plan.started_file)
        if os.path.exists("/sys/fs/selinux"):
            os.setxattr(plan.pipe_dir, "security.selinux", SELINUX_CONTAINER_LABEL)


def remove_daemon_files(plan: MpsDaemonPlan) -> None:
    """What a stopped daemon leaves: its socket and PID file, .started, the log directory."""
    with _os_errors("remove the stopped MPS daemon's files"):
        if os.path.isdir(plan.pipe_dir):
            _empty(plan.pipe_dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(plan.started_file)
        _remove_tree(plan.log_dir)


def _read_pid_if_any(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read(64).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _runs(pid: int, program: str) -> bool:
    """Whether process `pid` runs `program` (its command line names it)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            arguments = f.read().split(b"\0")
    except OSError:
        return False
    return any(os.path.basename(a.decode(errors="replace")) == program for a in arguments)


def _empty(directory: str) -> None:
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            _remove_tree(entry.path)
        else:
            os.unlink(entry.path)


def _touch(path: str) -> None:
    with _os_errors("write the .started file"), open(path, "w") as marker:
        marker.write("")


def _tail(path: str, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"({path} cannot be read: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def _scratch_file() -> IO[bytes]:
    import tempfile

    return tempfile.TemporaryFile()


def _read_back(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read(4096).decode(errors="replace").strip()


@contextlib.contextmanager
def _os_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise MpsError(f"cannot {what}:{where}: {exc.strerror or exc}") from None
