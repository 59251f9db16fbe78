"""nvplugin: a Kubernetes node agent that makes NVIDIA GPUs schedulable."""

__version__ = "0.1.0"
