"""Kubernetes integration: node labels, Events, per-node config. Imports no Kubernetes client
here: kubernetes_asyncio is loaded only by nvplugin.k8s.client.NodeApi.connect."""
