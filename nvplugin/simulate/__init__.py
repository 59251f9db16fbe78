"""Simulation as a product feature: the kubelet simulator and the narrated `nvplugin simulate`.

The simulated GPUs themselves are the fake NVML backend (nvplugin.nvml.fake, its layouts and
its fault-injection socket), beside the real backend.
"""
