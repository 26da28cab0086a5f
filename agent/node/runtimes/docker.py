"""Docker: its socket, the live-restore check in daemon.json, and the `/_ping` probe.

dockerd without live-restore stops every container when it restarts, so a restart is
refused unless daemon.json turns it on or the policy explicitly allows it.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from agent.core.errors import RuntimeRestartError, StoreError
from agent.core.placement import Placement
from agent.core.pull_verdict import PullVerdict
from agent.core.runtime_kinds import BY_NAME, RuntimeKind
from agent.node.host import HostFS
from agent.node.runtimes.sockets import connect, first_existing

DOCKER = BY_NAME["docker"]
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"
DOCKER_CERTS_DIR = "/etc/docker/certs.d"
DOCKER_PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"


def docker_socket(fs: HostFS) -> str:
    return first_existing(fs, DOCKER.default_sockets)


def check_live_restore(fs: HostFS) -> None:
    """RuntimeRestartError("refused") unless daemon.json sets "live-restore": true."""
    how = (
        f'set "live-restore": true in {DOCKER_DAEMON_JSON} (and reload dockerd), or allow '
        "it with allowDockerRestartWithoutLiveRestore in the policy"
    )
    try:
        data = fs.read_bytes(DOCKER_DAEMON_JSON)
    except StoreError as exc:
        raise RuntimeRestartError(
            f"refusing to restart docker: cannot read {DOCKER_DAEMON_JSON}: {exc}",
            kind="refused",
        ) from exc
    if data is None:
        raise RuntimeRestartError(
            f"refusing to restart docker: {DOCKER_DAEMON_JSON} does not exist, so "
            f"live-restore is off and a restart stops every container; {how}",
            kind="refused",
        )
    try:
        config = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RuntimeRestartError(
            f"refusing to restart docker: {DOCKER_DAEMON_JSON} is not valid JSON ({exc}); "
            f"cannot tell whether live-restore is on; {how}",
            kind="refused",
        ) from exc
    if not isinstance(config, dict) or config.get("live-restore") is not True:
        raise RuntimeRestartError(
            f'refusing to restart docker: "live-restore" is not true in {DOCKER_DAEMON_JSON}, '
            f"so a restart stops every container; {how}",
            kind="refused",
        )


def probe_docker(real_path: str, timeout: float = 2.0) -> None:
    """Raise OSError unless `GET /_ping` answers 200 "OK"."""
    with connect(real_path, timeout) as sock:
        sock.sendall(DOCKER_PING)
        data = b""
        while len(data) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200" or not body.strip().endswith(b"OK"):
        raise OSError(f"docker /_ping on {real_path} answered {data[:200]!r}")


class Docker:
    """dockerd as a `Runtime`: the Engine API over its socket, /etc/docker/certs.d."""

    kind: RuntimeKind = DOCKER

    def socket(self, fs: HostFS) -> str:
        return docker_socket(fs)

    def certs_dir(self, fs: HostFS, major: int | None) -> str:
        return DOCKER_CERTS_DIR

    def check_placement(
        self,
        fs: HostFS,
        placement: Placement,
        *,
        ours: Collection[str],
        dir_exists: bool,
        major: int | None,
    ) -> None:
        return None  # nothing beside our file overrides it in docker's certs.d

    def config_source(self, fs: HostFS) -> str | None:
        return None  # /etc/docker/certs.d is fixed

    def check_restart(self, fs: HostFS, *, allow_disruptive: bool) -> None:
        if not allow_disruptive:
            check_live_restore(fs)

    def probe(self, real_path: str, timeout: float) -> None:
        probe_docker(real_path, timeout)

    def pull(self, real_socket: str, image: str, timeout: float) -> PullVerdict:
        from agent.node.runtimes import dockerapi

        return dockerapi.pull(real_socket, image, timeout=timeout)

    def version(self, real_socket: str, timeout: float) -> str | None:
        return None  # nothing the agent decides depends on dockerd's version


RUNTIME = Docker()
