"""A real containerd 1.6 for the lab, reached through its CRI like kubelet does.

Two layouts:
- `temp_layout(base)`: everything under a temp dir (config, socket, certs.d); runs anywhere
  as root, next to whatever the machine has.
- `node_layout(base)`: config at /etc/containerd/config.toml, certs.d at
  /etc/containerd/certs.d, socket at /run/containerd/containerd.sock -- where the agent
  looks on a real node -- with root/state/logs under the temp dir. Only inside the
  sandbox (lab.isolation.sandbox), where those paths are private.

The daemon is started detached with a clean environment and its PID recorded in a
pidfile, so the lab restart command (lab/runtimes/restart.py) can replace it and the lab still
stops the right process afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lab.procs import LabError, log_tail, wait_for
from lab.runtimes.cri import CriClient, cri_ready
from lab.runtimes.restart import DaemonSpec, load_state, save_state
from lab.runtimes.restart import command as restart_command


@dataclass(frozen=True)
class ContainerdLayout:
    base: Path
    config: Path
    root: Path
    state: Path
    socket: Path
    certs_d: Path  # config_path: containerd reads certs.d/<host:port>/ on every pull
    opt: Path
    cni_bin: Path
    cni_conf: Path
    pidfile: Path
    log: Path
    lab_state: Path  # read by the restart command


def _layout(base: Path, config: Path, socket: Path, certs_d: Path) -> ContainerdLayout:
    return ContainerdLayout(
        base=base,
        config=config,
        root=base / "root",
        state=base / "state",
        socket=socket,
        certs_d=certs_d,
        opt=base / "opt",
        cni_bin=base / "cni" / "bin",
        cni_conf=base / "cni" / "net.d",
        pidfile=base / "containerd.pid",
        log=base / "containerd.log",
        lab_state=base / "lab-state.json",
    )


def temp_layout(base: str | Path) -> ContainerdLayout:
    b = Path(base)
    return _layout(b, b / "config.toml", b / "containerd.sock", b / "certs.d")


def node_layout(base: str | Path) -> ContainerdLayout:
    return _layout(
        Path(base),
        Path("/etc/containerd/config.toml"),
        Path("/run/containerd/containerd.sock"),
        Path("/etc/containerd/certs.d"),
    )


def render_config(layout: ContainerdLayout) -> str:
    """The config verified in shared/LAB.md, pointed at `layout`."""
    return f"""version = 2
root = "{layout.root}"
state = "{layout.state}"

[grpc]
  address = "{layout.socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{layout.opt}"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{layout.cni_bin}"
  conf_dir = "{layout.cni_conf}"

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{layout.certs_d}"
"""


class Containerd:
    """One lab containerd. Its PID is whatever the pidfile says (restarts change it)."""

    def __init__(self, layout: ContainerdLayout) -> None:
        self.layout = layout
        self.spec = DaemonSpec(
            name="containerd",
            argv=("containerd", "--config", str(layout.config)),
            pidfile=str(layout.pidfile),
            log=str(layout.log),
            socket=str(layout.socket),
        )

    @property
    def pid(self) -> int:
        pid = self.spec.pid
        if pid is None:
            raise LabError(f"containerd is not running (no pidfile {self.layout.pidfile})")
        return pid

    @property
    def restart_command(self) -> tuple[str, ...]:
        """argv template for the agent's RestartMethod("command", ...)."""
        return restart_command(self.layout.lab_state)

    def prepare(self) -> None:
        lay = self.layout
        for d in (lay.root, lay.state, lay.opt, lay.cni_bin, lay.cni_conf, lay.certs_d):
            d.mkdir(parents=True, exist_ok=True)
        lay.config.parent.mkdir(parents=True, exist_ok=True)
        lay.socket.parent.mkdir(parents=True, exist_ok=True)
        lay.config.write_text(render_config(lay))
        # merge: the dockerd lab may share the state file
        specs = load_state(lay.lab_state) if lay.lab_state.exists() else {}
        specs["containerd"] = self.spec
        save_state(lay.lab_state, specs)

    def start(self, timeout: float = 30.0) -> float:
        """Start and wait until the CRI answers. Seconds from spawn to CRI ready."""
        self.prepare()
        took = self.spec.start(timeout=timeout)
        self.wait_ready(timeout)
        return took

    def wait_ready(self, timeout: float = 30.0) -> None:
        if not wait_for(lambda: cri_ready(self.layout.socket), timeout):
            raise LabError(f"containerd CRI not ready:\n{log_tail(self.layout.log)}")

    def stop(self) -> None:
        self.spec.stop()

    def cri(self, timeout: float = 60.0) -> CriClient:
        return CriClient(self.layout.socket, timeout=timeout)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.layout.log, lines)


@contextlib.contextmanager
def run_containerd(layout: ContainerdLayout, timeout: float = 30.0) -> Iterator[Containerd]:
    """A started containerd, stopped (by its current PID) on exit."""
    daemon = Containerd(layout)
    try:
        daemon.start(timeout=timeout)
        yield daemon
    finally:
        daemon.stop()
