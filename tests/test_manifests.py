"""The deployment files: what `kubectl apply -k manifests/` installs, rendered as kustomize would.

scripts/manifests.py renders the kustomizations (resources, patches, namespace, images) in
pure Python; these tests assert what the seed and the agent rely on. The schema, security and
lint checks run in `tox -e manifests`.
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


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return kustomize.render(MANIFESTS)


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


def test_every_kustomization_renders_and_every_file_is_used() -> None:
    used: set[Path] = set()
    for directory in kustomize.kustomization_dirs():
        objects = kustomize.render(directory)
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
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "CriticalAddonsOnly", "operator": "Exists"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}


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


def test_talos_overlay_uses_the_nvidia_runtime_class() -> None:
    objects = kustomize.render(MANIFESTS / "overlays" / "talos")
    runtime_class = find(objects, "RuntimeClass", "nvidia")
    assert runtime_class["handler"] == "nvidia"
    assert "namespace" not in runtime_class["metadata"]
    pod = find(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    # the patch adds to the node selector, it does not replace it
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "nvidia.com/gpu.present": "true"}
    # everything else of the base is still there, unchanged
    base_ids = {kustomize.object_id(o) for o in kustomize.render(MANIFESTS)}
    assert base_ids | {("RuntimeClass", "", "nvidia")} == {kustomize.object_id(o) for o in objects}
    assert pod["priorityClassName"] == "system-node-critical"


def test_example_pod_requests_one_gpu_and_talos_example_uses_the_runtime_class() -> None:
    pod = find(kustomize.render(MANIFESTS / "examples"), "Pod", "gpu-pod")
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "runtimeClassName" not in pod["spec"]
    talos_pod = find(kustomize.render(MANIFESTS / "overlays" / "talos" / "examples"), "Pod", "gpu-pod")
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


# --------------------------------------------------------------------------- the renderer itself


def test_renderer_refuses_an_overlay_inside_its_base(tmp_path: Path) -> None:
    # kustomize: "cycle detected: candidate root ... contains visited root ..."
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml]\n")
    (tmp_path / "overlay").mkdir()
    (tmp_path / "overlay" / "kustomization.yaml").write_text("resources: [../]\n")
    with pytest.raises(kustomize.RenderError, match="cycle detected"):
        kustomize.render(tmp_path / "overlay")


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(kustomize.RenderError, match="does not implement"):
        kustomize.render(tmp_path)


def test_renderer_patch_must_match_exactly_one_object(tmp_path: Path) -> None:
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    (tmp_path / "patch.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\ndata: {x: y}\n"
    )
    (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml]\npatches: [{path: patch.yaml}]\n")
    with pytest.raises(kustomize.RenderError, match="matches 0 objects"):
        kustomize.render(tmp_path)


def test_strategic_merge_merges_containers_by_name_and_replaces_other_lists() -> None:
    target = {
        "spec": {"containers": [{"name": "a", "image": "x:1", "args": ["1"]}], "tolerations": [{"key": "k"}]}
    }
    patch = {
        "spec": {"containers": [{"name": "a", "image": "x:2"}, {"name": "b"}], "tolerations": [{"key": "j"}]}
    }
    kustomize.strategic_merge(target, patch, ())
    assert target == {
        "spec": {
            "containers": [{"name": "a", "image": "x:2", "args": ["1"]}, {"name": "b"}],
            "tolerations": [{"key": "j"}],
        }
    }


@pytest.mark.parametrize(
    ("image", "entry", "expected"),
    [
        ("nvplugin:0.1.0", {"name": "nvplugin", "newTag": "0.2.0"}, "nvplugin:0.2.0"),
        (
            "nvplugin:0.1.0",
            {"name": "nvplugin", "newName": "reg:5000/x/nvplugin"},
            "reg:5000/x/nvplugin:0.1.0",
        ),
        ("nvplugin:0.1.0", {"name": "nvplugin", "digest": "sha256:ab"}, "nvplugin@sha256:ab"),
        ("other:1", {"name": "nvplugin", "newTag": "9"}, "other:1"),
        ("reg:5000/nvplugin", {"name": "reg:5000/nvplugin", "newTag": "1"}, "reg:5000/nvplugin:1"),
    ],
)
def test_images_transformer(image: str, entry: dict[str, str], expected: str) -> None:
    objects = [{"kind": "Pod", "spec": {"containers": [{"name": "c", "image": image}]}}]
    kustomize.set_image(objects, entry)
    assert objects[0]["spec"]["containers"][0]["image"] == expected
