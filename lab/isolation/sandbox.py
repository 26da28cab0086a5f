"""Protection of the real machine while the lab plays node.

End-to-end tests must run the real `update-ca-certificates`, write `/etc/containerd/certs.d`
and `/etc/docker/certs.d`, and resolve lab names through `/etc/hosts` -- exactly the paths
a node uses, and exactly the paths this machine must never see changed. So they run in a
private mount namespace (`unshare --mount --propagation private`), where
`isolate_node_paths` puts tmpfs copies over the trust directories and empty temp dirs over
the runtime configuration directories. Nothing written there is visible outside, and the
mounts vanish with the namespace even if the test process is killed.

The only effects outside the namespace are the empty mountpoint directories created for
paths that do not exist on this machine (`/run/containerd`, `/var/lib/ca-trust-agent`):
they are removed again when empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from lab.isolation import mountpoints
from lab.procs import LabError, clean_env

# Copied onto tmpfs: update-ca-certificates rewrites them, and the copy must start real.
TRUST_DIRS = ("/etc/ssl/certs", "/usr/local/share/ca-certificates", "/etc/ca-certificates")
TRUST_FILES = ("/etc/ca-certificates.conf",)
# Replaced by empty temp dirs: the lab writes its own runtime configuration there.
NODE_DIRS = ("/etc/containerd", "/etc/docker", "/run/containerd", "/var/lib/ca-trust-agent")
HOSTS = "/etc/hosts"
# update-ca-certificates runs every hook here, and Debian's own (ca-certificates-java's
# `jks-keystore`) appends to /var/lib/ca-certificates-java and runs `dpkg --triggers-only`:
# writes outside the sandbox. The copy is emptied; a real node of course runs its hooks.
HOOKS_DIR = "/etc/ca-certificates/update.d"
# What those hooks write, watched (when present) like the trust paths: changed -> LabError.
HOOK_TARGETS = ("/var/lib/ca-certificates-java", "/var/lib/dpkg/triggers")

HOW_TO_RUN = (
    "needs root in a private mount namespace; run: "
    "unshare --mount --propagation private -- .venv/bin/pytest tests/e2e tests/integration"
)


def _mnt_ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _initial_mnt_ns() -> str | None:
    """The machine's mount namespace: PID 1's, or kthreadd's when PID 1 is unreadable.

    On these VMs PID 1 denies even root a look at its namespaces; kernel threads always
    live in the initial namespaces, so kthreadd (PID 2) answers the same question.
    """
    ns = _mnt_ns(1)
    if ns is not None:
        return ns
    try:
        comm = Path("/proc/2/comm").read_text().strip()
    except OSError:
        return None
    return _mnt_ns(2) if comm == "kthreadd" else None


def in_private_mount_namespace() -> bool:
    """True only when this process provably does not share the machine's mount table."""
    mine, initial = _mnt_ns("self"), _initial_mnt_ns()
    return mine is not None and initial is not None and mine != initial


def reexec_in_private_mount_namespace(argv: Sequence[str] | None = None) -> NoReturn:
    """Replace this process with itself under `unshare --mount --propagation private`.

    `argv` are the interpreter's arguments (default: exactly this process's, `-m` included).
    """
    args = list(argv) if argv is not None else list(sys.orig_argv[1:])
    cmd = ["unshare", "--mount", "--propagation", "private", "--", sys.executable, *args]
    os.execvp(cmd[0], cmd)  # noqa: S606 - an argv, no shell involved


def _run(*argv: str) -> None:
    result = subprocess.run(
        list(argv), env=clean_env(), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def _fingerprint_dir(fd: int) -> tuple[tuple[str, str], ...]:
    entries: list[tuple[str, str]] = []
    for name in sorted(os.listdir(fd)):
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if os.path.islink(f"/proc/self/fd/{fd}/{name}"):
            entries.append((name, "-> " + os.readlink(name, dir_fd=fd)))
        elif os.path.isdir(f"/proc/self/fd/{fd}/{name}"):
            entries.append((name, "dir"))
        else:
            file_fd = os.open(name, os.O_RDONLY, dir_fd=fd)
            with os.fdopen(file_fd, "rb") as f:
                entries.append((name, f"{st.st_size}:{hashlib.sha256(f.read()).hexdigest()}"))
    return tuple(entries)


def _fingerprint_fd(fd: int) -> str:
    """A digest of what `fd` (a directory or a file, opened before any mount) shows."""
    if os.path.isdir(f"/proc/self/fd/{fd}"):
        return hashlib.sha256(repr(_fingerprint_dir(fd)).encode()).hexdigest()
    os.lseek(fd, 0, os.SEEK_SET)
    digest = hashlib.sha256()
    while chunk := os.read(fd, 1 << 16):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Sandbox:
    """The private node paths. Mutable: lab fixtures add host names as they start servers."""

    base: Path
    hosts_copy: Path
    hosts: dict[str, str] = field(default_factory=dict)  # name -> address
    mounts: list[str] = field(default_factory=list)  # mounted-over paths, in mount order
    created: list[str] = field(default_factory=list)  # mountpoints we had to create
    real_fds: dict[str, int] = field(default_factory=dict)  # path -> fd of the real object
    before: dict[str, str] = field(default_factory=dict)  # path -> fingerprint at start

    def add_host(self, name: str, address: str) -> None:
        """Resolve `name` to `address` inside the namespace (rewritten in place: bind mount)."""
        self.hosts[name] = address
        self._write_hosts()

    def _write_hosts(self) -> None:
        original = os.pread(self.real_fds[HOSTS], 1 << 20, 0).decode()
        lines = [original.rstrip("\n"), "# ca-trust-agent lab"]
        lines += [f"{addr} {name}" for name, addr in sorted(self.hosts.items())]
        with open(self.hosts_copy, "w") as f:  # same inode: the bind mount follows
            f.write("\n".join(lines) + "\n")

    def real_fingerprints(self) -> dict[str, str]:
        """What the machine's own paths hold now, read beneath the mounts."""
        return {path: _fingerprint_fd(fd) for path, fd in self.real_fds.items()}

    def changed_real_paths(self) -> list[str]:
        """Real paths whose content differs from when the sandbox was made (should be [])."""
        now = self.real_fingerprints()
        return sorted(p for p, digest in self.before.items() if now.get(p) != digest)


_active: list[Sandbox] = []


def _open_real(sandbox: Sandbox, path: str) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0)
    fd = os.open(path, flags)
    sandbox.real_fds[path] = fd
    sandbox.before[path] = _fingerprint_fd(fd)


def _tmpfs_copy(sandbox: Sandbox, path: str) -> None:
    staging = tempfile.mkdtemp(prefix="stage-", dir=sandbox.base)
    _run("cp", "-a", f"{path}/.", staging)
    _run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", path)
    sandbox.mounts.append(path)
    _run("cp", "-a", f"{staging}/.", path)
    shutil.rmtree(staging)


def _hide_hooks() -> None:
    """Empty the (tmpfs copy of the) hooks directory: see HOOKS_DIR."""
    if not os.path.isdir(HOOKS_DIR):
        return
    for name in os.listdir(HOOKS_DIR):
        path = os.path.join(HOOKS_DIR, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _bind_copy(sandbox: Sandbox, path: str, copy: Path) -> None:
    shutil.copy2(path, copy)
    _run("mount", "--bind", str(copy), path)
    sandbox.mounts.append(path)


def _bind_empty(sandbox: Sandbox, path: str) -> None:
    if mountpoints.acquire(path):
        # made by the lab: shared with other sessions, removed by the last one using it
        sandbox.created.append(path)
    private = sandbox.base / "node" / path.strip("/").replace("/", "-")
    private.mkdir(parents=True)
    _run("mount", "--bind", str(private), path)
    sandbox.mounts.append(path)


def _teardown(sandbox: Sandbox) -> list[str]:
    problems: list[str] = []
    for path in reversed(sandbox.mounts):
        if subprocess.run(["umount", path], capture_output=True, check=False).returncode:
            # a daemon that outlived its fixture keeps it busy; detach rather than leak
            subprocess.run(["umount", "-l", path], capture_output=True, check=False)
    for path in reversed(sandbox.created):
        if not mountpoints.release(path):
            problems.append(f"could not remove mountpoint {path}")
    problems += [f"real {p} changed" for p in sandbox.changed_real_paths()]
    for fd in sandbox.real_fds.values():
        os.close(fd)
    return problems


@contextlib.contextmanager
def isolate_node_paths(
    tmp: str | Path, hosts: Mapping[str, str] | None = None
) -> Iterator[Sandbox]:
    """Make the node paths private (see module doc); nested calls share one sandbox.

    Raises LabError outside a private mount namespace: the mounts would hit the machine.
    On exit the mounts are undone, created mountpoints removed, and the real paths are
    checked to be byte-for-byte what they were (LabError otherwise).
    """
    if _active:
        for name, addr in (hosts or {}).items():
            _active[-1].add_host(name, addr)
        yield _active[-1]
        return
    if os.geteuid() != 0 or not in_private_mount_namespace():
        raise LabError(f"refusing to mount over node paths: {HOW_TO_RUN}")
    base = Path(tmp)
    base.mkdir(parents=True, exist_ok=True)
    sandbox = Sandbox(base=base, hosts_copy=base / "hosts")
    _active.append(sandbox)
    try:
        for path in (*TRUST_DIRS, *TRUST_FILES, HOSTS):
            _open_real(sandbox, path)
        for path in HOOK_TARGETS:
            if os.path.isdir(path):
                _open_real(sandbox, path)
        for path in TRUST_DIRS:
            _tmpfs_copy(sandbox, path)
        _hide_hooks()
        for path in TRUST_FILES:
            _bind_copy(sandbox, path, base / Path(path).name)
        for path in NODE_DIRS:
            _bind_empty(sandbox, path)
        _bind_copy(sandbox, HOSTS, sandbox.hosts_copy)
        for name, addr in (hosts or {}).items():
            sandbox.add_host(name, addr)
        yield sandbox
    finally:
        _active.pop()
        problems = _teardown(sandbox)
        if problems and sys.exc_info()[0] is None:
            raise LabError("sandbox teardown: " + "; ".join(problems))
