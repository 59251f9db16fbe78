# nvplugin container image.
#   docker build -t nvplugin:0.1.0 .
# Two stages: the first builds a virtual environment with nvplugin and its runtime
# dependencies only (no test extra, no compilers: every dependency ships wheels); the second
# is the same slim Python base with just that environment copied in.

FROM python:3.12.12-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nvplugin/ nvplugin/
# `fast` adds uvloop (a cheaper event loop on the Allocate path). Byte-code is compiled here
# because the container's root filesystem is read-only at run time. pip itself is removed:
# nothing installs packages at run time.
RUN python -m venv /opt/nvplugin \
    && /opt/nvplugin/bin/pip install --no-compile ".[fast]" \
    && /opt/nvplugin/bin/python -m compileall -q /opt/nvplugin/lib \
    && /opt/nvplugin/bin/pip uninstall --yes pip

FROM python:3.12.12-slim-bookworm
LABEL org.opencontainers.image.title="nvplugin" \
      org.opencontainers.image.description="Kubernetes node agent for NVIDIA GPUs: device plugin, GPU health and node labels in one process" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/nvplugin /opt/nvplugin
# NVIDIA_* ask the NVIDIA container runtime for every GPU and for NVML (utility) only.
ENV PATH=/opt/nvplugin/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility
# Non-root by default. The DaemonSet runs it as UID 0 with every capability dropped, because
# the kubelet's device-plugin directory is root-owned 0750 (see manifests/base/daemonset.yaml).
USER 65532:65532
# /metrics, /healthz, /readyz (--metrics-address / NVPLUGIN_METRICS_ADDRESS).
EXPOSE 8080
ENTRYPOINT ["python", "-m", "nvplugin", "run"]
