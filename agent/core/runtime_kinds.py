"""The container runtimes the agent manages, as data: one row per runtime.

Pure (no I/O): the CLI's `--runtime` choices, the Node's `containerRuntimeVersion` schemes,
the systemd unit and the default socket paths come from here. What a runtime *does* (read
its config, refuse a restart, probe readiness, pull) is its module in `agent.node.runtimes`,
registered in `agent.node.runtimes.registry` under the same name.

Adding a runtime: one row here, one module in `agent/node/runtimes/`, one line in its
registry, and their tests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuntimeKind:
    name: str  # the name in --runtime, the ledger's `stores` and `restarted`, the metrics
    label: str  # how messages name it ("CRI-O")
    systemd_unit: str
    default_sockets: tuple[str, ...]  # the first that exists wins; else the first
    # `<scheme>://` prefixes of Node.status.nodeInfo.containerRuntimeVersion
    version_schemes: tuple[str, ...]
    # the verification client the runtime answers: the CRI (kubelet's API) or dockerd's
    # Engine API
    api: str  # "cri" | "engine"
    # whether a hosts.toml in its certs.d/<registry>/ can make it ignore our *.crt there
    # (containerd's hosts.toml; the policy's `hostsToml: append` edits it)
    hosts_toml: bool = False


KINDS: tuple[RuntimeKind, ...] = (
    RuntimeKind(
        "containerd",
        "containerd",
        "containerd",
        ("/run/containerd/containerd.sock",),
        ("containerd",),
        "cri",
        hosts_toml=True,
    ),
    RuntimeKind(
        "docker",
        "docker",
        "docker",
        ("/var/run/docker.sock", "/run/docker.sock"),
        ("docker",),
        "engine",
    ),
    RuntimeKind(
        "crio",
        "CRI-O",
        "crio",
        ("/var/run/crio/crio.sock", "/run/crio/crio.sock"),
        ("cri-o", "crio"),
        "cri",
    ),
)

RUNTIMES: tuple[str, ...] = tuple(k.name for k in KINDS)
BY_NAME: dict[str, RuntimeKind] = {k.name: k for k in KINDS}
_BY_SCHEME: dict[str, str] = {s: k.name for k in KINDS for s in k.version_schemes}


def runtime_from_version(v: str) -> str | None:
    """Node.status.nodeInfo.containerRuntimeVersion -> runtime: "containerd://1.6.20" ->
    "containerd"; None for anything we do not manage."""
    scheme, sep, _ = v.strip().partition("://")
    return _BY_SCHEME.get(scheme.lower()) if sep else None


def labels(names: tuple[str, ...] = RUNTIMES) -> str:
    """ "containerd, docker and CRI-O": the runtimes named in one message."""
    words = [BY_NAME[n].label for n in names]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
