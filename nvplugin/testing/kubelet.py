"""The kubelet simulator for users' own tests; it lives in nvplugin.simulate.kubelet."""

from nvplugin.simulate.kubelet import *  # noqa: F403
from nvplugin.simulate.kubelet import KubeletSimulator, PluginView, Registration

__all__ = ["KubeletSimulator", "PluginView", "Registration"]
