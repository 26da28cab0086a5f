"""A node of the test's own making, one mount namespace per process, same files for all.

A second containerd (2.x beside Debian's 1.6) must read *its* /etc/containerd, socket and
certs.d at the node paths the agent looks at, without touching the sandbox's. Each process
of that "node" -- the containerd, every `ca-trust-agent` call against it, the lab restart
command -- starts in a private mount namespace of its own with the same bind mounts:

    /etc/containerd        <- <base>/etc-containerd
    /run/containerd        <- <base>/run-containerd
    /var/lib/ca-trust-agent <- <base>/ledger

Bind sources are shared directories, so all of them see one set of files, while the
sandbox (and the 1.6 containerd in it) sees its own. Everything else (the OS trust store
copies, /etc/hosts) is the sandbox's, inherited.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# sh receives the pairs as arguments: no path is ever spliced into the script text.
_SCRIPT = (
    'while [ "$1" != "--" ]; do mount --bind "$1" "$2" || exit 97; shift 2; done; '
    'shift; exec "$@"'
)


@dataclass(frozen=True)
class NodeNamespace:
    base: Path

    @property
    def etc_containerd(self) -> Path:
        return self.base / "etc-containerd"

    @property
    def run_containerd(self) -> Path:
        return self.base / "run-containerd"

    @property
    def ledger(self) -> Path:
        return self.base / "ledger"

    @property
    def binds(self) -> tuple[tuple[Path, str], ...]:
        return (
            (self.etc_containerd, "/etc/containerd"),
            (self.run_containerd, "/run/containerd"),
            (self.ledger, "/var/lib/ca-trust-agent"),
        )

    def prepare(self) -> None:
        for source, _ in self.binds:
            source.mkdir(parents=True, exist_ok=True)

    def real(self, node_path: str) -> Path:
        """Where a node path under one of the binds lives for the test process."""
        for source, target in self.binds:
            if node_path == target or node_path.startswith(target + "/"):
                return source / node_path[len(target) :].lstrip("/")
        raise ValueError(f"{node_path} is not under a bind of this node")

    def wrap(self, argv: Sequence[str]) -> tuple[str, ...]:
        """`argv` run in a fresh private mount namespace with this node's binds."""
        pairs: list[str] = []
        for source, target in self.binds:
            pairs += [str(source), target]
        return (
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", _SCRIPT, "sh", *pairs, "--", *argv,
        )


@dataclass(frozen=True)
class HostRoot(NodeNamespace):
    """A node namespace whose bind sources are the node paths inside one host-root tree
    (`<base>/etc/containerd`, `<base>/run/containerd`, `<base>/var/lib/ca-trust-agent`), so
    `base` is the node an agent given `--host-root base` sees, shared with the containerd
    running in the namespace."""

    @property
    def etc_containerd(self) -> Path:
        return self.base / "etc/containerd"

    @property
    def run_containerd(self) -> Path:
        return self.base / "run/containerd"

    @property
    def ledger(self) -> Path:
        return self.base / "var/lib/ca-trust-agent"
