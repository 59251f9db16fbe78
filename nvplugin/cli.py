"""Command line: `nvplugin run`, `nvplugin simulate` and the tools around them.

Flags and environment variables keep NVIDIA's names. Bad values are reported with the usage and
exit code 2 before any socket is touched; a start-up failure (no NVML) exits 1 with a message
that says what to check.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from nvplugin import __version__
from nvplugin.core.config import OPTIONS, Config, ConfigError, Kind
from nvplugin.logs import add_logging_flags, setup_logging

if TYPE_CHECKING:
    from nvplugin.configload import LoadedConfig

log = logging.getLogger("nvplugin")

EXIT_OK = 0
EXIT_START_FAILED = 1
EXIT_USAGE = 2


def add_config_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """Every setting of OPTIONS as a flag under all of NVIDIA's names; the default None means
    'not given' (env or file decide). A bare boolean flag means true (`--oneshot`), and
    `--oneshot=false` works; list flags may be repeated or take a comma list. A command's own
    flag added later wins over a config flag's name (doctor's --output over GFD's alias)."""
    # argparse checks conflicts in the group an argument is added to: the parser's optionals.
    parser.conflict_handler = parser._optionals.conflict_handler = "resolve"
    for option in OPTIONS:
        if option.field in skip:
            continue
        env = f" [env {', '.join(option.envs)}]" if option.envs else ""
        kwargs: dict[str, Any] = {"dest": option.field, "default": None, "metavar": option.metavar}
        if option.kind is Kind.BOOL:
            kwargs.update(nargs="?", const="true")
        elif option.kind in (Kind.LIST, Kind.INTS):
            kwargs.update(action="append")
        parser.add_argument(*option.flags, help=option.help + env, **kwargs)


def _add_fake_control_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fake-control",
        default=None,
        metavar="PATH",
        help="with --fake-gpus: unix socket for `nvplugin inject-xid` [env NVPLUGIN_FAKE_CONTROL] "
        "(default $XDG_RUNTIME_DIR/nvplugin-fake.sock, else /tmp/nvplugin-fake-<uid>.sock)",
    )


def flags_from_args(args: argparse.Namespace) -> dict[str, object]:
    return {o.field: getattr(args, o.field, None) for o in OPTIONS}


def config_from_args(args: argparse.Namespace) -> LoadedConfig:
    """The effective config (flags > env > config file), health policy and warnings."""
    from nvplugin.configload import load

    return load(flags_from_args(args), os.environ)


# Tool commands in their own modules (nvplugin.commands.*), each with add_parser(subparsers)
# setting `run(args) -> int`. A module is imported only when its command runs (or for the full
# help): `nvplugin run` must not pay for the tools' imports on its way to Register.
TOOL_COMMANDS = {
    "check-config": ("nvplugin.commands.check_config", "validate an NVIDIA-compatible v1 config file"),
    "labels": ("nvplugin.commands.labels", "print the node labels this node would get (no cluster needed)"),
    "inject-xid": (
        "nvplugin.commands.inject_xid",
        "inject an XID or fault into a running agent on fake GPUs",
    ),
    "kubelet": (
        "nvplugin.commands.kubelet",
        "run a stand-in kubelet for local work: agents register with it, it tells what it sees",
    ),
    "doctor": ("nvplugin.commands.doctor", "check this node's driver, runtime, kubelet and cluster setup"),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nvplugin",
        description="Kubernetes node agent for NVIDIA GPUs (device plugin API v1beta1).",
    )
    parser.add_argument("--version", action="version", version=f"nvplugin {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="serve the kubelet: register nvidia.com/gpu and keep it up to date",
        description="Run the agent: discover GPUs through NVML (or --fake-gpus), serve the device-plugin "
        "API on a unix socket beside the kubelet's, register, and re-register when the kubelet restarts.",
    )
    add_config_flags(run)
    _add_fake_control_flag(run)
    add_logging_flags(run)
    run.set_defaults(handler=_cmd_run)

    simulate = commands.add_parser(
        "simulate",
        help="run the agent on simulated GPUs against an embedded kubelet, and tell what it sees",
        description="Start simulated GPUs, the real agent and an embedded kubelet simulator in one "
        "process, and describe in plain words what the kubelet sees: registration, devices with health, "
        "an allocation. Runs until Ctrl-C, printing every change.",
    )
    add_config_flags(simulate, skip=("kubelet_socket", "fake_gpus"))
    simulate.add_argument(
        "--fake-gpus",
        dest="fake_gpus",
        default="4",
        metavar="N|FILE",
        help="simulated GPUs: a count or a layout file (default 4)",
    )
    simulate.add_argument("--once", action="store_true", help="exit after one round instead of running on")
    simulate.add_argument(
        "--dir", default=None, help="directory for the kubelet's sockets (default: a new temporary one)"
    )
    _add_fake_control_flag(simulate)
    add_logging_flags(simulate)
    simulate.set_defaults(handler=_cmd_simulate, log_level="warning")

    requested = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    for name, (module_name, summary) in TOOL_COMMANDS.items():
        if requested in (name, None):
            importlib.import_module(module_name).add_parser(commands)
        else:  # listed in `nvplugin --help`, not imported
            commands.add_parser(name, help=summary)
    return parser


def _run_async(fn: Callable[[], object]) -> object:
    import anyio

    # uvloop when installed (the `fast` extra): a cheaper loop for the RPC path.
    use_uvloop = not os.environ.get("NVPLUGIN_NO_UVLOOP") and importlib.util.find_spec("uvloop") is not None
    backend_options = {"use_uvloop": True} if use_uvloop else {}
    return anyio.run(fn, backend="asyncio", backend_options=backend_options)  # type: ignore[arg-type]


def _cmd_run(args: argparse.Namespace, config: Config) -> int:
    from nvplugin.configload import ConfigSource
    from nvplugin.nvml import open_backend
    from nvplugin.nvml.early import EarlyStart

    # Reloads (SIGHUP, node-label config switch) re-read the environment and the config file;
    # the flags stay as given.
    source = ConfigSource(flags_from_args(args))
    if config.config_dir is not None:
        config = _initial_node_config(source, config)
    if config.gfd_oneshot:
        return _label_once(config)
    _check_fake_control(args, config)
    # NVML starts now, in a thread, while the agent's modules are imported below.
    early = EarlyStart(open_backend(config))
    from nvplugin.agent import Agent, AgentError

    agent = Agent(
        config,
        early.nvml,
        health_policy=args.health_policy,
        config_source=source,
        early=early,
        fake_control=args.fake_control,
        reload_pending=lambda: EARLY_SIGNALS.hup,
    )
    try:
        _run_async(agent.run)
    except AgentError as exc:
        _fatal(args, str(exc))
        return exc.exit_code
    return EXIT_OK


def _label_once(config: Config) -> int:
    """GFD's --oneshot: label the node once and exit (no kubelet side). The labels go to
    --output-file and, with --labels, to the Node; with neither, to stdout."""
    from nvplugin.core.labels import feature_file
    from nvplugin.nodelabels import label_node_once, labels_once, write_feature_file
    from nvplugin.nvml.base import NvmlError

    try:
        labels = labels_once(config, warn=sys.stderr)
    except NvmlError as exc:
        log.error("cannot read the GPUs: %s", exc)
        return EXIT_START_FAILED
    if config.gfd_output_file is not None:
        try:
            write_feature_file(config.gfd_output_file, labels)
        except OSError as exc:
            log.error("cannot write the labels to %s: %s", config.gfd_output_file, exc.strerror or exc)
            return EXIT_START_FAILED
        log.info("labels written to %s", config.gfd_output_file)
    if config.labels:
        if not _run_async(lambda: label_node_once(config, labels)):
            log.error("the Node did not take the labels within a minute (see the errors above)")
            return EXIT_START_FAILED
        log.info("labels written to the Node")
    if config.gfd_output_file is None and not config.labels:
        sys.stdout.write(feature_file(labels))
    return EXIT_OK


def _check_fake_control(args: argparse.Namespace, config: Config) -> None:
    """The fake-GPU control socket must not be in the kubelet's plugin directory (the kubelet
    would take it for a plugin): a usage error, before anything starts."""
    if config.fake_gpus is None:
        return
    from nvplugin.nvml.fakecontrol import ControlError, default_control_path

    path = args.fake_control or default_control_path()
    if os.path.realpath(os.path.dirname(path) or ".") == os.path.realpath(config.plugin_dir):
        raise ControlError(
            f"{path}: the fake-GPU control socket must not be in the kubelet's device-plugin "
            f"directory {config.plugin_dir} (the kubelet would take it for a plugin)"
        )


def _initial_node_config(source: Any, config: Config) -> Config:
    """With --config-dir, start on the config NVIDIA's config-manager would pick before the
    node label is read (default config, else fallbacks); the label may switch it later."""
    from nvplugin.k8s.nodeconfig import NodeConfigSwitcher

    assert config.config_dir is not None
    switcher = NodeConfigSwitcher(
        config.config_dir, lambda name, path: None, default_config=config.default_config
    )
    try:
        _, path = switcher.initial()
    except ValueError as exc:
        raise ConfigError(f"--config-dir: {exc}") from None
    source.select_file(str(path) if path is not None else None)
    loaded: Config = source.load()
    return loaded


def _cmd_simulate(args: argparse.Namespace, config: Config) -> int:
    from nvplugin.simulate.story import run_simulation

    if args.dir is not None:
        _check_fake_control(args, config.with_changes(kubelet_socket=os.path.join(args.dir, "kubelet.sock")))
    return run_simulation(args, config, _run_async)


class EarlySignals:
    """Signal handling from the first instruction of main, until the agent's own takes over:
    SIGTERM is a clean exit 0 (nothing to clean up yet: no socket exists before the agent's
    handler is in place); SIGHUP is remembered and becomes a reload once the agent runs (the
    configuration it starts with may predate the file the sender just changed)."""

    def __init__(self) -> None:
        self.hup = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._terminate)
        signal.signal(signal.SIGHUP, self._hangup)

    def _terminate(self, signum: int, frame: object) -> None:
        raise SystemExit(EXIT_OK)

    def _hangup(self, signum: int, frame: object) -> None:
        self.hup = True


EARLY_SIGNALS = EarlySignals()


def main(argv: Sequence[str] | None = None) -> None:
    EARLY_SIGNALS.install()
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        sys.exit(EXIT_USAGE)
    if not hasattr(args, "handler"):  # a self-contained tool command (check-config, ...)
        setup_logging(getattr(args, "log_level", "warning"), getattr(args, "log_format", "text"))
        sys.exit(args.run(args))
    # Logging first: with --log-format json even a fatal start-up error is one JSON line.
    setup_logging(args.log_level, args.log_format)
    try:
        loaded = config_from_args(args)
        config, warnings = loaded.config, loaded.warnings
        if args.command == "simulate":
            config = _simulate_config(args, config)
    except ConfigError as exc:
        _fatal(args, str(exc), hint=f"Run 'nvplugin {args.command} --help' for the accepted values.")
        sys.exit(EXIT_USAGE)
    for warning in warnings:
        log.warning("%s", warning)
    args.health_policy = loaded.health
    try:
        code = args.handler(args, config)
    except _usage_errors() as exc:
        _fatal(args, str(exc))
        code = EXIT_USAGE
    except KeyboardInterrupt:
        code = EXIT_OK
    _exit_now(code)


def _exit_now(code: int) -> None:
    """Exit without the interpreter's teardown once the agent has cleaned up after itself
    (streams ended, sockets removed, NVML shut down). The teardown would join the worker
    threads cancellation abandoned (an NVML event wait, the directory watcher: up to half a
    second) and unload every module, for nothing: the process is going."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _fatal(args: argparse.Namespace, message: str, hint: str = "") -> None:
    """A start-up error: plain lines on stderr, or one JSON log line with --log-format json."""
    if args.log_format == "json":
        log.critical("%s%s", message, f" ({hint})" if hint else "")
        return
    print(f"nvplugin {args.command}: error: {message}", file=sys.stderr)
    if hint:
        print(hint, file=sys.stderr)


def _simulate_config(args: argparse.Namespace, config: Config) -> Config:
    from nvplugin.core.config import parse_fake_gpus

    config = config.with_changes(fake_gpus=parse_fake_gpus("--fake-gpus", args.fake_gpus))
    if args.metrics_address is None and not os.environ.get("NVPLUGIN_METRICS_ADDRESS"):
        config = config.with_changes(metrics_address=None)  # a local demo binds no port unless asked
    return config


def _usage_errors() -> tuple[type[Exception], ...]:
    from nvplugin.nvml.fake import LayoutError
    from nvplugin.nvml.fakecontrol import ControlError

    return (LayoutError, ConfigError, ControlError)
