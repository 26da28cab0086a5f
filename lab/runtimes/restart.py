"""The lab's runtime restart command: what systemd would do for a node's containerd.

The agent restarts a runtime through RestartMethod("command", argv with "{runtime}").
On a node that is `systemctl restart containerd`; in the lab (no systemd) it is

    <python> <repo>/lab/runtimes/restart.py --state <lab-state.json> {runtime}

which stops the daemon by the PID in its pidfile (SIGTERM, then SIGKILL), starts it again
with the same argv and a clean environment, detached from the caller's pipes, records the
new PID, and returns once the daemon's socket accepts connections. The state file is
written by the lab when it starts the daemon (`save_state`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script by path: make `lab` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lab.procs import (  # after the sys.path fix above
    LabError,
    clean_env,
    log_tail,
    pid_alive,
    read_pidfile,
    spawn_detached,
    stop_pid,
    unix_ready,
    wait_for,
)

SCRIPT = Path(__file__).resolve()


@dataclass(frozen=True)
class DaemonSpec:
    """How to (re)start one lab daemon."""

    name: str
    argv: tuple[str, ...]
    pidfile: str  # the lab's record of the current PID (not the daemon's own pidfile)
    log: str
    socket: str  # unix socket that accepts connections once the daemon is up

    @property
    def pid(self) -> int | None:
        return read_pidfile(self.pidfile)

    def start(self, timeout: float = 30.0) -> float:
        """Spawn detached, record the PID, wait for the socket. Seconds it took."""
        began = time.monotonic()
        proc = spawn_detached(self.argv, log=self.log, env=clean_env())
        Path(self.pidfile).write_text(f"{proc.pid}\n")
        up = unix_ready(self.socket)
        wait_for(lambda: proc.poll() is not None or up(), timeout)
        if proc.poll() is not None or not up():
            stop_pid(proc.pid)
            raise LabError(f"{self.name} did not start (log {self.log}):\n{log_tail(self.log)}")
        return time.monotonic() - began

    def stop(self, grace: float = 10.0) -> None:
        pid = self.pid
        if pid is not None:
            stop_pid(pid, grace=grace)

    def running(self) -> bool:
        pid = self.pid
        return pid is not None and pid_alive(pid)


def save_state(path: str | Path, specs: Mapping[str, DaemonSpec]) -> None:
    """Record restartable daemons by runtime name ("containerd", "docker")."""
    data = {runtime: asdict(spec) for runtime, spec in specs.items()}
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_state(path: str | Path) -> dict[str, DaemonSpec]:
    data = json.loads(Path(path).read_text())
    return {
        runtime: DaemonSpec(
            name=spec["name"],
            argv=tuple(spec["argv"]),
            pidfile=spec["pidfile"],
            log=spec["log"],
            socket=spec["socket"],
        )
        for runtime, spec in data.items()
    }


def command(state: str | Path) -> tuple[str, ...]:
    """The argv template to hand the agent (CA_TRUST_AGENT_RESTART_COMMAND, split)."""
    return (sys.executable, str(SCRIPT), "--state", str(state), "{runtime}")


def restart(spec: DaemonSpec, *, timeout: float = 30.0) -> float:
    began = time.monotonic()
    spec.stop()
    spec.start(timeout=timeout)
    return time.monotonic() - began


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab-restart", description=__doc__.splitlines()[0])
    parser.add_argument("--state", required=True, help="lab state JSON written by the lab")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("runtime")
    args = parser.parse_args(argv)
    specs = load_state(args.state)
    if args.runtime not in specs:
        print(f"lab-restart: no lab {args.runtime} in {args.state}", file=sys.stderr)
        return 2
    try:
        took = restart(specs[args.runtime], timeout=args.timeout)
    except LabError as err:
        print(f"lab-restart: {err}", file=sys.stderr)
        return 1
    print(f"restarted {args.runtime} pid {specs[args.runtime].pid} in {took:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
