"""`nvplugin doctor`: every check against fake host trees, real sockets and the test API server.

A fake host is a directory laid out like a node's / (containerd configs, /etc/os-release,
/proc/modules, CDI specs, the kubelet's directory); the doctor reads it through --host-root.
GPUs come from the fake NVML backend; the kubelet is the KubeletSimulator; the plugin is a real
PluginServer; the API server is nvplugin.testing.apiserver.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from nvplugin.cli import main
from nvplugin.core.address import ListenAddress
from nvplugin.core.config import Config
from nvplugin.core.labels import product_name
from nvplugin.core.resources import plan_resources
from nvplugin.doctor import CHECK_NAMES, DoctorOptions, exit_code, run_checks
from nvplugin.doctor.cluster import ClusterFacts, Expected, check_node, check_runtime_class, expected
from nvplugin.doctor.gpus import (
    NO_NVML,
    ModuleFacts,
    NvmlFacts,
    check_device_nodes,
    check_kernel_modules,
    check_nvml,
    read_device_nodes,
    read_modules,
    read_nvml,
    wanted_device_nodes,
)
from nvplugin.doctor.hostfs import HostFs
from nvplugin.doctor.kubelet import check_kubelet_dir, check_registration, read_kubelet_dir, read_registration
from nvplugin.doctor.plan import check_config, check_resources, make_plan, read_config
from nvplugin.doctor.result import EXIT_FAILED, EXIT_OK, EXIT_WARNINGS, FAIL, PASS, SKIP, WARN, CheckResult
from nvplugin.doctor.runtime import (
    cdi_device_names,
    check_cdi,
    check_container_runtime,
    read_cdi,
    read_containerd,
    read_crio,
)
from nvplugin.doctor.talos import check_talos, read_talos
from nvplugin.metrics_server import MetricsServer
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.fake import FakeNvml, load_layout
from nvplugin.observability import Metrics
from nvplugin.plugin.registration import register_once
from nvplugin.plugin.server import PluginServer
from nvplugin.simulate.kubelet import KubeletSimulator
from nvplugin.state import NodeState
from nvplugin.testing.apiserver import FakeApiServer

pytestmark = pytest.mark.anyio

PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
KUBELET_SOCKET = f"{PLUGIN_DIR}/kubelet.sock"


@pytest.fixture
def host() -> Iterator[Path]:
    # Short: the kubelet's and the plugins' unix sockets live inside it (108-byte limit).
    root = Path(tempfile.mkdtemp(prefix="nvd-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def write(root: Path, path: str, text: str) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def inventory(spec: str = "2") -> Any:
    nvml = FakeNvml(load_layout(spec))
    nvml.init()
    return discover(nvml)


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


# --------------------------------------------------------------------------- host root


def test_host_paths_follow_symlinks_inside_the_root(host: Path) -> None:
    (host / "run" / "cdi").mkdir(parents=True)
    (host / "var").mkdir()
    (host / "var" / "run").symlink_to("/run")  # absolute, as on most distributions
    (host / "etc").mkdir()
    (host / "etc" / "up").symlink_to("../../../../..")  # cannot climb out of the root
    fs = HostFs(str(host))
    assert fs.path("/var/run/cdi") == host / "run" / "cdi"
    assert fs.path("/etc/up/run") == host / "run"
    assert fs.file_kind("/var/run/cdi") == "directory"
    assert HostFs("/").path("/var/run/cdi") == Path("/var/run/cdi")


# --------------------------------------------------------------------------- NVML


def test_fake_gpus_are_found_and_described() -> None:
    facts = read_nvml(Config(fake_gpus="2"))
    result = check_nvml(facts)
    assert result.status == PASS
    assert result.summary.startswith("2 simulated (--fake-gpus) GPU(s), driver ")
    assert sum(d.startswith("GPU ") for d in result.details) == 2


def test_no_nvml_on_this_machine_is_said_plainly() -> None:
    # This development machine has no NVIDIA driver: the real backend cannot load libnvidia-ml.
    facts = read_nvml(Config())
    if facts.inventory is not None:
        pytest.skip("this machine has an NVIDIA driver")
    result = check_nvml(facts)
    assert result.status == FAIL
    assert result.summary == NO_NVML
    assert "libnvidia-ml.so.1" in result.details[0]
    assert result.fix is not None and "--nvidia-driver-root" in result.fix


def test_a_library_fault_of_the_fake_backend_reads_as_no_nvml(host: Path) -> None:
    layout = write(host, "layout.yaml", "faults: {library: missing}\ngpus: [{}]\n")
    facts = read_nvml(Config(fake_gpus=str(layout)))
    assert facts.error_kind == "library"
    assert check_nvml(facts).summary == NO_NVML


def test_a_gpu_that_cannot_be_read_fails(host: Path) -> None:
    layout = write(host, "layout.yaml", "count: 2\nfaults: {devices: {1: {device_uuid: unknown}}}\n")
    result = check_nvml(read_nvml(Config(fake_gpus=str(layout))))
    assert result.status == FAIL
    assert result.summary.endswith("; 1 GPU(s) could not be read")
    assert any(d.startswith("problem: GPU 1 left out") for d in result.details)


def test_nvml_without_gpus_warns() -> None:
    result = check_nvml(read_nvml(Config(fake_gpus="0")))
    assert result.status == WARN
    assert "no GPU" in result.summary


# --------------------------------------------------------------------------- kernel modules


def modules_text(*names: str) -> str:
    return "".join(f"{n} 1 0 - Live 0x0000000000000000\n" for n in names)


def test_kernel_modules_loaded_and_version_matching(host: Path) -> None:
    write(host, "/proc/modules", modules_text("nvidia_uvm", "nvidia", "ext4"))
    write(
        host,
        "/proc/driver/nvidia/version",
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.124.06  Release Build\n",
    )
    facts = read_modules(HostFs(str(host)))
    assert facts.kernel_driver == "570.124.06"
    gpus = inventory("2")
    assert gpus.driver_version != "570.124.06"
    matching = NvmlFacts("real", inventory=replace(gpus, driver_version="570.124.06"))
    assert check_kernel_modules(facts, matching, talos=False).status == PASS
    mismatch = NvmlFacts("real", inventory=gpus)
    result = check_kernel_modules(facts, mismatch, talos=False)
    assert result.status == FAIL and "version mismatch" in result.summary


def test_talos_needs_nvidia_modeset_too(host: Path) -> None:
    write(host, "/proc/modules", modules_text("nvidia", "nvidia_uvm"))
    facts = read_modules(HostFs(str(host)))
    nvml = NvmlFacts("real", error_kind="library", error="x")
    assert check_kernel_modules(facts, nvml, talos=False).status == PASS
    result = check_kernel_modules(facts, nvml, talos=True)
    assert result.status == FAIL
    assert result.summary == "not loaded: nvidia_modeset"
    assert result.fix is not None and "machine.kernel.modules" in result.fix


def test_missing_modules_say_modprobe() -> None:
    result = check_kernel_modules(
        ModuleFacts(frozenset({"ext4"})), NvmlFacts("real", error_kind="library"), False
    )
    assert result.status == FAIL
    assert result.fix is not None and "modprobe nvidia && modprobe nvidia_uvm" in result.fix


# --------------------------------------------------------------------------- device nodes


def make_char_device(root: Path, path: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(195, 0))
    except PermissionError:
        pytest.skip("creating character devices needs CAP_MKNOD")


def test_device_nodes_present_missing_and_wrong(host: Path) -> None:
    gpus = inventory("2")
    nvml = NvmlFacts("real", inventory=gpus)
    for node in ("/dev/nvidiactl", "/dev/nvidia-uvm", *(g.device_node for g in gpus.gpus)):
        make_char_device(host, node)
    fs = HostFs(str(host))
    wanted = wanted_device_nodes(gpus)
    assert check_device_nodes(read_device_nodes(fs, Config(), wanted), nvml).status == PASS

    (host / "dev" / "nvidia-uvm").unlink()
    result = check_device_nodes(read_device_nodes(fs, Config(), wanted), nvml)
    assert result.status == WARN and result.summary == "missing: /dev/nvidia-uvm"

    (host / "dev" / gpus.gpus[1].device_node.rpartition("/")[2]).unlink()
    write(host, gpus.gpus[1].device_node, "not a device")
    result = check_device_nodes(read_device_nodes(fs, Config(), wanted), nvml)
    assert result.status == FAIL
    assert f"{gpus.gpus[1].device_node} is a file, expected a char device" in result.summary


def test_device_nodes_under_a_dev_root_and_mig_caps(host: Path) -> None:
    gpus = inventory("mig-and-full")
    wanted = wanted_device_nodes(gpus)
    assert "/dev/nvidia-caps" in wanted
    for node in wanted:
        if node != "/dev/nvidia-caps":
            make_char_device(host, f"/run/nvidia/driver{node}")
    config = Config(dev_root="/run/nvidia/driver")
    result = check_device_nodes(
        read_device_nodes(HostFs(str(host)), config, wanted), NvmlFacts("real", inventory=gpus)
    )
    assert result.status == FAIL
    assert result.summary == "missing (--dev-root /run/nvidia/driver): /run/nvidia/driver/dev/nvidia-caps"


def test_fake_gpus_skip_the_device_nodes() -> None:
    facts = read_nvml(Config(fake_gpus="1"))
    result = check_device_nodes(read_device_nodes(HostFs("/"), Config(), ()), facts)
    assert result.status == SKIP


# --------------------------------------------------------------------------- Talos


EXTENSIONS = """\
layers:
  - image: 000.ghcr.io-siderolabs-nonfree-kmod-nvidia-production.sqsh
    metadata: {name: nonfree-kmod-nvidia-production, version: 570.124.06-v1.10.0}
  - image: 001.ghcr.io-siderolabs-nvidia-container-toolkit-production.sqsh
    metadata: {name: nvidia-container-toolkit-production, version: 570.124.06-v1.17.5}
  - image: schematic
    metadata: {name: schematic, version: 376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba}
"""


def test_talos_with_both_extensions_passes(host: Path) -> None:
    write(host, "/etc/os-release", 'NAME="Talos"\nID=talos\nVERSION_ID=v1.10.0\n')
    write(host, "/etc/extensions.yaml", EXTENSIONS)
    result = check_talos(read_talos(HostFs(str(host))))
    assert result.status == PASS
    assert "nonfree-kmod-nvidia-production" in result.summary


def test_talos_without_the_toolkit_fails(host: Path) -> None:
    write(host, "/proc/version", "Linux version 6.12.18-talos (@buildkitsandbox) #1 SMP\n")
    write(host, "/etc/extensions.yaml", EXTENSIONS.split("  - image: 001")[0])
    facts = read_talos(HostFs(str(host)))
    assert facts.is_talos  # from /proc/version, without an os-release
    result = check_talos(facts)
    assert result.status == FAIL
    assert result.summary == "Talos node without the NVIDIA container toolkit extension"
    assert result.fix is not None and "schematic" in result.fix


def test_not_talos_is_skipped(host: Path) -> None:
    write(host, "/etc/os-release", 'ID=debian\nVERSION_ID="12"\n')
    write(host, "/proc/version", "Linux version 6.1.0-18-amd64\n")
    assert check_talos(read_talos(HostFs(str(host)))).status == SKIP


# --------------------------------------------------------------------------- container runtime


CONTAINERD_V2_NVIDIA_DEFAULT = """\
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "nvidia"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
      BinaryName = "/usr/bin/nvidia-container-runtime"
"""

CONTAINERD_V3_NVIDIA_HANDLER = """\
version = 3
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.nvidia]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.nvidia.options]
    BinaryName = "/usr/local/bin/nvidia-container-runtime"
"""


def containerd(host: Path) -> Any:
    return read_containerd(HostFs(str(host)))


def test_containerd_with_the_nvidia_runtime_as_default(host: Path) -> None:
    write(host, "/etc/containerd/config.toml", CONTAINERD_V2_NVIDIA_DEFAULT)
    facts = containerd(host)
    assert facts.runtimes == {"runc": "", "nvidia": "/usr/bin/nvidia-container-runtime"}
    assert facts.nvidia_is_default and not facts.cdi_enabled  # 1.7: CDI off unless enabled
    result = check_container_runtime([facts], talos=False)
    assert result.status == PASS
    assert result.summary == "containerd: the nvidia runtime is the default"


def test_containerd_2_with_a_handler_only_needs_the_runtime_class(host: Path) -> None:
    write(host, "/etc/cri/containerd.toml", 'version = 3\nimports = ["/etc/cri/conf.d/cri.toml"]\n')
    write(host, "/etc/cri/conf.d/cri.toml", CONTAINERD_V3_NVIDIA_HANDLER)
    facts = containerd(host)
    assert facts.files == ("/etc/cri/containerd.toml", "/etc/cri/conf.d/cri.toml")
    assert facts.nvidia_runtimes == ("nvidia",) and not facts.nvidia_is_default
    assert facts.cdi_enabled  # containerd 2.x: on by default
    result = check_container_runtime([facts], talos=True)
    assert result.status == PASS and "runtimeClassName" in result.summary


def test_containerd_without_nvidia_fails_with_the_toolkit_command(host: Path) -> None:
    write(host, "/etc/containerd/config.toml", 'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n')
    result = check_container_runtime([containerd(host)], talos=False)
    assert result.status == FAIL
    assert (
        result.fix is not None
        and "nvidia-ctk runtime configure --runtime=containerd --set-as-default" in result.fix
    )


def test_containerd_1x_import_replaces_the_whole_cri_table(host: Path) -> None:
    # A registry mirror drop-in of containerd 1.x replaces plugins."io.containerd.grpc.v1.cri",
    # nvidia runtime and all; containerd 2.x merges it key by key.
    mirror = '[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n'
    main_text = 'imports = ["/etc/containerd/conf.d/*.toml"]\n' + CONTAINERD_V2_NVIDIA_DEFAULT
    write(host, "/etc/containerd/config.toml", main_text)
    write(host, "/etc/containerd/conf.d/10-mirror.toml", "version = 2\n" + mirror)
    assert check_container_runtime([containerd(host)], talos=False).status == FAIL

    write(
        host,
        "/etc/containerd/config.toml",
        main_text.replace("version = 2", "version = 3").replace(
            "io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"
        ),
    )
    write(
        host,
        "/etc/containerd/conf.d/10-mirror.toml",
        "version = 3\n" + mirror.replace("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"),
    )
    assert check_container_runtime([containerd(host)], talos=False).status == PASS


def test_a_drop_in_that_is_not_imported_is_named(host: Path) -> None:
    write(host, "/etc/containerd/config.toml", 'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n')
    write(host, "/etc/containerd/conf.d/99-nvidia.toml", CONTAINERD_V2_NVIDIA_DEFAULT)
    facts = containerd(host)
    assert facts.ignored == ("/etc/containerd/conf.d/99-nvidia.toml",)
    result = check_container_runtime([facts], talos=False)
    assert result.status == FAIL
    assert (
        "containerd: /etc/containerd/conf.d/99-nvidia.toml is not imported: containerd ignores it"
        in result.details
    )


def test_containerd_2_2_imports_conf_d_without_a_main_file(host: Path) -> None:
    write(
        host,
        "/etc/containerd/conf.d/99-nvidia.toml",
        CONTAINERD_V3_NVIDIA_HANDLER.replace(
            "version = 3\n",
            'version = 3\n[plugins."io.containerd.cri.v1.runtime".containerd]\n  default_runtime_name = "nvidia"\n',
        ),
    )
    facts = containerd(host)
    assert facts.files == ("/etc/containerd/conf.d/99-nvidia.toml",) and facts.nvidia_is_default


def test_invalid_toml_is_reported_with_the_file(host: Path) -> None:
    write(
        host,
        "/etc/containerd/config.toml",
        'imports = ["/etc/containerd/x.toml"]\n' + CONTAINERD_V2_NVIDIA_DEFAULT,
    )
    write(host, "/etc/containerd/x.toml", "[plugins\n")
    result = check_container_runtime([containerd(host)], talos=False)
    assert result.status == WARN
    assert any(d.startswith("containerd: /etc/containerd/x.toml: not valid TOML") for d in result.details)


def test_malformed_containerd_values_are_named_not_fatal(host: Path) -> None:
    write(
        host,
        "/etc/containerd/config.toml",
        'version = "two"\n[plugins.cri.containerd]\nruntimes = "nvidia"\n',
    )
    facts = containerd(host)
    assert facts.version == 1 and facts.runtimes == {}
    result = check_container_runtime([facts], talos=False)
    assert result.status == FAIL
    assert (
        "containerd: /etc/containerd/config.toml: version = 'two' is not a containerd config version (1, 2 or 3)"
        in result.details
    )


def test_crio_drop_in_with_the_nvidia_runtime(host: Path) -> None:
    write(host, "/etc/crio/crio.conf", '[crio.runtime]\ndefault_runtime = "crun"\n')
    write(
        host,
        "/etc/crio/crio.conf.d/99-nvidia.conf",
        '[crio.runtime]\ndefault_runtime = "nvidia"\n[crio.runtime.runtimes.nvidia]\n'
        'runtime_path = "/usr/bin/nvidia-container-runtime"\nruntime_type = "oci"\n',
    )
    facts = read_crio(HostFs(str(host)))
    assert facts is not None and facts.nvidia_is_default
    assert check_container_runtime([facts], talos=False).status == PASS


def test_no_runtime_config_at_all_warns(host: Path) -> None:
    fs = HostFs(str(host))
    assert read_containerd(fs) is None and read_crio(fs) is None
    result = check_container_runtime([], talos=False)
    assert result.status == WARN and result.fix is not None and "--host-root" in result.fix


# --------------------------------------------------------------------------- CDI


def cdi_spec(kind: str, names: list[str]) -> str:
    return json.dumps(
        {"cdiVersion": "0.5.0", "kind": kind, "devices": [{"name": n, "containerEdits": {}} for n in names]}
    )


def cdi_setup(
    host: Path, strategy: str = "cdi-cri", id_strategy: str = "uuid"
) -> tuple[Config, tuple[str, ...], Any]:
    config = Config(device_list_strategy=(strategy,), device_id_strategy=id_strategy)
    gpus = inventory("2")
    wanted = cdi_device_names(plan_resources(gpus, config).resources, id_strategy)
    write(host, "/etc/containerd/config.toml", CONTAINERD_V3_NVIDIA_HANDLER)
    return config, wanted, containerd(host)


def test_cdi_spec_covering_every_gpu_passes(host: Path) -> None:
    config, wanted, engine = cdi_setup(host)
    (host / "run" / "cdi").mkdir(parents=True)
    (host / "var").mkdir()
    (host / "var" / "run").symlink_to("/run")
    write(
        host,
        "/run/cdi/k8s.device-plugin.nvidia.com-gpu.json",
        cdi_spec("k8s.device-plugin.nvidia.com/gpu", [*wanted, "all"]),
    )
    facts = read_cdi(HostFs(str(host)), engine.cdi_spec_dirs)
    assert [s.path for s in facts.specs] == ["/var/run/cdi/k8s.device-plugin.nvidia.com-gpu.json"]
    result = check_cdi(facts, config, wanted, [engine])
    assert result.status == PASS


def test_cdi_spec_missing_fails_with_nvidia_ctk(host: Path) -> None:
    config, wanted, engine = cdi_setup(host, id_strategy="index")
    assert wanted == ("0", "1")
    result = check_cdi(read_cdi(HostFs(str(host)), engine.cdi_spec_dirs), config, wanted, [engine])
    assert result.status == FAIL
    assert result.fix is not None
    assert (
        "nvidia-ctk cdi generate --vendor=k8s.device-plugin.nvidia.com --class=gpu --device-name-strategy=index"
        in result.fix
    )


def test_only_nvidia_ctk_default_kind_is_not_enough(host: Path) -> None:
    config, wanted, engine = cdi_setup(host)
    write(
        host,
        "/etc/cdi/nvidia.yaml",
        f"cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n  - name: '0'\n  - name: {wanted[0]}\n",
    )
    result = check_cdi(read_cdi(HostFs(str(host)), engine.cdi_spec_dirs), config, wanted, [engine])
    assert result.status == FAIL
    assert "found only nvidia.com/gpu" in result.summary


def test_cdi_spec_that_misses_a_gpu_names_it(host: Path) -> None:
    config, wanted, engine = cdi_setup(host)
    write(
        host,
        "/etc/cdi/k8s.device-plugin.nvidia.com-gpu.yaml",
        f"kind: k8s.device-plugin.nvidia.com/gpu\ndevices: [{{name: {wanted[0]}}}]\n",
    )
    result = check_cdi(read_cdi(HostFs(str(host)), engine.cdi_spec_dirs), config, wanted, [engine])
    assert result.status == FAIL
    assert result.summary.endswith(f"lacks 1 of the 2 device(s) the agent hands out: {wanted[1]}")


def test_cdi_needs_containerd_1_7_to_enable_it(host: Path) -> None:
    config = Config(device_list_strategy=("envvar", "cdi-annotations"))
    write(host, "/etc/containerd/config.toml", CONTAINERD_V2_NVIDIA_DEFAULT)
    engine = containerd(host)
    result = check_cdi(read_cdi(HostFs(str(host)), engine.cdi_spec_dirs), config, None, [engine])
    assert result.status == FAIL
    assert (
        result.fix is not None and 'enable_cdi = true in [plugins."io.containerd.grpc.v1.cri"]' in result.fix
    )
    write(
        host,
        "/etc/containerd/config.toml",
        CONTAINERD_V2_NVIDIA_DEFAULT.replace(
            '[plugins."io.containerd.grpc.v1.cri".containerd]\n',
            '[plugins."io.containerd.grpc.v1.cri"]\n  enable_cdi = true\n  cdi_spec_dirs = ["/opt/cdi"]\n[plugins."io.containerd.grpc.v1.cri".containerd]\n',
        ),
    )
    engine = containerd(host)
    assert engine.cdi_enabled and engine.cdi_spec_dirs == ("/opt/cdi",)
    write(host, "/opt/cdi/ours.json", cdi_spec("k8s.device-plugin.nvidia.com/gpu", ["x"]))
    result = check_cdi(read_cdi(HostFs(str(host)), engine.cdi_spec_dirs), config, None, [engine])
    assert result.status == WARN and "cannot be compared" in result.summary


def test_cdi_is_skipped_for_envvar() -> None:
    assert check_cdi(read_cdi(HostFs("/"), ()), Config(), (), []).status == SKIP


# --------------------------------------------------------------------------- config, MIG and sharing


def test_config_file_errors_fail_and_the_checks_go_on(host: Path) -> None:
    bad = write(host, "config.yaml", "version: v1\nflags:\n  migStrategy: sideways\n")
    facts = read_config({"config_file": str(bad), "kubelet_socket": "/k/kubelet.sock"}, {})
    result = check_config(facts)
    assert result.status == FAIL
    assert "migStrategy" in result.details[0] or "mig_strategy" in result.details[0]
    assert facts.config.kubelet_socket == "/k/kubelet.sock"  # the flags still apply


def test_config_from_environment_like_nvplugin_run(host: Path) -> None:
    file = write(host, "config.yaml", "version: v1\nflags:\n  migStrategy: single\n")
    facts = read_config({}, {"CONFIG_FILE": str(file), "MIG_STRATEGY": "mixed"})
    assert facts.config.mig_strategy == "mixed"  # env over file
    assert check_config(facts).status == PASS


def test_mig_single_on_mixed_gpus_fails_and_mixed_passes() -> None:
    gpus = inventory("mig-and-full")
    single = Config(mig_strategy="single")
    result = check_resources(make_plan(gpus, single), gpus, single)
    assert result.status == FAIL
    assert "same MIG mode" in result.details[0]
    mixed = Config(mig_strategy="mixed")
    result = check_resources(make_plan(gpus, mixed), gpus, mixed)
    assert result.status == PASS
    assert result.summary == "advertises nvidia.com/gpu x2, nvidia.com/mig-1g.10gb x14"


def test_mig_enabled_gpus_under_strategy_none_warn() -> None:
    gpus = inventory("mig-and-full")
    result = check_resources(make_plan(gpus, Config()), gpus, Config())
    assert result.status == WARN
    assert sum("has MIG enabled but mig-strategy is none" in d for d in result.details) == 2


def test_sharing_of_a_resource_the_node_lacks_warns(host: Path) -> None:
    file = write(
        host,
        "config.yaml",
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/mig-1g.10gb, replicas: 2}\n",
    )
    config = read_config({"config_file": str(file)}, {}).config
    gpus = inventory("2")
    result = check_resources(make_plan(gpus, config), gpus, config)
    assert result.status == WARN
    assert any("nvidia.com/mig-1g.10gb has no devices on this node" in d for d in result.details)


# --------------------------------------------------------------------------- kubelet directory


def kubelet_facts(host: Path) -> Any:
    return read_kubelet_dir(HostFs(str(host)), Config(kubelet_socket=KUBELET_SOCKET), timeout=2.0)


def test_kubelet_dir_missing_or_not_a_directory(host: Path) -> None:
    result = check_kubelet_dir(kubelet_facts(host))
    assert result.status == FAIL and result.summary == f"{PLUGIN_DIR} does not exist"
    write(host, PLUGIN_DIR, "a file")
    result = check_kubelet_dir(kubelet_facts(host))
    assert result.status == FAIL and result.summary == f"{PLUGIN_DIR} is a file, not a directory"


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root may write to any directory: the check cannot fail as root"
)
def test_kubelet_dir_not_writable(host: Path) -> None:
    directory = host / PLUGIN_DIR.lstrip("/")
    directory.mkdir(parents=True)
    directory.chmod(0o500)
    try:
        result = check_kubelet_dir(kubelet_facts(host))
    finally:
        directory.chmod(0o700)
    assert result.status == FAIL and "not writable" in result.summary


def test_kubelet_socket_missing_or_stale(host: Path) -> None:
    directory = host / PLUGIN_DIR.lstrip("/")
    directory.mkdir(parents=True)
    result = check_kubelet_dir(kubelet_facts(host))
    assert result.status == FAIL and "kubelet.sock is missing" in result.summary
    # A socket file nobody listens on: what a killed kubelet leaves behind.
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(directory / "kubelet.sock"))
    result = check_kubelet_dir(kubelet_facts(host))
    assert result.status == FAIL and "does not accept connections" in result.summary


async def test_kubelet_socket_of_a_running_kubelet(host: Path) -> None:
    async with KubeletSimulator(host / PLUGIN_DIR.lstrip("/")):
        facts = await anyio.to_thread.run_sync(kubelet_facts, host)
    result = check_kubelet_dir(facts)
    assert result.status == PASS, result


# --------------------------------------------------------------------------- our registration


@pytest.fixture
async def served(host: Path) -> AsyncIterator[tuple[KubeletSimulator, PluginServer]]:
    """A kubelet simulator and a real plugin server for 2 fake GPUs, registered with it."""
    plugin_dir = host / PLUGIN_DIR.lstrip("/")
    config = Config(kubelet_socket=str(plugin_dir / "kubelet.sock"), metrics_address=None)
    gpus = inventory("2")
    resources = plan_resources(gpus, config).resources
    server = PluginServer(resources[0], NodeState(gpus, resources), config)
    async with KubeletSimulator(plugin_dir, dial_timeout=2.0) as kubelet:
        await server.start()
        try:
            await register_once(kubelet.socket_path, server.socket_name, server.resource_name)
            await kubelet.wait_registered("nvidia.com/gpu")
            yield kubelet, server
        finally:
            await server.stop()


async def test_a_registered_plugin_answers(host: Path, served: tuple[KubeletSimulator, PluginServer]) -> None:
    _, server = served
    facts = await read_registration(
        HostFs(str(host)), Config(kubelet_socket=KUBELET_SOCKET, metrics_address=None), 2.0
    )
    result = check_registration(facts, "node-1")
    assert result.status == PASS, result
    assert f"{server.socket_name}: serving 2 device(s), 2 healthy" in result.details


async def test_stale_and_nvidia_sockets_warn(
    host: Path, served: tuple[KubeletSimulator, PluginServer]
) -> None:
    plugin_dir = host / PLUGIN_DIR.lstrip("/")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(plugin_dir / "nvplugin-gpu-1-0-dead.sock"))
    config = Config(kubelet_socket=KUBELET_SOCKET, metrics_address=None)
    result = check_registration(await read_registration(HostFs(str(host)), config, 2.0), None)
    assert result.status == WARN and "1 stale one(s) do not" in result.summary
    with socket.socket(socket.AF_UNIX) as nvidia:
        nvidia.bind(str(plugin_dir / "nvidia-gpu.sock"))
    result = check_registration(await read_registration(HostFs(str(host)), config, 2.0), None)
    assert result.status == WARN and "NVIDIA's device plugin runs here too" in result.summary


async def test_no_plugin_and_an_unready_agent_fail(host: Path) -> None:
    plugin_dir = host / PLUGIN_DIR.lstrip("/")
    async with KubeletSimulator(plugin_dir):
        config = Config(kubelet_socket=KUBELET_SOCKET, metrics_address=None)
        result = check_registration(await read_registration(HostFs(str(host)), config, 2.0), "node-1")
        assert result.status == FAIL
        assert result.summary == "no running nvplugin serves the kubelet on this node"
        assert result.fix is not None and "--field-selector spec.nodeName=node-1" in result.fix

        server = MetricsServer(
            ListenAddress("127.0.0.1", 0),
            Metrics(),
            readiness=lambda: (False, "nvidia.com/gpu not registered"),
        )
        async with anyio.create_task_group() as tg:
            port = await tg.start(server.serve)
            config = config.with_changes(metrics_address=ListenAddress("127.0.0.1", port))
            facts = await read_registration(HostFs(str(host)), config, 2.0)
            tg.cancel_scope.cancel()
    result = check_registration(facts, None)
    assert result.status == FAIL
    assert result.summary == "the agent is running but not ready: not ok: nvidia.com/gpu not registered"


async def test_an_agent_without_gpus_is_ready_without_a_socket(host: Path) -> None:
    # The all-nodes deployment on a GPU-less node: nothing registered, /readyz says why that is fine.
    server = MetricsServer(
        ListenAddress("127.0.0.1", 0),
        Metrics(),
        readiness=lambda: (True, "no GPUs on this node: nothing to register"),
    )
    async with KubeletSimulator(host / PLUGIN_DIR.lstrip("/")), anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        config = Config(kubelet_socket=KUBELET_SOCKET, metrics_address=ListenAddress("127.0.0.1", port))
        facts = await read_registration(HostFs(str(host)), config, 2.0)
        tg.cancel_scope.cancel()
    result = check_registration(facts, None)
    assert result.status == PASS
    assert result.summary == "the agent is ready: ok: no GPUs on this node: nothing to register"


# --------------------------------------------------------------------------- the API server's view


GPUS = "2"


def node_expectation() -> tuple[Any, Expected]:
    gpus = inventory(GPUS)
    config = Config()
    return gpus, expected(gpus, make_plan(gpus, config).plan, config)


def gpu_labels(gpus: Any) -> dict[str, str]:
    return {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product_name((gpus.gpus[0].name,), False),
    }


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[FakeApiServer, Path]]:
    async with FakeApiServer() as server:
        yield server, server.write_kubeconfig(tmp_path / "kubeconfig")


async def read_cluster_facts(kubeconfig: Path, node: str | None = "gpu-1") -> ClusterFacts:
    from nvplugin.doctor.cluster import read_cluster

    return await read_cluster(Config(kubeconfig=str(kubeconfig), node_name=node), 5.0)


async def test_node_with_matching_capacity_and_labels(api: tuple[FakeApiServer, Path]) -> None:
    server, kubeconfig = api
    gpus, want = node_expectation()
    server.add_node("gpu-1", gpu_labels(gpus))
    server.set_resources("gpu-1", {"cpu": "8", "nvidia.com/gpu": "2"})
    result = check_node(await read_cluster_facts(kubeconfig), want, Config())
    assert result.status == PASS, result
    assert "nvidia.com/gpu: capacity 2, allocatable 2" in result.details


async def test_node_without_capacity_fails_and_unhealthy_warns(api: tuple[FakeApiServer, Path]) -> None:
    server, kubeconfig = api
    gpus, want = node_expectation()
    server.add_node("gpu-1", gpu_labels(gpus))
    result = check_node(await read_cluster_facts(kubeconfig), want, Config())
    assert result.status == FAIL
    assert result.summary == "nvidia.com/gpu: not in the node's capacity (the agent would advertise 2)"
    server.set_resources("gpu-1", {"nvidia.com/gpu": "2"}, {"nvidia.com/gpu": "1"})
    result = check_node(await read_cluster_facts(kubeconfig), want, Config())
    assert result.status == WARN and "1 of 2 device(s) unhealthy" in result.summary


async def test_node_without_labels_and_missing_node(api: tuple[FakeApiServer, Path]) -> None:
    server, kubeconfig = api
    _, want = node_expectation()
    server.add_node("gpu-1")
    server.set_resources("gpu-1", {"nvidia.com/gpu": "2"})
    result = check_node(await read_cluster_facts(kubeconfig), want, Config())
    assert result.status == WARN
    assert "label nvidia.com/gpu.present is 'missing', expected 'true'" in result.summary
    assert result.fix is not None and "NVPLUGIN_LABELS=true" in result.fix
    result = check_node(await read_cluster_facts(kubeconfig, "gpu-2"), want, Config())
    assert result.status == FAIL and 'node "gpu-2" does not exist' in result.summary


async def test_runtime_class_present_missing_and_not_needed(
    api: tuple[FakeApiServer, Path], host: Path
) -> None:
    server, kubeconfig = api
    write(host, "/etc/cri/containerd.toml", CONTAINERD_V3_NVIDIA_HANDLER)
    handler_only = [read_containerd(HostFs(str(host)))]
    facts = await read_cluster_facts(kubeconfig, None)
    result = check_runtime_class(facts, handler_only, talos=True)
    assert result.status == FAIL
    assert result.summary == "RuntimeClass nvidia is missing, and Talos runs NVIDIA containers through it"
    write(host, "/etc/containerd/config.toml", CONTAINERD_V2_NVIDIA_DEFAULT)
    default = [read_containerd(HostFs(str(host)))]
    assert check_runtime_class(facts, default, talos=False).status == SKIP

    server.add_runtime_class("nvidia", "nvidia")
    facts = await read_cluster_facts(kubeconfig, None)
    assert check_runtime_class(facts, handler_only, talos=True).status == PASS
    server.add_runtime_class("nvidia", "nvidia-cdi")
    result = check_runtime_class(await read_cluster_facts(kubeconfig, None), handler_only, talos=True)
    assert result.status == FAIL and "handler 'nvidia-cdi'" in result.summary


async def test_no_api_access_is_a_skip_that_says_how(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    facts = await read_cluster_facts(tmp_path / "none")
    assert not facts.configured
    for result in (check_node(facts, Expected(), Config()), check_runtime_class(facts, [], talos=False)):
        assert result.status == SKIP
        assert result.fix is not None and "--kubeconfig" in result.fix


# --------------------------------------------------------------------------- everything together


async def test_a_healthy_node_passes_every_check(
    host: Path, served: tuple[KubeletSimulator, PluginServer], api: tuple[FakeApiServer, Path]
) -> None:
    server, kubeconfig = api
    gpus = inventory(GPUS)
    server.add_node("gpu-1", gpu_labels(gpus))
    server.set_resources("gpu-1", {"nvidia.com/gpu": GPUS})
    write(host, "/etc/containerd/config.toml", CONTAINERD_V2_NVIDIA_DEFAULT)
    flags = {
        "fake_gpus": GPUS,
        "kubelet_socket": KUBELET_SOCKET,
        "kubeconfig": str(kubeconfig),
        "node_name": "gpu-1",
        "metrics_address": "off",
    }
    results = await run_checks(DoctorOptions(flags, {}, str(host), timeout=5.0))
    assert [r.name for r in results] == list(CHECK_NAMES)
    assert {r.name: r.status for r in results if r.status not in (PASS, SKIP)} == {}
    assert exit_code(results) == EXIT_OK
    statuses = {r.name: r.status for r in by_name(results).values()}
    assert statuses["plugin-registration"] == PASS and statuses["node"] == PASS


def test_exit_codes() -> None:
    passed, warned, failed = (CheckResult("a", s, "x") for s in (PASS, WARN, FAIL))
    skipped = CheckResult("b", SKIP, "y")
    assert exit_code([passed, skipped]) == EXIT_OK
    assert exit_code([passed, warned]) == EXIT_WARNINGS
    assert exit_code([warned, failed]) == EXIT_FAILED
    with pytest.raises(ValueError, match="status 'ok' is not one of"):
        CheckResult("c", "ok", "z")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ended:
        main(argv)
    out, err = capsys.readouterr()
    return int(ended.value.code or 0), out, err


def test_cli_json_on_this_gpu_less_machine(
    host: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(host / "none"))
    for name in ("NVPLUGIN_FAKE_GPUS", "CONFIG_FILE", "NODE_NAME"):
        monkeypatch.delenv(name, raising=False)
    code, out, _ = run_cli(
        ["doctor", "--output", "json", "--host-root", str(host), "--metrics-address", "off"], capsys
    )
    report = json.loads(out)
    assert [c["name"] for c in report] == list(CHECK_NAMES)
    assert all(set(c) == {"name", "status", "summary", "details", "fix"} for c in report)
    checks = {c["name"]: c for c in report}
    if checks["nvml"]["status"] == PASS:
        pytest.skip("this machine has an NVIDIA driver")
    assert code == EXIT_FAILED
    assert checks["nvml"]["summary"] == NO_NVML and checks["nvml"]["fix"]
    # The other checks still ran against the (empty) host tree.
    assert checks["kubelet-socket"]["status"] == FAIL
    assert checks["container-runtime"]["status"] == WARN
    assert checks["node"]["status"] == SKIP


def test_cli_text_with_fake_gpus(
    host: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(host / "none"))
    code, out, _ = run_cli(
        [
            "doctor",
            "--fake-gpus",
            "2",
            "--host-root",
            str(host),
            "--metrics-address",
            "off",
            "--node-name",
            "n1",
        ],
        capsys,
    )
    assert code == EXIT_FAILED  # no kubelet in the empty host tree
    assert out.startswith(f"nvplugin doctor on n1 (host root {host})\n")
    assert "[PASS] nvml: 2 simulated (--fake-gpus) GPU(s)" in out
    assert "[FAIL] kubelet-socket: /var/lib/kubelet/device-plugins does not exist" in out
    assert out.rstrip().splitlines()[-1].startswith("checks: ")


def test_cli_usage_errors(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["doctor", "--host-root", str(host / "nope")], capsys)
    assert code == 2 and "--host-root" in err
    code, _, err = run_cli(
        ["doctor", "--fake-gpus", str(host / "no-layout.yaml"), "--host-root", str(host)], capsys
    )
    assert code == 2 and "no-layout.yaml" in err


# --------------------------------------------------------------------------- on a real GPU


@pytest.mark.nvml
def test_on_a_real_gpu_the_driver_side_passes() -> None:
    """The GPU machine (`pytest -m nvml`): NVML, kernel modules and device nodes as the node has them."""
    nvml = read_nvml(Config())
    if nvml.inventory is None:
        pytest.skip(f"no real NVML here: {nvml.error}")
    host = HostFs("/")
    results = [
        check_nvml(nvml),
        check_kernel_modules(read_modules(host), nvml, talos=False),
        check_device_nodes(read_device_nodes(host, Config(), wanted_device_nodes(nvml.inventory)), nvml),
    ]
    for result in results:
        print(result)
    assert results[0].status == PASS and len(nvml.inventory.gpus) >= 1
    # Modules may be unreadable in a container (warn); a mismatch or a missing node is a failure.
    assert results[1].status in (PASS, WARN)
    assert results[2].status in (PASS, WARN)
