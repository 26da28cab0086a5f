"""What a container runtime module provides: the `Runtime` protocol.

Each runtime (containerd, docker, CRI-O) is one module with one object satisfying it,
registered by name in `agent.node.runtimes.registry`; its pure data (name, unit, default
sockets, version schemes) is its row in `agent.core.runtime_kinds`. Nothing outside the
registry asks which runtime it is holding.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from agent.core.placement import Placement
from agent.core.pull_verdict import PullVerdict
from agent.core.runtime_kinds import RuntimeKind
from agent.node.host import HostFS


class Runtime(Protocol):
    @property
    def kind(self) -> RuntimeKind:
        """The runtime's row: name, label, unit, default sockets."""

    def socket(self, fs: HostFS) -> str:
        """Host path of the runtime's API socket, as its config places it."""

    def certs_dir(self, fs: HostFS, major: int | None) -> str:
        """The per-registry trust root it reads on every pull (`<dir>/<registry>/*.crt`);
        StoreError("unavailable") saying why there is none. `major`: the runtime's major
        version when known."""

    def check_placement(
        self,
        fs: HostFS,
        placement: Placement,
        *,
        ours: Collection[str],
        dir_exists: bool,
        major: int | None,
    ) -> None:
        """StoreError when something the runtime reads in that directory would make it
        ignore our file (`ours`: paths the ledger says we wrote)."""

    def config_source(self, fs: HostFS) -> str | None:
        """The config files that decide where it reads trust, for a refusal's findings;
        None when no file decides it (or it cannot be read)."""

    def check_restart(self, fs: HostFS, *, allow_disruptive: bool) -> None:
        """RuntimeRestartError("refused") when restarting it here would do harm (stop every
        container, restart a whole distribution); `allow_disruptive` is the operator's
        explicit consent to a restart that stops containers."""

    def probe(self, real_path: str, timeout: float) -> None:
        """Return when the API on the socket answers; OSError otherwise."""

    def pull(self, real_socket: str, image: str, timeout: float) -> PullVerdict:
        """Pull `image` through the API kubelet uses and classify the answer."""

    def version(self, real_socket: str, timeout: float) -> str | None:
        """The runtime's own version, or None when it cannot be asked or does not say."""
