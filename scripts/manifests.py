"""Render and check the deployment files in manifests/ without kubectl or a cluster.

    python scripts/manifests.py render manifests/overlays/talos   # what `kubectl apply -k` sends
    python scripts/manifests.py check                             # CI: tox -e manifests

`render` does what kustomize does for the features these kustomizations use: `resources`
(files and other kustomization directories), `patches` (strategic-merge patch files, matched
by kind and name), `namespace` and `images`. Anything else in a kustomization is an error
rather than silently ignored, so the test that uses this renderer cannot pass on a
kustomization it does not understand.

`check` runs, offline: `kubectl kustomize` on every kustomization, compared object by object
with this renderer; yamllint (.yamllint.yaml); kubernetes-validate --strict on every
resource file and on every rendered kustomization, against the oldest and newest Kubernetes
versions we support; checkov (--skip-download, BC_SKIP_MAPPING=TRUE: no network) on the files
and on the rendered output; hadolint on the Dockerfile. It exits non-zero if any of them fails.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "patches", "namespace", "images"}
# Kinds the namespace transformer leaves alone (cluster-scoped).
CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "Namespace",
    "Node",
    "PersistentVolume",
    "PriorityClass",
    "RuntimeClass",
    "StorageClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}
# Lists that strategic merge merges item by item, by this key (as the Kubernetes API declares).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
}
# The Kubernetes versions the manifests must validate against (kubernetes-validate ships the
# schemas): the oldest still in wide use on Talos and managed clusters, and the newest.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


class RenderError(Exception):
    pass


# --------------------------------------------------------------------------- rendering


def kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_NAMES:
        if (directory / name).is_file():
            return directory / name
    raise RenderError(f"{directory}: no kustomization.yaml")


def load_kustomization(directory: Path) -> dict[str, Any]:
    path = kustomization_file(directory)
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise RenderError(f"{path}: expected a mapping")
    unknown = set(data) - SUPPORTED_KEYS
    if unknown:
        raise RenderError(f"{path}: the renderer does not implement {sorted(unknown)}")
    return data


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def render(directory: Path, _visited: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k directory` would send, in order."""
    directory = directory.resolve()
    # kustomize refuses a kustomization whose directory contains one it came from (an overlay
    # inside its base): "cycle detected: candidate root ... contains visited root ...".
    for root in _visited:
        if root == directory or directory in root.parents:
            raise RenderError(
                f"cycle detected: {directory} contains the kustomization {root} that includes it"
            )
    spec = load_kustomization(directory)
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            objects += render(target, (*_visited, directory))
        elif target.is_file():
            if directory not in target.parents:
                raise RenderError(f"{directory}: {entry} is a file outside the kustomization's directory")
            objects += copy.deepcopy(load_documents(target))
        else:
            raise RenderError(f"{directory}: resource {entry} does not exist")
    for patch_entry in spec.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise RenderError(f"{directory}: only `patches: - path: FILE` is implemented, got {patch_entry}")
        for patch in load_documents(directory / patch_entry["path"]):
            apply_patch(objects, patch, directory / patch_entry["path"])
    if "namespace" in spec:
        set_namespace(objects, spec["namespace"])
    for image in spec.get("images", []):
        set_image(objects, image)
    ids = [object_id(o) for o in objects]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise RenderError(f"{directory}: the same object twice: {sorted(duplicates)}")
    return objects


def object_id(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata", {})
    return obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", "")


def apply_patch(objects: list[dict[str, Any]], patch: dict[str, Any], source: Path) -> None:
    kind, name = patch.get("kind"), patch.get("metadata", {}).get("name")
    namespace = patch.get("metadata", {}).get("namespace")
    targets = [
        o
        for o in objects
        if o.get("kind") == kind
        and o.get("metadata", {}).get("name") == name
        and (namespace is None or o.get("metadata", {}).get("namespace", namespace) == namespace)
    ]
    if len(targets) != 1:
        raise RenderError(f"{source}: patch for {kind}/{name} matches {len(targets)} objects, expected 1")
    body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
    strategic_merge(targets[0], body, ())


def strategic_merge(target: dict[str, Any], patch: dict[str, Any], path: tuple[str, ...]) -> None:
    for key, value in patch.items():
        if key.startswith("$"):
            raise RenderError(f"patch directive {key} at {'.'.join(path)} is not implemented")
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            strategic_merge(target[key], value, (*path, key))
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(target.get(key), list):
            merge_key = MERGE_KEYS[key]
            by_key = {item[merge_key]: item for item in target[key]}
            for item in value:
                if item[merge_key] in by_key:
                    strategic_merge(by_key[item[merge_key]], item, (*path, key, item[merge_key]))
                else:
                    target[key].append(copy.deepcopy(item))
        else:
            target[key] = copy.deepcopy(value)


def set_namespace(objects: list[dict[str, Any]], namespace: str) -> None:
    service_accounts = {o["metadata"]["name"] for o in objects if o.get("kind") == "ServiceAccount"}
    for obj in objects:
        if obj.get("kind") not in CLUSTER_SCOPED:
            obj.setdefault("metadata", {})["namespace"] = namespace
        if obj.get("kind") in ("RoleBinding", "ClusterRoleBinding"):
            for subject in obj.get("subjects", []):
                if subject.get("kind") == "ServiceAccount" and subject.get("name") in service_accounts:
                    subject["namespace"] = namespace


def pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if obj.get("kind") == "Pod":
        yield obj.get("spec", {})
    template = obj.get("spec", {}).get("template", {})
    if template:
        yield template.get("spec", {})


def set_image(objects: list[dict[str, Any]], image: dict[str, Any]) -> None:
    for obj in objects:
        for spec in pod_specs(obj):
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                ref = container.get("image", "")
                name, tag, digest = split_image(ref)
                if name != image["name"]:
                    continue
                name = image.get("newName", name)
                if "digest" in image:
                    container["image"] = f"{name}@{image['digest']}"
                else:
                    tag = str(image.get("newTag", tag))
                    container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def split_image(ref: str) -> tuple[str, str, str]:
    ref, _, digest = ref.partition("@")
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1 :], digest
    return ref, "", digest


# --------------------------------------------------------------------------- the files


def kustomization_dirs(root: Path = MANIFESTS) -> list[Path]:
    return sorted({p.parent for name in KUSTOMIZATION_NAMES for p in root.rglob(name)})


def patch_files(root: Path = MANIFESTS) -> set[Path]:
    patches = set()
    for directory in kustomization_dirs(root):
        for entry in load_kustomization(directory).get("patches", []):
            patches.add((directory / entry["path"]).resolve())
    return patches


def resource_files(root: Path = MANIFESTS) -> list[Path]:
    """Every YAML file that holds complete Kubernetes objects (not kustomizations, not patches)."""
    patches = patch_files(root)
    return sorted(
        p for p in root.rglob("*.y*ml") if p.name not in KUSTOMIZATION_NAMES and p.resolve() not in patches
    )


# --------------------------------------------------------------------------- check


def run(step: str, command: list[str], env: dict[str, str] | None = None) -> bool:
    started = time.monotonic()
    print(f"--- {step}: {' '.join(command)}", flush=True)
    done = subprocess.run(command, env={**os.environ, **(env or {})}, check=False)
    print(
        f"--- {step}: {'ok' if done.returncode == 0 else 'FAILED'} ({time.monotonic() - started:.1f} s)",
        flush=True,
    )
    return done.returncode == 0


def tool(name: str) -> str:
    # The tools come with the tox env; prefer the ones beside this interpreter.
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is not installed: run `tox -e manifests`")
    return found


def check() -> int:
    os.chdir(ROOT)
    files = [str(p.relative_to(ROOT)) for p in resource_files()]
    with tempfile.TemporaryDirectory(prefix="nvplugin-rendered-") as out:
        rendered = []
        for directory in kustomization_dirs():
            name = str(directory.relative_to(ROOT)).replace("/", "_")
            target = Path(out) / f"{name}.yaml"
            target.write_text(yaml.safe_dump_all(render(directory), sort_keys=False))
            rendered.append(str(target))
        names = ", ".join(str(d.relative_to(ROOT)) for d in kustomization_dirs())
        print(f"rendered {len(rendered)} kustomizations: {names}")
        results = [
            run(
                "yamllint",
                [tool("yamllint"), "--strict", "-c", ".yamllint.yaml", "manifests", ".yamllint.yaml"],
            )
        ]
        for version in KUBERNETES_VERSIONS:
            results.append(
                run(
                    f"kubernetes-validate {version}",
                    [tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, *files, *rendered],
                )
            )
        no_network = {"BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
        checkov = [tool("checkov"), "--framework", "kubernetes", "--skip-download", "--compact", "--quiet"]
        skip_patches = [
            arg for p in sorted(patch_files()) for arg in ("--skip-path", str(p.relative_to(MANIFESTS)))
        ]
        results.append(run("checkov (files)", [*checkov, "-d", "manifests", *skip_patches], no_network))
        results.append(run("checkov (rendered)", [*checkov, "-d", out], no_network))
        results.append(run("hadolint", [tool("hadolint"), "Dockerfile"]))
        results.append(compare_with_kubectl())
    failed = results.count(False)
    # Worded unlike a test runner's summary: CI reads those lines to count tests.
    verdict = f"{failed} of {len(results)} FAILED" if failed else f"all {len(results)} ok"
    print(f"deployment-file checks: {verdict}")
    return 1 if failed else 0


def comparable(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(yaml.safe_dump(o, sort_keys=True) for o in objects)


def compare_with_kubectl() -> bool:
    """`kubectl kustomize` (kustomize as kubectl embeds it) must render every kustomization,
    to exactly what this renderer (and so the tests) sees."""
    started = time.monotonic()
    print("--- kubectl kustomize: every kustomization, compared with scripts/manifests.py", flush=True)
    ok = True
    for directory in kustomization_dirs():
        done = subprocess.run(
            [tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True, check=False
        )
        name = directory.relative_to(ROOT)
        if done.returncode != 0:
            print(f"{name}: kubectl kustomize failed: {done.stderr.strip()}")
            ok = False
        elif comparable(load_all(done.stdout)) != comparable(render(directory)):
            print(f"{name}: kubectl kustomize renders something else than scripts/manifests.py")
            ok = False
        else:
            print(f"{name}: same {len(render(directory))} objects")
    print(
        f"--- kubectl kustomize: {'ok' if ok else 'FAILED'} ({time.monotonic() - started:.1f} s)", flush=True
    )
    return ok


def load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def main(argv: list[str]) -> int:
    if argv[:1] == ["render"] and len(argv) == 2:
        print(yaml.safe_dump_all(render(Path(argv[1])), sort_keys=False), end="")
        return 0
    if argv == ["check"]:
        return check()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
