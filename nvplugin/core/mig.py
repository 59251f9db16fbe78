"""MIG facts shared by both NVML backends: profile names, capability-node minors, profile table.

Pure: the real backend feeds it what NVML reports, the fake backend uses the table of
H100-80GB-like profiles to simulate MIG-enabled GPUs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

CAPS_DIR = "/dev/nvidia-caps"
# /proc/driver/nvidia-caps/mig-minors: "config" and "monitor" take minors 1 and 2, then every
# GPU gets 15 GPU instances x (1 GI node + 8 CI nodes).
_FIRST_GPU_MINOR = 3
_GI_PER_GPU = 15
_CI_PER_GI = 8
_MINORS_PER_GI = 1 + _CI_PER_GI
_MINORS_PER_GPU = _GI_PER_GPU * _MINORS_PER_GI


def gi_cap_minor(gpu_minor: int, gi_id: int) -> int:
    """The minor of /dev/nvidia-caps/nvidia-capN for GPU instance `gi_id` of GPU `gpu_minor`,
    as the driver numbers them in /proc/driver/nvidia-caps/mig-minors."""
    return _FIRST_GPU_MINOR + gpu_minor * _MINORS_PER_GPU + gi_id * _MINORS_PER_GI


def ci_cap_minor(gpu_minor: int, gi_id: int, ci_id: int) -> int:
    return gi_cap_minor(gpu_minor, gi_id) + 1 + ci_id


def cap_node(minor: int) -> str:
    return f"{CAPS_DIR}/nvidia-cap{minor}"


def parse_mig_minors(text: str) -> dict[tuple[int, int, int | None], int]:
    """/proc/driver/nvidia-caps/mig-minors -> {(gpu minor, gi, ci or None): cap minor}.

    Lines look like "gpu0/gi1/access 12" and "gpu0/gi1/ci0/access 13"; others
    ("config 1", "monitor 2") and malformed lines are skipped, as NVIDIA does.
    """
    minors: dict[tuple[int, int, int | None], int] = {}
    for line in text.splitlines():
        match = _MINORS_LINE.match(line.strip())
        if match:
            gpu, gi, ci, minor = match.groups()
            minors[(int(gpu), int(gi), int(ci) if ci is not None else None)] = int(minor)
    return minors


_MINORS_LINE = re.compile(r"^gpu(\d+)/gi(\d+)(?:/ci(\d+))?/access\s+(\d+)$")


def memory_size_gb(total_device_bytes: int, mig_memory_mib: int) -> int:
    """The "Ngb" of a profile name: go-nvlib's getMigMemorySizeGB (eighths of the GPU's memory,
    rounded up, times the GPU's memory in whole GB)."""
    if total_device_bytes <= 0:
        return 0
    one_gb = 1024**3
    fraction = (mig_memory_mib * 1024 * 1024) / total_device_bytes
    fraction = math.ceil(fraction * 8) / 8
    total_gb = (total_device_bytes + one_gb - 1) // one_gb
    return round(fraction * total_gb)


def profile_name(
    gi_slices: int, ci_slices: int, memory_gb: int, attributes: tuple[str, ...] = (), negative: bool = False
) -> str:
    """NVIDIA's profile string: "1g.10gb", "1g.10gb+me", "1c.2g.20gb", "1g.10gb-me"."""
    base = f"{gi_slices}g.{memory_gb}gb"
    if ci_slices != gi_slices:
        base = f"{ci_slices}c.{base}"
    if attributes:
        base += ("-" if negative else "+") + ",".join(attributes)
    return base


def resource_suffix(profile: str) -> str:
    """The mixed-strategy resource name part: "mig-1g.10gb+me" -> "mig-1g.10gb.me"."""
    return ("mig-" + profile).replace("+", ".")


@dataclass(frozen=True, slots=True)
class MigProfile:
    """The facts NVML reports for one MIG device of a profile (H100 80GB HBM3 values)."""

    name: str
    gi_slices: int
    ci_slices: int
    memory_mib: int
    multiprocessors: int
    copy_engines: int
    decoders: int
    encoders: int
    jpeg_decoders: int
    ofa_engines: int
    # How many of this profile one GPU can hold (nvidia-smi mig -lgip "Instances Total").
    max_per_gpu: int


# From `nvidia-smi mig -lgip` on an H100 80GB HBM3 (memory in MiB as NVML reports it).
H100_PROFILES: dict[str, MigProfile] = {
    p.name: p
    for p in (
        MigProfile("1g.10gb", 1, 1, 9856, 16, 1, 1, 0, 1, 0, 7),
        MigProfile("1g.10gb+me", 1, 1, 9856, 16, 1, 1, 0, 1, 1, 1),
        MigProfile("1g.20gb", 1, 1, 20096, 26, 1, 1, 0, 1, 0, 4),
        MigProfile("2g.20gb", 2, 2, 20096, 32, 2, 2, 0, 2, 0, 3),
        MigProfile("3g.40gb", 3, 3, 40448, 60, 3, 3, 0, 3, 0, 2),
        MigProfile("4g.40gb", 4, 4, 40448, 64, 4, 4, 0, 4, 0, 1),
        MigProfile("7g.80gb", 7, 7, 81152, 132, 8, 7, 0, 7, 1, 1),
    )
}
# An H100 has 7 compute slices to share among its GPU instances.
H100_COMPUTE_SLICES = 7
