"""A containerd of a chosen version in a node of its own: 1.6.20 (Debian 12) or 2.1.9.

2.1.9 is Debian unstable's package: `scripts/bootstrap` downloads it with a sources list of
its own and unpacks it under `.lab-cache/containerd-2.1.9/`, never over the machine's 1.6.
Each daemon runs in a node namespace of its own (lab/isolation/nodens.py): its config at
/etc/containerd/config.toml, its socket at /run/containerd/containerd.sock, exactly where the
agent looks on a node, while the sandbox's containerd keeps its own. Every config a test
writes is that node's real config.toml; `restart()` re-reads it, as `systemctl restart
containerd` would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from lab.isolation.nodens import NodeNamespace
from lab.procs import LabError, log_tail, wait_for
from lab.runtimes.cri import CriClient, cri_ready
from lab.runtimes.restart import DaemonSpec, save_state
from lab.runtimes.restart import command as restart_command

VERSION = "2.1.9"
CACHE = Path(__file__).resolve().parents[2] / ".lab-cache"
BIN_DIR = CACHE / f"containerd-{VERSION}" / "usr" / "bin"
# version -> binary: Debian 12's own 1.6 from PATH, the unpacked 2.x by path
BINARIES = {"1.6.20": "containerd", VERSION: str(BIN_DIR / "containerd")}
CONFIG = "/etc/containerd/config.toml"
CERTS_D = "/etc/containerd/certs.d"
SOCKET = "/run/containerd/containerd.sock"


def available() -> bool:
    return (BIN_DIR / "containerd").is_file()


def base_config(work: Path, *, version: int = 3) -> str:
    """Everything but the registry settings: state under `work`, the socket at the node path.

    Version 4 keeps the socket under the grpc server plugin (containerd 2.3+); 2.1 reads only
    versions 1-3, so tests of version 4 stay on the pure config model."""
    if version >= 4:
        socket = f"[plugins.'io.containerd.server.v1.grpc']\n  address = \"{SOCKET}\"\n"
    else:
        socket = f'[grpc]\n  address = "{SOCKET}"\n'
    cni = (
        "[plugins.'io.containerd.cri.v1.runtime'.cni]"
        if version >= 3
        else '[plugins."io.containerd.grpc.v1.cri".cni]'
    )
    # 1.x keeps an "opt" directory, /opt/containerd unless told otherwise: never the machine's
    opt = f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{work}/opt"\n'
    if version >= 3:
        opt = ""
    bins = f'bin_dirs = ["{work}/cni/bin"]' if version >= 3 else f'bin_dir = "{work}/cni/bin"'
    return (
        f"version = {version}\n"
        f'root = "{work}/root"\n'
        f'state = "{work}/state"\n'
        # NRI would open /var/run/nri/nri.sock on the machine: nothing of ours
        'disabled_plugins = ["io.containerd.nri.v1.nri"]\n'
        f"{socket}"
        f"{opt}"
        f"{cni}\n"
        f"  {bins}\n"
        f'  conf_dir = "{work}/cni/net.d"\n'
    )


def _env_prefix(env: Mapping[str, str] | None) -> tuple[str, ...]:
    # `env` execs the daemon: the recorded PID stays containerd's
    return ("env", *(f"{k}={v}" for k, v in env.items())) if env else ()


class Containerd2:
    """One containerd in its node namespace. Its PID is the lab pidfile's."""

    def __init__(
        self,
        node: NodeNamespace,
        work: Path,
        version: str = VERSION,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`env` adds to the clean environment, as a systemd drop-in's `Environment=` does
        (`HTTPS_PROXY`, `NO_PROXY`); it is part of the argv, so restarts keep it."""
        if version == VERSION and not available():
            raise LabError(f"containerd {VERSION} is not in {BIN_DIR}: run scripts/bootstrap")
        self.version = version
        self.config_version = 2 if version.startswith("1.") else 3
        self.node = node
        self.work = work
        self.socket = node.real(SOCKET)
        self.lab_state = work / "lab-state.json"
        self.spec = DaemonSpec(
            name="containerd",
            argv=node.wrap((*_env_prefix(env), BINARIES[version], "--config", CONFIG)),
            pidfile=str(work / "containerd.pid"),
            log=str(work / "containerd.log"),
            socket=str(self.socket),
        )

    @property
    def config_file(self) -> Path:
        return self.node.real(CONFIG)

    @property
    def certs_d(self) -> Path:
        return self.node.real(CERTS_D)

    @property
    def restart_command(self) -> tuple[str, ...]:
        """argv template for the agent's RestartMethod("command", ...)."""
        return restart_command(self.lab_state)

    def base_config(self) -> str:
        return base_config(self.work, version=self.config_version)

    def write_config(self, text: str) -> None:
        self.config_file.write_text(text)

    def start(self, timeout: float = 30.0) -> float:
        self.node.prepare()
        for d in ("root", "state", "cni/bin", "cni/net.d"):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        if not self.config_file.exists():
            self.write_config(self.base_config())
        save_state(self.lab_state, {"containerd": self.spec})
        took = self.spec.start(timeout=timeout)
        if not wait_for(lambda: cri_ready(self.socket), timeout):
            raise LabError(f"containerd {self.version} CRI not ready:\n{self.log_tail()}")
        return took

    def restart(self, timeout: float = 30.0) -> float:
        """Stop and start again: the config is read at start only."""
        self.spec.stop()
        return self.start(timeout)

    def stop(self) -> None:
        self.spec.stop()

    def cri(self, timeout: float = 60.0) -> CriClient:
        return CriClient(self.socket, timeout=timeout)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.spec.log, lines)


@contextlib.contextmanager
def run_containerd2(
    node: NodeNamespace,
    work: Path,
    version: str = VERSION,
    *,
    env: Mapping[str, str] | None = None,
) -> Iterator[Containerd2]:
    daemon = Containerd2(node, work, version, env=env)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
