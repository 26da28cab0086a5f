# ca-trust-agent node agent image.  Build:  docker build -t ca-trust-agent:0.1.0 .
# No "# syntax=" line on purpose: it makes BuildKit pull a Dockerfile frontend image from a
# registry first, which fails on an air-gapped build host (the sites that run private
# registries); dockerd's built-in frontend builds this file as it is.
# Base pinned by tag (Python minor and Debian release); both stages use the same one, so the
# virtualenv built below runs on the same interpreter and libc in the final stage.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# An air-gapped build points pip at its package mirror: --build-arg PIP_INDEX_URL=https://...
# (unset by default: pip then uses its own configuration). Build stage only, so it is not
# in the final image's history.
ARG PIP_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# README.md stays out of the context: only the wheel's long description would use it.
COPY pyproject.toml ./
COPY agent ./agent
# One virtualenv holding the agent and its runtime dependencies only, without pip or
# setuptools (the final stage never installs anything). Then what the agent never runs:
# - kubernetes.aio (the asyncio client, ~68 MB) and aiohttp with its helpers, which only
#   that client imports; the agent uses the synchronous ApiClient (agent/cluster/client.py);
# - bytecode for the generated typed API and models (~23 + 10 MB of source that would be
#   ~12 MB more of .pyc): the agent talks raw JSON and never imports them (the two package
#   __init__ modules are imported by the client, and compiled). Everything else
#   is compiled here, because the DaemonSet's root filesystem is read-only and Python could
#   not cache it at run time.
RUN python -m venv --without-pip /opt/ca-trust-agent \
    && python -m pip --python /opt/ca-trust-agent/bin/python install --no-compile . \
    && site=$(/opt/ca-trust-agent/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
    && python -m pip --python /opt/ca-trust-agent/bin/python uninstall -y \
       aiohttp aiohttp-retry aiohappyeyeballs aiosignal frozenlist multidict propcache yarl \
    && rm -rf "$site/kubernetes/aio" \
    && /opt/ca-trust-agent/bin/python -m compileall -q -j 0 \
       -x '/kubernetes/client/(api|models)/(?!__init__\.py)' "$site" \
    && /opt/ca-trust-agent/bin/ca-trust-agent --version

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="ca-trust-agent" \
      org.opencontainers.image.description="Node agent that turns x509 unknown-authority image-pull failures into a verified, audited CA installation" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/ca-trust-agent/ca-trust-agent" \
      org.opencontainers.image.vendor="ca-trust-agent"
# nsenter (util-linux, Essential in Debian, so already in the base) runs the node's own
# tools in PID 1's namespaces. No apt-get here: the build needs no Debian mirror, and the
# layer would only repeat the base's util-linux.
COPY --from=build /opt/ca-trust-agent /opt/ca-trust-agent
ENV PATH=/opt/ca-trust-agent/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Runs as root on purpose, no USER: the agent writes CA files under the host's /etc and
# /var/lib, and nsenters PID 1 to refresh the trust store and restart the container
# runtime. Those need root with CAP_SYS_ADMIN/CAP_SYS_PTRACE on the host (the DaemonSet is
# privileged); a non-root user could do none of it.
ENTRYPOINT ["ca-trust-agent"]
CMD ["run"]
