"""containerd on this node: its config files as containerd reads them, its socket, its certs.d.

The decisions are pure (agent.core.containerd_config); this module reads the files under the
host root: config.toml, every file its `imports` name (globs, relative paths, in order,
recursively), and tells k3s/RKE2 nodes apart, whose embedded containerd is configured by
the distribution, not by the operator.
"""

from __future__ import annotations

import contextlib
import fnmatch
import posixpath
import tomllib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from agent.core import containerd_config as cc
from agent.core.errors import AgentError, RuntimeRestartError, StoreError
from agent.core.placement import Placement
from agent.core.pull_verdict import PullVerdict
from agent.core.runtime_kinds import BY_NAME, RuntimeKind
from agent.node.host import HostFS, split_host_path
from agent.node.runtimes.sockets import probe_grpc

CONTAINERD_CONFIG = "/etc/containerd/config.toml"
# k3s and RKE2 generate their containerd's config and certs.d at every start from
# /etc/rancher/{k3s,rke2}/registries.yaml (files marked "generated ... DO NOT EDIT").
EMBEDDED = {
    "k3s": "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
    "rke2": "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
}
EMBEDDED_SOCKET = "/run/k3s/containerd/containerd.sock"  # both distributions use it


@dataclass(frozen=True)
class ContainerdFiles:
    """The merged configuration and where it came from."""

    config: dict[str, Any] | None  # None: no config.toml at all (containerd's defaults)
    files: tuple[str, ...]  # host paths read, main file first
    distribution: str | None  # "k3s" | "rke2" | None (a plain containerd)

    @property
    def source(self) -> str:
        return ", ".join(self.files) if self.files else f"no {CONTAINERD_CONFIG}"


def _parse(fs: HostFS, path: str, data: bytes) -> dict[str, Any]:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: a hostile "a = [[[[..." nests deeper than the parser can follow.
        raise StoreError(f"cannot parse {path} under {fs.root}: {exc}", kind="unavailable") from exc


def _expand(fs: HostFS, pattern: str) -> list[str]:
    """Glob in the last path element only, as containerd's imports are written."""
    directory, name = posixpath.split(pattern)
    if not any(c in name for c in "*?["):
        return [pattern]
    try:
        names = fs.listdir(directory)
    except StoreError:
        return []
    return [f"{directory}/{n}" for n in sorted(names) if fnmatch.fnmatchcase(n, name)]


def _load(fs: HostFS, path: str, seen: list[str], depth: int) -> dict[str, Any] | None:
    data = fs.read_bytes(path)
    if data is None:
        return None
    seen.append(path)
    config = _parse(fs, path, data)
    if depth >= cc.MAX_IMPORT_DEPTH:
        return config
    merged: dict[str, Any] = dict(config)
    for pattern in cc.import_patterns(config, path):
        for imported in _expand(fs, pattern):
            if imported in seen:
                continue
            sub = _load(fs, imported, seen, depth + 1)
            if sub is not None:
                merged = cc.merge(merged, {k: v for k, v in sub.items() if k != "version"})
    return merged


def load_containerd_config(fs: HostFS) -> dict[str, Any] | None:
    """config.toml merged with its imports; None when the file does not exist."""
    return read_containerd(fs).config


def read_containerd(fs: HostFS) -> ContainerdFiles:
    for distribution, path in EMBEDDED.items():
        if fs.exists(path):
            seen: list[str] = []
            return ContainerdFiles(_load(fs, path, seen, 0), tuple(seen), distribution)
    seen = []
    return ContainerdFiles(_load(fs, CONTAINERD_CONFIG, seen, 0), tuple(seen), None)


def containerd_socket(fs: HostFS) -> str:
    try:
        files = read_containerd(fs)
    except StoreError:
        # a broken config cannot move the socket; the default is the best guess
        return cc.DEFAULT_SOCKET
    if files.distribution is not None and files.config is None:
        return EMBEDDED_SOCKET
    return cc.socket_address(files.config)


def registry_dirs(fs: HostFS, major: int | None) -> cc.RegistryDirs:
    """The one certs.d root containerd's CRI pulls read, or why there is none.

    On k3s/RKE2 there is none we may write: the distribution regenerates that directory at
    every start, so a CA must go into its registries.yaml instead (the agent refuses rather
    than write files that vanish or are ignored)."""
    files = read_containerd(fs)
    if files.distribution is not None:
        return cc.RegistryDirs(
            None,
            f"this is a {files.distribution} node: {files.distribution} regenerates its "
            f"containerd config and certs.d from /etc/rancher/{files.distribution}/registries.yaml "
            "at every start; add the CA there (configs.<registry>.tls.ca_file) and restart "
            f"{files.distribution}",
            "",
            "",
        )
    dirs = cc.registry_dirs(files.config, major)
    return cc.RegistryDirs(
        dirs.directory, f"{dirs.reason} ({files.source})", dirs.table, dirs.config_path
    )


def check_not_embedded(fs: HostFS) -> None:
    """RuntimeRestartError("refused") on k3s/RKE2: their containerd is a child of the k3s /
    k3s-agent / rke2-server / rke2-agent unit, which this agent does not restart (that would
    restart the kubelet and the agent with it; untested here, so not guessed)."""
    try:
        distribution = read_containerd(fs).distribution
    except StoreError:
        return
    if distribution is not None:
        raise RuntimeRestartError(
            f"this is a {distribution} node: its containerd restarts only with the "
            f"{distribution} service (which also restarts the kubelet); ca-trust-agent does "
            f"not do that. Put the CA in /etc/rancher/{distribution}/registries.yaml "
            f"(configs.<registry>.tls.ca_file) and restart {distribution} yourself",
            kind="refused",
        )


def certs_dir(fs: HostFS, major: int | None) -> str:
    """The directory `registry_dirs` found, or StoreError("unavailable") saying what to set."""
    dirs = registry_dirs(fs, major)
    if dirs.directory is None:
        hint = (
            '; set config_path (e.g. config_path = "/etc/containerd/certs.d") under '
            '[plugins."io.containerd.grpc.v1.cri".registry] (containerd 1.x) or '
            "[plugins.'io.containerd.cri.v1.images'.registry] (2.x) and restart containerd "
            "once, or use system scope"
            if not dirs.config_path and "registries.yaml" not in dirs.reason
            else ""
        )
        raise StoreError(
            f"registry scope is not available for containerd: {dirs.reason}{hint}",
            kind="unavailable",
        )
    path = dirs.directory
    try:
        split_host_path(path)
    except StoreError as exc:
        raise StoreError(
            f"containerd config_path {path!r} ({dirs.reason}) is not usable: {exc}",
            kind="unavailable",
        ) from exc
    return path.rstrip("/") or "/"


def _check_hosts_toml(
    fs: HostFS, placement: Placement, ours: Collection[str], major: int | None
) -> None:
    """A hosts.toml that containerd obeys makes it ignore our `*.crt` beside it; one it
    ignores (empty, unparsable, or on 1.x without a host table) does not matter."""
    hosts = placement.directory.rstrip("/") + "/hosts.toml"
    kind = fs.lstat_kind(hosts)
    if kind is None or hosts in ours:
        return
    # anything but a regular file (a link, a directory) is not ours to judge: a conflict
    governs = kind != "file" or cc.hosts_toml_governs(fs.read_bytes(hosts) or b"", major)
    if governs:
        raise StoreError(
            f"{hosts} exists: containerd ignores *.crt files in {placement.directory} when a "
            "hosts.toml is present, so our CA would have no effect. Add `ca = [...]` to that "
            "hosts.toml yourself, or use system scope",
            kind="conflict",
        )


def _check_port_directory(fs: HostFS, placement: Placement) -> None:
    """containerd looks up `certs.d/<host>_<port>_/` before `certs.d/<host>:<port>/` (its
    Windows-safe spelling), so an existing one hides ours entirely (seen on 1.6.20)."""
    parent, _, base = placement.directory.rstrip("/").rpartition("/")
    idx = base.rfind(":")
    if idx <= 0:
        return
    other = f"{parent}/{base[:idx]}_{base[idx + 1 :]}_"
    if fs.lstat_kind(other) is not None:
        raise StoreError(
            f"{other} exists: containerd reads it instead of {placement.directory}, so our CA "
            "would have no effect. Put the CA there yourself, or remove that directory",
            kind="conflict",
        )


CONTAINERD = BY_NAME["containerd"]


class Containerd:
    """containerd as a `Runtime`: CRI over its socket, certs.d from its config."""

    kind: RuntimeKind = CONTAINERD

    def socket(self, fs: HostFS) -> str:
        return containerd_socket(fs)

    def certs_dir(self, fs: HostFS, major: int | None) -> str:
        return certs_dir(fs, major)

    def check_placement(
        self,
        fs: HostFS,
        placement: Placement,
        *,
        ours: Collection[str],
        dir_exists: bool,
        major: int | None,
    ) -> None:
        if dir_exists:
            _check_hosts_toml(fs, placement, ours, major)
        _check_port_directory(fs, placement)

    def config_source(self, fs: HostFS) -> str | None:
        with contextlib.suppress(AgentError):
            return read_containerd(fs).source
        return None

    def check_restart(self, fs: HostFS, *, allow_disruptive: bool) -> None:
        check_not_embedded(fs)  # consent to stop containers is not consent to restart k3s

    def probe(self, real_path: str, timeout: float) -> None:
        probe_grpc(real_path, timeout)

    def pull(self, real_socket: str, image: str, timeout: float) -> PullVerdict:
        from agent.node.runtimes.cri import cri_pull

        return cri_pull(real_socket, image, runtime=CONTAINERD.name, timeout=timeout)

    def version(self, real_socket: str, timeout: float) -> str | None:
        from agent.node.runtimes.cri import cri_version

        return cri_version(real_socket, timeout)


RUNTIME = Containerd()
