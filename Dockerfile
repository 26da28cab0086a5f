# ca-trust-agent node agent image.  Build:  docker build -t ca-trust-agent:0.1.0 .
# No "# syntax=" line on purpose: it makes BuildKit pull a Dockerfile frontend image from a
# registry first, which fails on an air-gapped build host (the sites that run private
# registries); dockerd's built-in frontend builds this file as it is.
# Base pinned by tag (Python minor and Debian release); both stages use the same one, so the
# virtualenv built below runs on the same interpreter and libc in the final stage. The
# locks in requirements/ are resolved for this tag: change both together (scripts/lock).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# An air-gapped build points pip at its package mirror: --build-arg PIP_INDEX_URL=https://...
# (unset by default: pip then uses its own configuration). Build stage only, so it is not
# in the final image's history.
ARG PIP_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Nothing is resolved here: every distribution comes from a lock in requirements/ (exact
# versions and their SHA-256 hashes, wheels only, resolved for this base's Python and
# platform by scripts/lock), so two builds of one commit ship the same code. The locks come
# first, so a change to the agent's code reuses this layer.
COPY requirements/image.lock requirements/build.lock ./requirements/
# One virtualenv holding the agent and its runtime dependencies only, without pip or
# setuptools (the final stage never installs anything). image.lock leaves out aiohttp and
# its helpers, which only kubernetes.aio (the asyncio client) imports; the agent uses the
# synchronous ApiClient (agent/cluster/client.py). The build backend goes into a venv of
# its own that is not shipped.
RUN python -m venv --without-pip /opt/ca-trust-agent \
    && python -m pip --python /opt/ca-trust-agent/bin/python install --no-compile \
       --require-hashes --no-deps --only-binary=:all: -r requirements/image.lock \
    && python -m venv /tmp/build-backend \
    && /tmp/build-backend/bin/pip install \
       --require-hashes --no-deps --only-binary=:all: -r requirements/build.lock
# README.md stays out of the context: only the wheel's long description would use it.
COPY pyproject.toml ./
COPY agent ./agent
# The agent's wheel, by the locked backend, installed without its dependencies (they are
# all in already). Then what the agent never runs:
# - kubernetes.aio (~68 MB), whose aiohttp the lock already left out;
# - bytecode for the generated typed API and models (~23 + 10 MB of source that would be
#   ~12 MB more of .pyc): the agent talks raw JSON and never imports them (the two package
#   __init__ modules are imported by the client, and compiled). Everything else
#   is compiled here, because the DaemonSet's root filesystem is read-only and Python could
#   not cache it at run time.
RUN /tmp/build-backend/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheel . \
    && python -m pip --python /opt/ca-trust-agent/bin/python install --no-compile --no-deps \
       /tmp/wheel/*.whl \
    && site=$(/opt/ca-trust-agent/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
    && rm -rf "$site/kubernetes/aio" \
    && /opt/ca-trust-agent/bin/python -m compileall -q -j 0 \
       -x '/kubernetes/client/(api|models)/(?!__init__\.py)' "$site" \
    && /opt/ca-trust-agent/bin/ca-trust-agent --version

# The SBOM (CycloneDX 1.6 JSON) of exactly the venv the image ships, by a locked generator
# in a venv of its own (never in the image). Not built by default; a release exports it:
#   docker build --target sbom --output type=local,dest=dist/ .  -> dist/ca-trust-agent.cdx.json
FROM build AS sbom-build
# (an ARG ends with its stage: the mirror, if any, is passed on here again)
ARG PIP_INDEX_URL
COPY requirements/sbom.lock ./requirements/
RUN python -m venv /tmp/sbom-tools \
    && /tmp/sbom-tools/bin/pip install \
       --require-hashes --no-deps --only-binary=:all: -r requirements/sbom.lock \
    && mkdir /sbom \
    && /tmp/sbom-tools/bin/cyclonedx-py environment --output-reproducible \
       --pyproject pyproject.toml --output-file /sbom/ca-trust-agent.cdx.json \
       /opt/ca-trust-agent/bin/python

FROM scratch AS sbom
COPY --from=sbom-build /sbom/ /

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
