"""The CDI spec builder (core/cdi.py): every CDI name Allocate hands out resolves, in NVIDIA's shape."""

from __future__ import annotations

import stat
from dataclasses import replace

import pytest

from nvplugin.core.allocation import container_allocation
from nvplugin.core.cdi import (
    GPU_SPEC_FILE,
    CdiOptions,
    CdiOptionsError,
    DrmFact,
    LibraryFact,
    NodeFact,
    build_spec,
    soname_link_names,
)
from nvplugin.core.config import Config, ReplicatedResource, Sharing, TimeSlicing
from nvplugin.core.inventory import Gpu, Inventory
from nvplugin.core.resources import MigConfigurationError, Resource, build_resources, plan_resources
from nvplugin.nvml.discovery import discover
from nvplugin.nvml.fake import FakeNvml, load_layout
from nvplugin.nvml.layouts import LAYOUTS
from tests.cdi_helpers import CHAR_DEVICE_RW, LIB_DIR, host_facts, validate_spec

VERSION = "580.159.04"
HOOK = "/usr/bin/nvidia-ctk"
RO = ["ro", "nosuid", "nodev", "rbind", "rprivate"]


def layout_inventory(name: str) -> Inventory:
    nvml = FakeNvml(load_layout(name))
    nvml.init()
    return discover(nvml)


def small_inventory(n: int = 2) -> Inventory:
    gpus = tuple(
        Gpu(
            index=i,
            uuid=f"GPU-{i}",
            minor=i,
            name="NVIDIA H100 80GB HBM3",
            memory_bytes=85520809984,
            compute_capability=(9, 0),
            pci_bus_id=f"00000000:{0x18 + i:02X}:00.0",
        )
        for i in range(n)
    )
    return Inventory(gpus=gpus, driver_version=VERSION, cuda_driver_version=13000)


def shared(resources: tuple[Resource, ...], replicas: int, rename: bool) -> Sharing:
    return Sharing(
        TimeSlicing(
            resources=tuple(
                ReplicatedResource(r.name, replicas, f"{r.name}.shared" if rename else None)
                for r in resources
            )
        )
    )


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_name_allocate_returns_resolves_in_the_spec(layout: str) -> None:
    """For every shipped layout, MIG strategy that fits it, with and without time-slicing
    replicas, both device-ID strategies and both CDI device-list strategies: each CDI name of
    every Allocate response resolves to a device with that device's own nodes."""
    inventory = layout_inventory(layout)
    checked = 0
    for mig_strategy in ("none", "single", "mixed"):
        base = Config(mig_strategy=mig_strategy)
        try:
            plain = plan_resources(inventory, base).resources
        except MigConfigurationError:
            continue
        for sharing in (Sharing(), shared(plain, 2, rename=False), shared(plain, 3, rename=True)):
            resources = build_resources(inventory, base.with_changes(sharing=sharing))
            plan = build_spec(inventory, resources, CdiOptions(), host_facts(inventory))
            if not any(r.devices for r in resources):
                assert plan.spec is None
                continue
            assert plan.spec is not None and plan.warnings == ()
            validate_spec(plan.spec.to_json())
            for ids in ("uuid", "index"):
                for lists in (("cdi-annotations",), ("cdi-cri",), ("cdi-annotations", "cdi-cri")):
                    config = base.with_changes(
                        sharing=sharing, device_id_strategy=ids, device_list_strategy=lists
                    )
                    for resource in resources:
                        requests = [[d] for d in resource.devices] + [list(resource.devices)]
                        for devices in requests:
                            response = container_allocation(devices, config, response_id="r")
                            names = list(response.cdi_devices) + [
                                n for value in response.annotations.values() for n in value.split(",")
                            ]
                            assert len(names) == len({d.uuid for d in devices}) * len(lists)
                            for name in names:
                                entry = plan.spec.resolve(name)
                                assert entry is not None, (
                                    f"{layout} {mig_strategy} {ids}: {name} does not resolve"
                                )
                                wanted = next(d for d in devices if name.endswith("=" + getattr(d, ids)))
                                nodes = {n.path for n in entry.edits.device_nodes}
                                assert set(wanted.device_nodes) <= nodes
                                checked += 1
    assert checked > 0


def test_each_device_is_named_by_uuid_and_by_index_in_name_order() -> None:
    inventory = layout_inventory("mig-and-full")
    resources = build_resources(inventory, Config(mig_strategy="mixed"))
    plan = build_spec(inventory, resources, CdiOptions(), host_facts(inventory))
    assert plan.spec is not None
    names = [d.name for d in plan.spec.devices]
    devices = {d.uuid: d for r in resources for d in r.devices}
    assert sorted(names) == names
    assert set(names) == set(devices) | {d.index for d in devices.values()}
    assert plan.spec.kind == "k8s.device-plugin.nvidia.com/gpu" and plan.spec.file_name == GPU_SPEC_FILE
    # Index names start with a digit and device nodes have hostPath: CDI 0.5.0.
    assert plan.spec.version == "0.5.0"
    mig = next(d for d in devices.values() if d.uuid.startswith("MIG-"))
    by_uuid, by_index = plan.spec.device(mig.uuid), plan.spec.device(mig.index)
    assert by_uuid is not None and by_index is not None and by_uuid.edits == by_index.edits
    assert [n.path for n in by_uuid.edits.device_nodes] == sorted(
        mig.device_nodes, key=lambda p: (p.count("/"), p)
    )


def test_replicas_and_renamed_resources_share_their_device_names() -> None:
    inventory = small_inventory(2)
    plain = build_resources(inventory, Config())
    shared_resources = build_resources(inventory, Config(sharing=shared(plain, 4, rename=True)))
    spec_plain = build_spec(inventory, plain, CdiOptions(), host_facts(inventory)).spec
    spec_shared = build_spec(inventory, shared_resources, CdiOptions(), host_facts(inventory)).spec
    assert spec_plain is not None and spec_plain == spec_shared
    assert [d.name for d in spec_plain.devices] == ["0", "1", "GPU-0", "GPU-1"]


def test_common_edits_are_nvidias() -> None:
    """The shape `nvidia-ctk cdi generate` (toolkit v1.20.0) gives for the same host facts."""
    inventory = small_inventory(1)
    facts = host_facts(
        inventory,
        device_nodes=(
            NodeFact("/dev/nvidiactl", CHAR_DEVICE_RW, 0),
            NodeFact("/dev/nvidia-uvm", CHAR_DEVICE_RW, 0),
            NodeFact("/dev/nvidia0", CHAR_DEVICE_RW, 0),
        ),
        ipc_dirs=("/tmp/nvidia-mps",),
    )
    plan = build_spec(inventory, build_resources(inventory, Config()), CdiOptions(), facts)
    assert plan.spec is not None
    common = plan.spec.to_json()["containerEdits"]
    assert common["env"] == [f"NVIDIA_CTK_LIBCUDA_DIR={LIB_DIR}", "NVIDIA_VISIBLE_DEVICES=void"]
    # Only the control nodes present, shallow paths first.
    assert common["deviceNodes"] == [
        {"path": "/dev/nvidia-uvm", "hostPath": "/dev/nvidia-uvm", "permissions": "rwm"},
        {"path": "/dev/nvidiactl", "hostPath": "/dev/nvidiactl", "permissions": "rwm"},
    ]
    ipc = ["nosuid", "nodev", "rbind", "rprivate", "noexec"]
    assert common["mounts"] == [
        {"hostPath": "/tmp/nvidia-mps", "containerPath": "/tmp/nvidia-mps", "options": ipc},
        {
            "hostPath": "/run/nvidia-persistenced/socket",
            "containerPath": "/run/nvidia-persistenced/socket",
            "options": ipc,
        },
        {"hostPath": "/usr/bin/nvidia-smi", "containerPath": "/usr/bin/nvidia-smi", "options": RO},
        *(
            {"hostPath": p, "containerPath": p, "options": RO}
            for p in (f"{LIB_DIR}/libcuda.so.{VERSION}", f"{LIB_DIR}/libnvidia-ml.so.{VERSION}")
        ),
        {
            "hostPath": f"/lib/firmware/nvidia/{VERSION}/gsp_ga10x.bin",
            "containerPath": f"/lib/firmware/nvidia/{VERSION}/gsp_ga10x.bin",
            "options": RO,
        },
    ]
    hook = {"hookName": "createContainer", "path": HOOK, "env": ["NVIDIA_CTK_DEBUG=false"]}
    assert common["hooks"] == [
        {
            **hook,
            "args": [
                "nvidia-ctk", "hook", "create-symlinks",
                "--link", f"libcuda.so.1::{LIB_DIR}/libcuda.so",
                "--link", f"libcuda.so.{VERSION}::{LIB_DIR}/libcuda.so.1",
                "--link", f"libnvidia-ml.so.{VERSION}::{LIB_DIR}/libnvidia-ml.so.1",
            ],
        },
        {**hook, "args": ["nvidia-ctk", "hook", "enable-cuda-compat", f"--host-driver-version={VERSION}"]},
        {**hook, "args": ["nvidia-ctk", "hook", "update-ldcache", "--folder", LIB_DIR]},
        {**hook, "args": ["nvidia-ctk", "hook", "disable-device-node-modification"]},
        {**hook, "args": ["nvidia-ctk", "hook", "update-application-profile"]},
    ]  # fmt: skip
    assert plan.spec.to_json()["devices"][0] == {
        "name": "0",
        "containerEdits": {
            "deviceNodes": [{"path": "/dev/nvidia0", "hostPath": "/dev/nvidia0", "permissions": "rwm"}]
        },
    }


def test_library_links_follow_sonames_and_the_symlinks_the_host_has() -> None:
    inventory = small_inventory(1)
    libraries = (
        # A SONAME link and its .so link, both on the host.
        LibraryFact(f"{LIB_DIR}/libnvidia-nvvm.so.{VERSION}", "libnvidia-nvvm.so.4", frozenset({"libnvidia-nvvm.so.4", "libnvidia-nvvm.so"})),
        # No symlink on the host: no link, except the ones nvcdi always makes.
        LibraryFact(f"{LIB_DIR}/libnvidia-opticalflow.so.{VERSION}", "libnvidia-opticalflow.so.1"),
        LibraryFact(f"{LIB_DIR}/libGLX_nvidia.so.{VERSION}", "libGLX_nvidia.so.0"),
        # An unreadable SONAME: only the fixed links.
        LibraryFact(f"{LIB_DIR}/libnvidia-ptxjitcompiler.so.{VERSION}", None, frozenset({"libnvidia-ptxjitcompiler.so.1"})),
        # Not "*.*.*": no SONAME links.
        LibraryFact(f"{LIB_DIR}/libnvidia-nvvm70.so", "libnvidia-nvvm70.so.4", frozenset({"libnvidia-nvvm70.so.4"})),
    )  # fmt: skip
    facts = host_facts(inventory, libraries=libraries)
    spec = build_spec(inventory, build_resources(inventory, Config()), CdiOptions(), facts).spec
    assert spec is not None
    links = [a for a in spec.edits.hooks[0].args if "::" in a]
    assert links == [
        f"libnvidia-nvvm.so.{VERSION}::{LIB_DIR}/libnvidia-nvvm.so.4",
        f"libnvidia-nvvm.so.4::{LIB_DIR}/libnvidia-nvvm.so",
        f"libnvidia-opticalflow.so.1::{LIB_DIR}/libnvidia-opticalflow.so",
        f"libGLX_nvidia.so.{VERSION}::{LIB_DIR}/libGLX_indirect.so.0",
    ]


def test_soname_link_names() -> None:
    assert soname_link_names("libcuda.so.580.1", "libcuda.so.1") == ("libcuda.so.1", "libcuda.so")
    assert soname_link_names("libnvidia-nvvm70.so.4", "libnvidia-nvvm70.so.4") == ("libnvidia-nvvm70.so",)
    assert soname_link_names("libfoo.so", "libfoo.so") == ()
    assert soname_link_names("libfoo.so.1", None) == ("libfoo.so",)
    assert soname_link_names("nvidia_drv", None) == ()


def test_roots_map_container_paths_to_the_hosts() -> None:
    inventory = small_inventory(1)
    resources = build_resources(inventory, Config())
    for dev_root in ("/run/nvidia/driver", "/run/nvidia/driver/dev", None):
        options = CdiOptions(
            driver_root="/run/nvidia/driver", dev_root=dev_root, container_driver_root="/driver-root"
        )
        spec = build_spec(inventory, resources, options, host_facts(inventory)).spec
        assert spec is not None
        node = spec.device("0").edits.device_nodes[0]  # type: ignore[union-attr]
        assert (node.path, node.host_path) == ("/dev/nvidia0", "/run/nvidia/driver/dev/nvidia0")
        smi = next(m for m in spec.edits.mounts if m.container_path == "/usr/bin/nvidia-smi")
        assert smi.host_path == "/run/nvidia/driver/usr/bin/nvidia-smi"
    spec = build_spec(
        inventory,
        resources,
        CdiOptions(driver_root="/run/nvidia/driver", dev_root="/"),
        host_facts(inventory),
    ).spec
    assert spec is not None and spec.device("0").edits.device_nodes[0].host_path == "/dev/nvidia0"  # type: ignore[union-attr]


def test_a_hook_path_other_than_nvidia_ctk_is_called_by_its_name() -> None:
    inventory = small_inventory(1)
    options = CdiOptions(nvidia_cdi_hook_path="/usr/local/nvidia/toolkit/nvidia-cdi-hook")
    spec = build_spec(inventory, build_resources(inventory, Config()), options, host_facts(inventory)).spec
    assert spec is not None
    assert {h.path for h in spec.edits.hooks} == {"/usr/local/nvidia/toolkit/nvidia-cdi-hook"}
    assert [h.args[:2] for h in spec.edits.hooks][1] == ("nvidia-cdi-hook", "enable-cuda-compat")


def test_disabled_hooks_are_left_out() -> None:
    inventory = small_inventory(1)
    resources = build_resources(inventory, Config())

    def hooks(*disabled: str) -> list[str]:
        spec = build_spec(
            inventory, resources, CdiOptions(disabled_hooks=disabled), host_facts(inventory)
        ).spec
        assert spec is not None
        return [h.args[2] for h in spec.edits.hooks]

    every = ["create-symlinks", "enable-cuda-compat", "update-ldcache", "disable-device-node-modification", "update-application-profile"]  # fmt: skip
    assert hooks() == every
    assert hooks("enable-cuda-compat", "update-ldcache") == [every[0], every[3], every[4]]
    assert hooks("all") == []


def test_feature_flags() -> None:
    inventory = small_inventory(1)
    resources = build_resources(inventory, Config())
    facts = host_facts(inventory)
    no_ipc = build_spec(
        inventory, resources, CdiOptions(feature_flags=("disable-ipc-discoverer",)), facts
    ).spec
    assert no_ipc is not None and all("socket" not in m.container_path for m in no_ipc.edits.mounts)
    plan = build_spec(inventory, resources, CdiOptions(feature_flags=("enable-coherent-annotations",)), facts)
    assert plan.warnings == ("CDI feature flag 'enable-coherent-annotations' has no effect in nvplugin",)
    with pytest.raises(
        CdiOptionsError, match="unknown CDI feature flag 'enable-everything'; expected any of "
    ):
        CdiOptions(feature_flags=("enable-everything",))
    with pytest.raises(CdiOptionsError, match="unknown CDI hook 'chmodd'"):
        CdiOptions(disabled_hooks=("chmodd",))


def test_group_only_nodes_add_their_group_to_the_container() -> None:
    inventory = small_inventory(2)
    group_only = stat.S_IFCHR | 0o660
    facts = host_facts(
        inventory,
        device_nodes=(
            NodeFact("/dev/nvidiactl", group_only, 44),
            NodeFact("/dev/nvidia0", group_only, 45),
            NodeFact("/dev/nvidia1", CHAR_DEVICE_RW, 46),
        ),
    )
    resources = build_resources(inventory, Config())
    spec = build_spec(inventory, resources, CdiOptions(), facts).spec
    assert spec is not None and spec.version == "0.7.0"
    assert spec.edits.additional_gids == (44,) and spec.edits.device_nodes[0].gid == 44
    assert spec.device("GPU-0").edits.additional_gids == (45,)  # type: ignore[union-attr]
    # World read-write: the node keeps its group, the container needs no extra group.
    gpu1 = spec.device("GPU-1")
    assert gpu1 is not None and gpu1.edits.additional_gids == () and gpu1.edits.device_nodes[0].gid == 46
    validate_spec(spec.to_json())
    options = CdiOptions(feature_flags=("no-additional-gids-for-device-nodes",))
    spec = build_spec(inventory, resources, options, facts).spec
    assert spec is not None and spec.version == "0.5.0" and spec.edits.additional_gids == ()


def test_missing_device_nodes_are_written_and_reported_once() -> None:
    inventory = small_inventory(3)
    facts = host_facts(inventory)
    facts = replace(
        facts,
        device_nodes=tuple(n for n in facts.device_nodes if n.path not in ("/dev/nvidia1", "/dev/nvidia2")),
    )
    plan = build_spec(inventory, build_resources(inventory, Config()), CdiOptions(), facts)
    assert plan.spec is not None
    assert [n.path for n in plan.spec.device("1").edits.device_nodes] == ["/dev/nvidia1"]  # type: ignore[union-attr]
    (warning,) = plan.warnings
    assert warning.startswith("device nodes /dev/nvidia1, /dev/nvidia2 are not present under the dev root /")


def test_full_gpus_get_their_drm_nodes_and_by_path_links_mig_devices_do_not() -> None:
    inventory = layout_inventory("mig-and-full")
    full = next(g for g in inventory.gpus if not g.mig_enabled)
    mig_gpu = next(g for g in inventory.gpus if g.mig_enabled)
    bus = "0000:28:00.0"
    drm = (
        DrmFact(full.uuid, ("/dev/dri/card1", "/dev/dri/renderD128"), ((f"/dev/dri/by-path/pci-{bus}-card", "../card1"), (f"/dev/dri/by-path/pci-{bus}-render", "../renderD128"))),
        DrmFact(mig_gpu.uuid, ("/dev/dri/card2",), ()),
    )  # fmt: skip
    facts = host_facts(inventory, drm=drm)
    # renderD128 is not on the host: neither it nor its link is given.
    facts = replace(
        facts,
        device_nodes=(
            *facts.device_nodes,
            NodeFact("/dev/dri/card1", CHAR_DEVICE_RW, 0),
            NodeFact("/dev/dri/card2", CHAR_DEVICE_RW, 0),
        ),
    )
    spec = build_spec(
        inventory, build_resources(inventory, Config(mig_strategy="mixed")), CdiOptions(), facts
    ).spec
    assert spec is not None
    gpu = spec.device(full.uuid)
    assert gpu is not None
    assert [n.path for n in gpu.edits.device_nodes] == [full.device_node, "/dev/dri/card1"]
    (hook,) = gpu.edits.hooks
    assert hook.args == (
        "nvidia-ctk",
        "hook",
        "create-symlinks",
        "--link",
        f"../card1::/dev/dri/by-path/pci-{bus}-card",
    )
    mig = spec.device(mig_gpu.mig_devices[0].uuid)
    assert mig is not None and mig.edits.hooks == ()
    assert [n.path for n in mig.edits.device_nodes] == [
        mig_gpu.device_node,
        *mig_gpu.mig_devices[0].device_nodes[1:],
    ]


def test_no_devices_no_spec() -> None:
    inventory = small_inventory(0)
    plan = build_spec(inventory, build_resources(inventory, Config()), CdiOptions(), host_facts(inventory))
    assert plan.spec is None


def test_resolve_needs_the_kind() -> None:
    inventory = small_inventory(1)
    spec = build_spec(
        inventory, build_resources(inventory, Config()), CdiOptions(), host_facts(inventory)
    ).spec
    assert spec is not None
    assert spec.resolve("k8s.device-plugin.nvidia.com/gpu=GPU-0") is spec.device("GPU-0") is not None
    assert spec.resolve("nvidia.com/gpu=GPU-0") is None
    assert spec.resolve("k8s.device-plugin.nvidia.com/gpu=GPU-7") is None
