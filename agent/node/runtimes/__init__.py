"""Container runtimes: which one runs here, whether it may be restarted, restart, wait ready.

`base` is the `Runtime` protocol; `containerd`, `crio` and `docker` each provide one (where
its config moves its socket, its certs.d, what refuses a restart, its readiness probe and
verification client), and `registry` is the one table of them by name. `common` holds what
every runtime shares (the restart method, detection, `RuntimeManager`); `sockets` the
unix-socket plumbing and the gRPC probe; `cri` and `dockerapi` the two verification clients.
The names and pure data are `agent.core.runtime_kinds`.
"""

from __future__ import annotations

from agent.core.runtime_kinds import RUNTIMES, runtime_from_version
from agent.node.runtimes.base import Runtime
from agent.node.runtimes.common import (
    RESTART_COMMAND_ENV,
    RestartMethod,
    RuntimeManager,
    detect_runtimes,
    restart_method_from_env,
    socket_path,
)
from agent.node.runtimes.containerd import containerd_socket
from agent.node.runtimes.crio import CRIO_CONFIG, crio_socket
from agent.node.runtimes.docker import DOCKER_DAEMON_JSON, DOCKER_PING, probe_docker
from agent.node.runtimes.registry import REGISTRY, runtime
from agent.node.runtimes.sockets import H2_PREFACE, H2_SETTINGS, probe_grpc

__all__ = [
    "CRIO_CONFIG",
    "DOCKER_DAEMON_JSON",
    "DOCKER_PING",
    "H2_PREFACE",
    "H2_SETTINGS",
    "REGISTRY",
    "RESTART_COMMAND_ENV",
    "RUNTIMES",
    "RestartMethod",
    "Runtime",
    "RuntimeManager",
    "containerd_socket",
    "crio_socket",
    "detect_runtimes",
    "probe_docker",
    "probe_grpc",
    "restart_method_from_env",
    "runtime",
    "runtime_from_version",
    "socket_path",
]
