"""Container runtimes: which one runs here, whether it may be restarted, restart, wait ready.

`common` holds what every runtime shares (the restart method, detection, `RuntimeManager`,
the gRPC readiness probe); `containerd`, `crio` and `docker` hold what only that runtime
has (where its config moves its socket; docker's live-restore check and `/_ping` probe);
`sockets` the default socket paths and the unix-socket plumbing the probes share.
"""

from __future__ import annotations

from agent.node.runtimes.common import (
    H2_PREFACE,
    H2_SETTINGS,
    RESTART_COMMAND_ENV,
    RUNTIMES,
    SYSTEMD_UNITS,
    RestartMethod,
    RuntimeManager,
    detect_runtimes,
    probe_grpc,
    restart_method_from_env,
    runtime_from_version,
    socket_path,
)
from agent.node.runtimes.containerd import containerd_socket
from agent.node.runtimes.crio import CRIO_CONFIG, crio_socket
from agent.node.runtimes.docker import DOCKER_DAEMON_JSON, DOCKER_PING, probe_docker
from agent.node.runtimes.sockets import DEFAULT_SOCKETS

__all__ = [
    "CRIO_CONFIG",
    "DEFAULT_SOCKETS",
    "DOCKER_DAEMON_JSON",
    "DOCKER_PING",
    "H2_PREFACE",
    "H2_SETTINGS",
    "RESTART_COMMAND_ENV",
    "RUNTIMES",
    "SYSTEMD_UNITS",
    "RestartMethod",
    "RuntimeManager",
    "containerd_socket",
    "crio_socket",
    "detect_runtimes",
    "probe_docker",
    "probe_grpc",
    "restart_method_from_env",
    "runtime_from_version",
    "socket_path",
]
