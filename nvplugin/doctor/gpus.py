"""The GPU side of the node: NVML and the driver, the kernel modules, the device nodes."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from nvplugin.core.config import Config
from nvplugin.core.inventory import Inventory
from nvplugin.doctor.hostfs import HostFs
from nvplugin.doctor.result import FAIL, PASS, SKIP, WARN, CheckResult
from nvplugin.nvml import open_backend
from nvplugin.nvml.base import NvmlError, NvmlLibraryNotFound
from nvplugin.nvml.discovery import discover

NO_NVML = "no NVIDIA driver/NVML on this node"
NVML_FIX = (
    "install the NVIDIA driver on the node (nvidia-smi must work there); in a pod, run it with the "
    "nvidia container runtime (nvidia as containerd's default runtime, or runtimeClassName: nvidia) "
    "so that libnvidia-ml.so.1 is mounted in; if the driver lives under another root (a driver "
    "container: /run/nvidia/driver), pass --nvidia-driver-root"
)


@dataclass(frozen=True, slots=True)
class NvmlFacts:
    # "fake" (--fake-gpus) or "real".
    backend: str
    inventory: Inventory | None = None
    # Why NVML gave nothing: "library" (libnvidia-ml not loadable), "init" or "discovery".
    error_kind: str | None = None
    error: str | None = None


def read_nvml(config: Config) -> NvmlFacts:
    """Open the backend the config names, discover, shut down. Blocking: run in a thread.
    A bad --fake-gpus layout raises LayoutError (a usage error, as in `nvplugin run`)."""
    backend = "fake" if config.fake_gpus is not None else "real"
    nvml = open_backend(config)
    try:
        nvml.init()
    except NvmlLibraryNotFound as exc:
        return NvmlFacts(backend, error_kind="library", error=str(exc))
    except NvmlError as exc:
        return NvmlFacts(backend, error_kind="init", error=str(exc))
    try:
        return NvmlFacts(backend, inventory=discover(nvml))
    except NvmlError as exc:
        return NvmlFacts(backend, error_kind="discovery", error=str(exc))
    finally:
        with contextlib.suppress(NvmlError):  # the facts are read; a failed shutdown changes none
            nvml.shutdown()


def check_nvml(facts: NvmlFacts) -> CheckResult:
    name = "nvml"
    if facts.error_kind == "library":
        return CheckResult(name, FAIL, NO_NVML, (facts.error or "",), NVML_FIX)
    if facts.error_kind == "init":
        return CheckResult(
            name,
            FAIL,
            "the NVML library loads but does not initialise",
            (facts.error or "",),
            "check the driver on the node: nvidia-smi, and the kernel log (dmesg | grep -i nvrm); a "
            "'driver/library version mismatch' needs the node rebooted or the nvidia modules reloaded",
        )
    if facts.error_kind == "discovery" or facts.inventory is None:
        return CheckResult(
            name,
            FAIL,
            "NVML initialises but the GPUs cannot be listed",
            (facts.error or "",),
            "check nvidia-smi on the node and the kernel log (dmesg | grep -i nvrm)",
        )
    inventory = facts.inventory
    major, minor = inventory.cuda_version
    details = [f"driver {inventory.driver_version}, CUDA {major}.{minor}"]
    for gpu in inventory.gpus:
        mig = f", MIG on ({len(gpu.mig_devices)} MIG devices)" if gpu.mig_enabled else ""
        details.append(
            f"GPU {gpu.index}: {gpu.name} {gpu.uuid} ({gpu.pci_bus_id}, /dev/nvidia{gpu.minor}){mig}"
        )
    details.extend(f"problem: {p}" for p in inventory.problems)
    simulated = " simulated (--fake-gpus)" if facts.backend == "fake" else ""
    summary = (
        f"{len(inventory.gpus)}{simulated} GPU(s), driver {inventory.driver_version}, CUDA {major}.{minor}"
    )
    if inventory.problems:
        return CheckResult(
            name,
            FAIL,
            f"{summary}; {len(inventory.problems)} GPU(s) could not be read",
            tuple(details),
            "the GPUs named above are left out: check them with nvidia-smi -q and the kernel log",
        )
    if not inventory.gpus:
        return CheckResult(
            name,
            WARN,
            "NVML works but finds no GPU on this node",
            tuple(details),
            "if this node should have GPUs: check lspci | grep -i nvidia and nvidia-smi; a GPU bound "
            "to vfio-pci (passthrough) is invisible to NVML",
        )
    return CheckResult(name, PASS, summary, tuple(details))


# --- kernel modules

_KERNEL_VERSION = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)")
REQUIRED_MODULES = ("nvidia", "nvidia_uvm")
# Talos's NVIDIA guide loads these in the machine config; nvidia_modeset is loaded there too.
TALOS_MODULES = ("nvidia", "nvidia_uvm", "nvidia_modeset")


@dataclass(frozen=True, slots=True)
class ModuleFacts:
    # Module names loaded; None when /proc/modules could not be read.
    loaded: frozenset[str] | None
    # From /proc/driver/nvidia/version ("550.54.14"); None when absent.
    kernel_driver: str | None = None


def read_modules(host: HostFs) -> ModuleFacts:
    try:
        text = host.read_text(host.proc_path("modules"))
    except OSError:
        loaded = None
    else:
        loaded = frozenset(line.split(" ", 1)[0] for line in text.splitlines() if line.strip())
    try:
        match = _KERNEL_VERSION.search(host.read_text(host.proc_path("driver/nvidia/version")))
    except OSError:
        match = None
    return ModuleFacts(loaded, match.group(1) if match else None)


def check_kernel_modules(modules: ModuleFacts, nvml: NvmlFacts, talos: bool) -> CheckResult:
    name = "kernel-modules"
    if nvml.backend == "fake":
        return CheckResult(name, SKIP, "simulated GPUs (--fake-gpus) need no kernel driver")
    if modules.loaded is None:
        return CheckResult(
            name,
            WARN,
            "/proc/modules could not be read: which modules are loaded is unknown",
            fix="run it on the node (or in a pod that mounts the host's /proc), or check with lsmod | grep nvidia",
        )
    wanted = TALOS_MODULES if talos else REQUIRED_MODULES
    missing = [m for m in wanted if m not in modules.loaded]
    details = [f"loaded: {', '.join(m for m in wanted if m in modules.loaded) or 'none of them'}"]
    if modules.kernel_driver:
        details.append(f"kernel module version {modules.kernel_driver} (/proc/driver/nvidia/version)")
    library = nvml.inventory.driver_version if nvml.inventory else None
    if library and modules.kernel_driver and library != modules.kernel_driver:
        return CheckResult(
            name,
            FAIL,
            f"driver/library version mismatch: kernel module {modules.kernel_driver}, NVML {library}",
            tuple(details),
            "the driver was upgraded without a reboot: reboot the node (or unload and reload the "
            "nvidia modules with no GPU process running)",
        )
    if missing:
        if talos:
            fix = (
                "load them in the Talos machine config: machine.kernel.modules: "
                + ", ".join(f"{{name: {m}}}" for m in TALOS_MODULES)
                + " (needs the NVIDIA kernel modules extension; see talos)"
            )
        else:
            fix = "load them: modprobe " + " && modprobe ".join(missing) + " (or nvidia-modprobe -u -c=0)"
        return CheckResult(name, FAIL, f"not loaded: {', '.join(missing)}", tuple(details), fix)
    return CheckResult(name, PASS, f"{', '.join(wanted)} loaded", tuple(details))


# --- device nodes


@dataclass(frozen=True, slots=True)
class DeviceNodeFacts:
    # The --dev-root (or driver root) the nodes were looked for under.
    root: str
    # Host path -> HostFs.file_kind of it.
    kinds: Mapping[str, str] = field(default_factory=dict)


CONTROL_DEVICE = "/dev/nvidiactl"
UVM_DEVICE = "/dev/nvidia-uvm"
CAPS_DIR = "/dev/nvidia-caps"


def wanted_device_nodes(inventory: Inventory | None) -> tuple[str, ...]:
    """The nodes a container needs: the control and UVM nodes, one per GPU, and the MIG
    capability directory when any GPU has MIG on."""
    nodes = [CONTROL_DEVICE, UVM_DEVICE]
    if inventory is not None:
        nodes += [gpu.device_node for gpu in inventory.gpus]
        if any(gpu.mig_enabled for gpu in inventory.gpus):
            nodes.append(CAPS_DIR)
    return tuple(nodes)


def read_device_nodes(host: HostFs, config: Config, wanted: Collection[str]) -> DeviceNodeFacts:
    root = config.device_root
    kinds = {node: host.file_kind(_under(root, node)) for node in wanted}
    return DeviceNodeFacts(root, kinds)


def _under(root: str, node: str) -> str:
    return node if root in ("", "/") else f"{root.rstrip('/')}{node}"


def check_device_nodes(facts: DeviceNodeFacts, nvml: NvmlFacts) -> CheckResult:
    name = "device-nodes"
    if nvml.backend == "fake":
        return CheckResult(name, SKIP, "simulated GPUs (--fake-gpus) have no device nodes")
    expected_kind = {CAPS_DIR: "directory"}
    details, missing, wrong = [], [], []
    for node, kind in facts.kinds.items():
        want = expected_kind.get(node, "char-device")
        where = _under(facts.root, node)
        details.append(f"{where}: {kind.replace('-', ' ')}")
        if kind == "missing":
            missing.append(where)
        elif kind != want:
            wrong.append(f"{where} is a {kind.replace('-', ' ')}, expected a {want.replace('-', ' ')}")
    root_note = "" if facts.root in ("", "/") else f" (--dev-root {facts.root})"
    if wrong:
        return CheckResult(
            name,
            FAIL,
            "; ".join(wrong),
            tuple(details),
            "remove what is there and let the driver recreate it (nvidia-modprobe, or reboot)",
        )
    if missing:
        only_uvm = missing == [_under(facts.root, UVM_DEVICE)]
        return CheckResult(
            name,
            WARN if only_uvm else FAIL,
            f"missing{root_note}: {', '.join(missing)}",
            tuple(details),
            "create them: nvidia-modprobe -u -c=0 (or run nvidia-smi once as root); with a driver "
            "container or a non-/ driver root, point --dev-root/NVIDIA_DEV_ROOT at its root"
            + ("" if only_uvm else "; check that the nvidia module is loaded (see kernel-modules)"),
        )
    if nvml.inventory is None:
        return CheckResult(
            name,
            WARN,
            f"control nodes present{root_note}, but the GPUs' own nodes cannot be checked without NVML",
            tuple(details),
        )
    return CheckResult(name, PASS, f"all {len(facts.kinds)} device nodes present{root_note}", tuple(details))
