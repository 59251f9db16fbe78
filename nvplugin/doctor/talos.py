"""Talos Linux: is this node Talos, and does its image carry the NVIDIA system extensions?

Talos lists the extensions baked into the node's image in /etc/extensions.yaml
(`layers: [{image, metadata: {name, version}}]`), what `talosctl get extensions` shows.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from nvplugin.doctor.hostfs import HostFs
from nvplugin.doctor.result import FAIL, PASS, SKIP, WARN, CheckResult

EXTENSIONS_FILE = "/etc/extensions.yaml"
TOOLKIT_EXTENSION = "nvidia-container-toolkit"
# The proprietary and the open kernel modules; either one provides the driver.
KERNEL_MODULE_EXTENSIONS = ("nonfree-kmod-nvidia", "nvidia-open-gpu-kernel-modules")


@dataclass(frozen=True, slots=True)
class TalosFacts:
    is_talos: bool
    # Extension name -> version; None when /etc/extensions.yaml could not be read.
    extensions: dict[str, str] | None = None
    problem: str | None = None


def _os_release_id(text: str) -> str:
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ID":
            return value.strip().strip("\"'")
    return ""


def read_talos(host: HostFs) -> TalosFacts:
    try:
        is_talos = _os_release_id(host.read_text("/etc/os-release")) == "talos"
    except OSError:
        is_talos = False
    if not is_talos:
        with contextlib.suppress(OSError):
            is_talos = "talos" in host.read_text(host.proc_path("version")).lower()
    if not is_talos:
        return TalosFacts(False)
    try:
        text = host.read_text(EXTENSIONS_FILE)
    except OSError as exc:
        return TalosFacts(True, problem=f"{EXTENSIONS_FILE}: cannot read: {exc.strerror or exc}")
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        return TalosFacts(True, problem=f"{EXTENSIONS_FILE}: not valid YAML: {exc}")
    layers = data.get("layers") if isinstance(data, dict) else None
    extensions = {}
    for layer in layers if isinstance(layers, list) else []:
        meta = layer.get("metadata") if isinstance(layer, dict) else None
        if isinstance(meta, dict) and meta.get("name"):
            extensions[str(meta["name"])] = str(meta.get("version", ""))
    return TalosFacts(True, extensions)


def _find(extensions: dict[str, str], prefixes: tuple[str, ...]) -> str | None:
    return next((name for name in extensions if name.startswith(prefixes)), None)


def check_talos(facts: TalosFacts) -> CheckResult:
    name = "talos"
    if not facts.is_talos:
        return CheckResult(name, SKIP, "not a Talos Linux node")
    schematic = (
        "add the extensions to the node's Talos schematic (Image Factory: siderolabs/"
        "nonfree-kmod-nvidia-production and siderolabs/nvidia-container-toolkit-production, or the "
        "-lts pair, matching versions) and upgrade the node to that installer image"
    )
    if facts.extensions is None:
        return CheckResult(
            name,
            WARN,
            "Talos node, but its extensions cannot be listed",
            (facts.problem or "",),
            f"mount the host's / and pass --host-root, or run talosctl get extensions; {schematic}",
        )
    details = [f"extension {n} {v}".rstrip() for n, v in facts.extensions.items()]
    toolkit = _find(facts.extensions, (TOOLKIT_EXTENSION,))
    modules = _find(facts.extensions, KERNEL_MODULE_EXTENSIONS)
    missing = [
        label
        for label, found in (
            ("the NVIDIA container toolkit", toolkit),
            ("the NVIDIA kernel modules", modules),
        )
        if found is None
    ]
    if missing:
        return CheckResult(
            name, FAIL, f"Talos node without {' and '.join(missing)} extension", tuple(details), schematic
        )
    return CheckResult(name, PASS, f"Talos node with {modules} and {toolkit}", tuple(details))
