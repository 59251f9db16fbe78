"""`nvplugin doctor`: check a node for everything nvplugin needs, and say how to fix what is not.

Each check is a pure function from facts to a CheckResult; the facts are read in runner.py
(through HostFs, so every path can live under --host-root). Modules by topic: gpus (NVML,
kernel modules, device nodes), talos, runtime (containerd, CRI-O, CDI), kubelet (the plugin
directory and our registration), plan (config, MIG and sharing), cluster (the API server's view).
"""

from nvplugin.doctor.result import CheckResult, as_json, as_text, exit_code
from nvplugin.doctor.runner import CHECK_NAMES, DoctorOptions, run_checks

__all__ = ["CHECK_NAMES", "CheckResult", "DoctorOptions", "as_json", "as_text", "exit_code", "run_checks"]
