"""What NVML found on this node: plain immutable facts, read once per discovery."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class MigDevice:
    """One MIG device (a compute instance inside a GPU instance) of a MIG-enabled GPU."""

    uuid: str
    # NVML index of the parent GPU and of this MIG device on it: NVIDIA's index "i:j".
    gpu_index: int
    index: int
    gi_id: int
    ci_id: int
    # NVIDIA's profile name, e.g. "1g.10gb", "1g.10gb+me", "1c.2g.20gb" (compute < GPU slices).
    profile: str
    memory_mib: int
    multiprocessors: int
    gi_slices: int
    ci_slices: int
    copy_engines: int
    decoders: int
    encoders: int
    jpeg_decoders: int
    ofa_engines: int
    # Parent's /dev/nvidiaN, then the GI and CI capability nodes under /dev/nvidia-caps.
    device_nodes: tuple[str, ...] = ()

    @property
    def nvidia_index(self) -> str:
        return f"{self.gpu_index}:{self.index}"

    @property
    def attributes(self) -> tuple[int, ...]:
        """What NVIDIA compares (nvmlDeviceGetAttributes) to call two MIG devices identical."""
        return (
            self.memory_mib,
            self.multiprocessors,
            self.gi_slices,
            self.ci_slices,
            self.copy_engines,
            self.decoders,
            self.encoders,
            self.jpeg_decoders,
            self.ofa_engines,
        )


@dataclass(frozen=True, slots=True)
class Gpu:
    """One full physical GPU."""

    index: int
    uuid: str
    minor: int
    name: str
    memory_bytes: int
    compute_capability: tuple[int, int]
    pci_bus_id: str
    # From sysfs; None when the kernel does not know (VMs report -1).
    numa_node: int | None = None
    # MIG mode as NVML reports it now, and the MIG devices configured on the GPU.
    mig_enabled: bool = False
    mig_devices: tuple[MigDevice, ...] = ()

    @property
    def device_node(self) -> str:
        return f"/dev/nvidia{self.minor}"

    @property
    def memory_mib(self) -> int:
        return self.memory_bytes // (1024 * 1024)


@dataclass(frozen=True, slots=True)
class Inventory:
    """Everything discovery read, plus what it could not read (never silently dropped)."""

    gpus: tuple[Gpu, ...]
    driver_version: str
    # NVML's encoding: 1000 * major + 10 * minor (13000 is CUDA 13.0).
    cuda_driver_version: int
    # One line per device or fact that could not be read; those devices are left out.
    problems: tuple[str, ...] = field(default=())

    @property
    def cuda_version(self) -> tuple[int, int]:
        return self.cuda_driver_version // 1000, (self.cuda_driver_version % 1000) // 10

    def gpu_by_uuid(self, uuid: str) -> Gpu | None:
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
        return None


EMPTY_INVENTORY = Inventory(gpus=(), driver_version="", cuda_driver_version=0)
