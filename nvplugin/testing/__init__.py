"""Helpers for users' own tests: a Kubernetes API server stand-in and the kubelet simulator."""
