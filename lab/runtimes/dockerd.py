"""dockerd 20.10 for the lab: no iptables, no bridge, vfs storage, everything under a temp dir.

dockerd has no flag for its certs.d location: it always reads /etc/docker/certs.d. The lab
therefore runs it only inside the sandbox (lab.isolation.sandbox), where /etc/docker is a private
temp dir -- the one the agent writes to. It starts its own managed containerd under its
exec-root. Pulls are checked with the docker CLI of the same release (/usr/bin/docker),
with a private HOME so no user configuration leaks in.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lab.procs import LabError, clean_env, log_tail, wait_for
from lab.runtimes.restart import DaemonSpec, load_state, save_state
from lab.runtimes.restart import command as restart_command

DOCKER_CLI = "/usr/bin/docker"  # the Debian docker.io client, same release as dockerd


@dataclass(frozen=True)
class DockerdLayout:
    base: Path
    data_root: Path
    exec_root: Path
    socket: Path
    pidfile: Path  # dockerd's own
    lab_pidfile: Path  # the lab's record (dockerd refuses a pidfile holding a live PID)
    config: Path  # daemon.json: keeps /etc/docker/daemon.json out of play
    log: Path
    home: Path  # HOME for the CLI
    lab_state: Path


def layout(base: str | Path) -> DockerdLayout:
    b = Path(base)
    return DockerdLayout(
        base=b,
        data_root=b / "data",
        exec_root=b / "exec",
        socket=b / "docker.sock",
        pidfile=b / "exec" / "docker.pid",
        lab_pidfile=b / "dockerd.lab.pid",
        config=b / "daemon.json",
        log=b / "dockerd.log",
        home=b / "home",
        lab_state=b / "lab-state.json",
    )


@dataclass(frozen=True)
class PullOutcome:
    image: str
    ok: bool
    output: str  # stdout + stderr of `docker pull` (the x509 wording when refused)


class Dockerd:
    def __init__(self, lay: DockerdLayout) -> None:
        self.layout = lay
        self.spec = DaemonSpec(
            name="dockerd",
            argv=(
                "dockerd",
                "--config-file", str(lay.config),
                "--host", f"unix://{lay.socket}",
                "--data-root", str(lay.data_root),
                "--exec-root", str(lay.exec_root),
                "--pidfile", str(lay.pidfile),
                "--iptables=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ),
            pidfile=str(lay.lab_pidfile),
            log=str(lay.log),
            socket=str(lay.socket),
        )

    @property
    def pid(self) -> int:
        pid = self.spec.pid
        if pid is None:
            raise LabError("dockerd is not running")
        return pid

    @property
    def restart_command(self) -> tuple[str, ...]:
        return restart_command(self.layout.lab_state)

    def start(self, timeout: float = 60.0) -> float:
        lay = self.layout
        for d in (lay.data_root, lay.exec_root, lay.home):
            d.mkdir(parents=True, exist_ok=True)
        lay.config.write_text("{}\n")
        specs = load_state(lay.lab_state) if lay.lab_state.exists() else {}
        specs["docker"] = self.spec
        save_state(lay.lab_state, specs)
        took = self.spec.start(timeout=timeout)
        if not wait_for(self.ping, timeout):
            raise LabError(f"dockerd not answering:\n{log_tail(lay.log)}")
        return took

    def stop(self) -> None:
        self.spec.stop(grace=15.0)

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        env = clean_env({"HOME": str(self.layout.home)})
        return subprocess.run(
            [DOCKER_CLI, "-H", f"unix://{self.layout.socket}", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ping(self) -> bool:
        probe = self.cli("version", "--format", "{{json .Server.Version}}", timeout=10)
        return probe.returncode == 0

    def version(self) -> str:
        out = self.cli("version", "--format", "{{json .Server.Version}}").stdout
        return str(json.loads(out)) if out.strip() else ""

    def pull(self, image: str) -> PullOutcome:
        result = self.cli("pull", image)
        return PullOutcome(image, result.returncode == 0, result.stdout + result.stderr)

    def remove_image(self, image: str) -> None:
        self.cli("image", "rm", "--force", image)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.layout.log, lines)


@contextlib.contextmanager
def run_dockerd(lay: DockerdLayout, timeout: float = 60.0) -> Iterator[Dockerd]:
    """A started dockerd, stopped by its current PID on exit."""
    daemon = Dockerd(lay)
    try:
        daemon.start(timeout=timeout)
        yield daemon
    finally:
        daemon.stop()
