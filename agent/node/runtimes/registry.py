"""The one registry of container runtimes: name -> the module's `Runtime`.

Every question that depends on which runtime it is (socket, certs.d, restart refusal,
readiness probe, verification client, version) goes through `runtime(name)`. The names
and their order are `agent.core.runtime_kinds.RUNTIMES`; a test keeps the two in step.
"""

from __future__ import annotations

from agent.core.errors import RuntimeRestartError
from agent.core.runtime_kinds import RUNTIMES
from agent.node.runtimes import containerd, crio, docker
from agent.node.runtimes.base import Runtime

REGISTRY: dict[str, Runtime] = {
    rt.kind.name: rt for rt in (containerd.RUNTIME, docker.RUNTIME, crio.RUNTIME)
}


def runtime(name: str) -> Runtime:
    """The runtime called `name`; RuntimeRestartError("unknown-runtime") for any other."""
    found = REGISTRY.get(name)
    if found is None:
        raise RuntimeRestartError(
            f"unknown container runtime {name!r} (known: {', '.join(RUNTIMES)})",
            kind="unknown-runtime",
        )
    return found
