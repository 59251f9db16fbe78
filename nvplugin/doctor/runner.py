"""Gather the node's facts (the only place that reads anything) and evaluate every check."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import anyio

from nvplugin.doctor.cluster import check_node, check_runtime_class, expected, read_cluster
from nvplugin.doctor.gpus import (
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
from nvplugin.doctor.result import CheckResult
from nvplugin.doctor.runtime import (
    DEFAULT_CDI_DIRS,
    RuntimeFacts,
    cdi_device_names,
    check_cdi,
    check_container_runtime,
    read_cdi,
    read_containerd,
    read_crio,
)
from nvplugin.doctor.talos import check_talos, read_talos

CHECK_NAMES = (
    "config",
    "nvml",
    "kernel-modules",
    "device-nodes",
    "talos",
    "container-runtime",
    "cdi-spec",
    "kubelet-socket",
    "plugin-registration",
    "resources",
    "node",
    "runtime-class",
)


@dataclass(frozen=True, slots=True)
class DoctorOptions:
    # Config fields -> flag values as `nvplugin run` takes them (None: not given).
    flags: Mapping[str, object]
    env: Mapping[str, str]
    # Where the host's / is (a pod mounting it at /host: "/host").
    host_root: str = "/"
    # Seconds for each socket, HTTP and API probe.
    timeout: float = 3.0


def _engines(host: HostFs) -> list[RuntimeFacts]:
    return [e for e in (read_containerd(host), read_crio(host)) if e is not None]


async def run_checks(options: DoctorOptions) -> list[CheckResult]:
    """Every check, in CHECK_NAMES order. Raises LayoutError for a bad --fake-gpus (a usage error)."""
    host = HostFs(options.host_root)
    timeout = options.timeout
    setup = await anyio.to_thread.run_sync(read_config, options.flags, options.env)
    config = setup.config
    nvml = await anyio.to_thread.run_sync(read_nvml, config)
    inventory = nvml.inventory
    talos = await anyio.to_thread.run_sync(read_talos, host)
    modules = await anyio.to_thread.run_sync(read_modules, host)
    devices = await anyio.to_thread.run_sync(read_device_nodes, host, config, wanted_device_nodes(inventory))
    engines = await anyio.to_thread.run_sync(_engines, host)
    cdi_dirs = tuple(dict.fromkeys(d for e in engines for d in e.cdi_spec_dirs)) or DEFAULT_CDI_DIRS
    cdi = await anyio.to_thread.run_sync(read_cdi, host, cdi_dirs)
    kubelet_dir = await anyio.to_thread.run_sync(read_kubelet_dir, host, config, timeout)
    registration = await read_registration(host, config, timeout)
    cluster = await read_cluster(config, timeout)

    plan = make_plan(inventory, config)
    wanted = cdi_device_names(plan.plan.resources, config.device_id_strategy) if plan.plan else None
    results = [
        check_config(setup),
        check_nvml(nvml),
        check_kernel_modules(modules, nvml, talos.is_talos),
        check_device_nodes(devices, nvml),
        check_talos(talos),
        check_container_runtime(engines, talos.is_talos),
        check_cdi(cdi, config, wanted, engines),
        check_kubelet_dir(kubelet_dir),
        check_registration(registration, config.node_name),
        check_resources(plan, inventory, config),
        check_node(cluster, expected(inventory, plan.plan, config), config),
        check_runtime_class(cluster, engines, talos.is_talos),
    ]
    assert tuple(r.name for r in results) == CHECK_NAMES
    return results
