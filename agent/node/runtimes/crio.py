"""CRI-O: its API socket (moved by `[crio.api].listen` in crio.conf), its certs.d, the CRI."""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Collection

from agent.core.containerd_config import dig
from agent.core.errors import StoreError
from agent.core.placement import Placement
from agent.core.pull_verdict import PullVerdict
from agent.core.runtime_kinds import BY_NAME, RuntimeKind
from agent.node.host import HostFS
from agent.node.runtimes.sockets import first_existing, probe_grpc, strip_unix

CRIO = BY_NAME["crio"]
CRIO_CONFIG = "/etc/crio/crio.conf"
CRIO_CERTS_DIR = "/etc/containers/certs.d"  # containers-certs.d(5), read on every pull


def crio_socket(fs: HostFS) -> str:
    listen = None
    # A broken crio.conf cannot move the socket either: fall back to the default.
    with contextlib.suppress(
        StoreError, tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError
    ):
        data = fs.read_bytes(CRIO_CONFIG)
        if data is not None:
            listen = dig(tomllib.loads(data.decode("utf-8")), ("crio", "api", "listen"))
    if isinstance(listen, str) and listen.strip():
        return strip_unix(listen.strip())
    return first_existing(fs, CRIO.default_sockets)


class Crio:
    """CRI-O as a `Runtime`: CRI over its socket, the containers' certs.d."""

    kind: RuntimeKind = CRIO

    def socket(self, fs: HostFS) -> str:
        return crio_socket(fs)

    def certs_dir(self, fs: HostFS, major: int | None) -> str:
        return CRIO_CERTS_DIR

    def check_placement(
        self,
        fs: HostFS,
        placement: Placement,
        *,
        ours: Collection[str],
        dir_exists: bool,
        major: int | None,
    ) -> None:
        return None  # nothing beside our file overrides it in the containers' certs.d

    def config_source(self, fs: HostFS) -> str | None:
        return None  # /etc/containers/certs.d is fixed

    def check_restart(self, fs: HostFS, *, allow_disruptive: bool) -> None:
        return None  # a CRI-O restart keeps its containers (conmon holds them)

    def probe(self, real_path: str, timeout: float) -> None:
        probe_grpc(real_path, timeout)

    def pull(self, real_socket: str, image: str, timeout: float) -> PullVerdict:
        from agent.node.runtimes.cri import cri_pull

        return cri_pull(real_socket, image, runtime=CRIO.name, timeout=timeout)

    def version(self, real_socket: str, timeout: float) -> str | None:
        from agent.node.runtimes.cri import cri_version

        return cri_version(real_socket, timeout)


RUNTIME = Crio()
