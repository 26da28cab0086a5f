# syntax=docker/dockerfile:1
# ca-trust-agent node agent image.  Build:  docker build -t ca-trust-agent:0.1.0 .
# Base pinned by tag (Python minor and Debian release); both stages use the same one so
# the wheels built below match the runtime's interpreter and libc.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# README.md stays out of the context: only the wheel's long description would use it.
COPY pyproject.toml ./
COPY agent ./agent
# Wheels of the project and every runtime dependency; the runtime stage installs only these.
RUN python -m pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="ca-trust-agent" \
      org.opencontainers.image.description="Node agent that turns x509 unknown-authority image-pull failures into a verified, audited CA installation" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/ca-trust-agent/ca-trust-agent" \
      org.opencontainers.image.vendor="ca-trust-agent"
# nsenter (util-linux) runs the node's own tools in PID 1's namespaces. util-linux is
# Essential in Debian, so this mostly documents the dependency and picks up fixes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends util-linux \
    && rm -rf /var/lib/apt/lists/*
# Bytecode is compiled at install time: the DaemonSet's root filesystem is read-only.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links /wheels /wheels/ca_trust_agent-*.whl
# Runs as root on purpose, no USER: the agent writes CA files under the host's /etc and
# /var/lib, and nsenters PID 1 to refresh the trust store and restart the container
# runtime. Those need root with CAP_SYS_ADMIN/CAP_SYS_PTRACE on the host (the DaemonSet is
# privileged); a non-root user could do none of it.
ENTRYPOINT ["ca-trust-agent"]
CMD ["run"]
