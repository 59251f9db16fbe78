"""Compare nvplugin's CDI spec with NVIDIA's for the GPUs of this machine.

    PYTHONPATH=. python3 scripts/cdi_compare.py [--nvidia-spec nvidia.json] [--output ours.json]
        [--driver-root /] [--container-driver-root DIR] [--dev-root DIR]
        [--nvidia-cdi-hook-path /usr/bin/nvidia-ctk] [--mig-strategy none|single|mixed]
        [--feature-flag F ...] [--disable-hook H ...] [--fake-gpus LAYOUT]

Builds nvplugin's spec (real NVML unless --fake-gpus; nothing is written to the CDI spec
directory) and, without --nvidia-spec, prints it. With --nvidia-spec (JSON or YAML, from
`nvidia-ctk cdi generate`), prints a normalized diff: device names, then for the common edits
and each device the device nodes, mounts, hooks and env, each as "same", "only ours" and
"only NVIDIA's". To make NVIDIA's spec comparable, generate it with the device plugin's vendor,
class and hook path and without the "all" device:

    nvidia-ctk cdi generate --vendor k8s.device-plugin.nvidia.com --class gpu \\
        --nvidia-cdi-hook-path /usr/bin/nvidia-ctk --no-all-device --format json --output nvidia.json

Fields nvplugin does not write (device nodes' major, minor, fileMode) are not compared; a
missing hostPath counts as equal to the path (CDI's rule).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nvplugin.cdi.hostfacts import find_host_facts
from nvplugin.core.cdi import CdiOptions, build_spec
from nvplugin.core.config import Config
from nvplugin.core.inventory import Inventory
from nvplugin.core.resources import build_resources
from nvplugin.nvml.discovery import discover


def read_inventory(args: argparse.Namespace) -> Inventory:
    if args.fake_gpus:
        from nvplugin.nvml.fake import FakeNvml, load_layout

        nvml: Any = FakeNvml(load_layout(args.fake_gpus))
    else:
        from nvplugin.nvml.real import RealNvml

        nvml = RealNvml(driver_root=args.container_driver_root or args.driver_root)
    nvml.init()
    try:
        return discover(nvml)
    finally:
        nvml.shutdown()


def load_spec(path: str) -> dict[str, Any]:
    text = Path(path).read_text()
    if path.endswith(".json"):
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


def normalized_edits(edits: Mapping[str, Any]) -> dict[str, set[str]]:
    """Each kind of edit as a set of comparable lines."""
    nodes = {
        f"{n['path']} <- {n.get('hostPath') or n['path']}" + (f" gid={n['gid']}" if n.get("gid") else "")
        for n in edits.get("deviceNodes") or ()
    }
    mounts = {
        f"{m['containerPath']} <- {m['hostPath']} [{','.join(sorted(m.get('options') or ()))}]"
        for m in edits.get("mounts") or ()
    }
    hooks = set()
    for hook in edits.get("hooks") or ():
        args = list(hook.get("args") or ())
        links = sorted(a for a in args if "::" in a)
        if links:  # one line per link: their order does not matter
            head = " ".join(a for a in args if "::" not in a and a != "--link")
            hooks.update(f"{hook['hookName']} {hook['path']} {head} {link}" for link in links)
        else:
            hooks.add(
                f"{hook['hookName']} {hook['path']} {' '.join(args)} env={','.join(hook.get('env') or ())}"
            )
    return {
        "env": set(edits.get("env") or ()),
        "deviceNodes": nodes,
        "mounts": mounts,
        "hooks": hooks,
        "additionalGids": {str(g) for g in edits.get("additionalGids") or ()},
    }


def compare_sets(label: str, ours: Iterable[str], theirs: Iterable[str]) -> list[str]:
    """The report lines for one kind of entry (none when both sides are empty)."""
    ours, theirs = set(ours), set(theirs)
    if not ours and not theirs:
        return []
    only_ours, only_theirs = sorted(ours - theirs), sorted(theirs - ours)
    lines = [
        f"  {label}: {len(ours & theirs)} same, {len(only_ours)} only ours, {len(only_theirs)} only NVIDIA's"
    ]
    lines += [f"    + ours:     {line}" for line in only_ours]
    lines += [f"    - NVIDIA's: {line}" for line in only_theirs]
    return lines


def compare_edits(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    a, b = normalized_edits(ours), normalized_edits(theirs)
    return [line for kind in a for line in compare_sets(kind, a[kind], b[kind])]


def differences(lines: list[str]) -> int:
    return sum(1 for line in lines if line.startswith(("    + ", "    - ")))


def compare(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> int:
    """Print the normalized diff; the number of differing entries."""
    count = 0
    for key in ("kind", "cdiVersion"):
        same = ours.get(key) == theirs.get(key)
        count += not same
        print(f"{key}: ours {ours.get(key)!r}, NVIDIA's {theirs.get(key)!r}{'' if same else '  <- differs'}")
    our_devices = {d["name"]: d.get("containerEdits") or {} for d in ours.get("devices") or ()}
    their_devices = {d["name"]: d.get("containerEdits") or {} for d in theirs.get("devices") or ()}
    lines = compare_sets("names", our_devices, their_devices)
    print("devices:", *lines, sep="\n")
    count += differences(lines)
    lines = compare_edits(ours.get("containerEdits") or {}, theirs.get("containerEdits") or {})
    print("common edits:", *lines, sep="\n")
    count += differences(lines)
    both = sorted(our_devices.keys() & their_devices.keys())
    same = 0
    for name in both:
        lines = compare_edits(our_devices[name], their_devices[name])
        if differences(lines):
            print(f"device {name}:", *lines, sep="\n")
            count += differences(lines)
        else:
            same += 1
    print(f"devices with the same edits: {same} of {len(both)}")
    print(f"differences: {count}")
    return count


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nvidia-spec", help="NVIDIA's spec to compare with (JSON or YAML)")
    parser.add_argument("--output", help="also write nvplugin's spec (JSON) here")
    parser.add_argument("--driver-root", default="/")
    parser.add_argument("--container-driver-root")
    parser.add_argument("--dev-root")
    parser.add_argument("--nvidia-cdi-hook-path", default="/usr/bin/nvidia-ctk")
    parser.add_argument("--mig-strategy", default="none", choices=("none", "single", "mixed"))
    parser.add_argument("--feature-flag", action="append", default=[])
    parser.add_argument("--disable-hook", action="append", default=[])
    parser.add_argument(
        "--fake-gpus", help="a fake GPU layout instead of the real NVML (to try it without a GPU)"
    )
    args = parser.parse_args()

    options = CdiOptions(
        driver_root=args.driver_root,
        dev_root=args.dev_root,
        container_driver_root=args.container_driver_root,
        nvidia_cdi_hook_path=args.nvidia_cdi_hook_path,
        feature_flags=tuple(args.feature_flag),
        disabled_hooks=tuple(args.disable_hook),
    )
    inventory = read_inventory(args)
    resources = build_resources(inventory, Config(mig_strategy=args.mig_strategy))
    plan = build_spec(inventory, resources, options, find_host_facts(inventory, options))
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if plan.spec is None:
        print("no devices: nvplugin writes no spec", file=sys.stderr)
        return 1
    ours = plan.spec.to_json()
    if args.output:
        Path(args.output).write_text(json.dumps(ours, indent=2) + "\n")
    if not args.nvidia_spec:
        print(json.dumps(ours, indent=2))
        return 0
    compare(ours, load_spec(args.nvidia_spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
