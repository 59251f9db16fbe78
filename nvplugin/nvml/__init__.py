"""NVML access: one interface (base.Nvml), a real and a fake backend, and discovery."""

from __future__ import annotations

from nvplugin.core.config import Config
from nvplugin.nvml.base import Nvml


def open_backend(config: Config) -> Nvml:
    """The backend the config asks for. Raises fake.LayoutError for a bad --fake-gpus."""
    if config.fake_gpus is not None:
        from nvplugin.nvml.fake import FakeNvml, load_layout

        return FakeNvml(load_layout(config.fake_gpus))
    from nvplugin.nvml.real import RealNvml

    return RealNvml(driver_root=config.nvidia_driver_root)
