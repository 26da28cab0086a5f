"""Restart and readiness against a REAL containerd started by the test.

containerd runs with a clean environment and everything (root, state, socket) in a temp dir,
as LAB.md's "Configuration that worked". The host root the agent sees is another temp tree
whose /etc/containerd/config.toml names the socket with [grpc].address, so the manager finds
it exactly as on a node. The restart goes through RestartMethod("command"), the way the lab
restarts a containerd that is not under systemd: a script kills the running containerd and
starts a new one detached. Every containerd started is killed by PID at teardown.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.core.errors import RuntimeRestartError
from agent.node.host import DirectRunner, HostFS
from agent.node.runtimes import RestartMethod, RuntimeManager, detect_runtimes

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("containerd") is None, reason="containerd not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="containerd needs root"),
]

CLEAN_PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"

RESTART_SCRIPT = """#!/bin/sh
# Restart containerd the way a node without systemd would: stop the running one (its PID is
# in the pid file), wait until it is gone, start a new one detached with a clean environment.
set -eu
[ "$1" = containerd ] || { echo "refusing to restart unexpected runtime '$1'" >&2; exit 2; }
old=$(cat {pidfile})
kill "$old"
# A killed child of the test stays a zombie until the test reaps it: gone enough.
while [ -e /proc/"$old" ] && ! grep -q zombie /proc/"$old"/status 2>/dev/null; do sleep 0.05; done
env -i {path} setsid containerd -c {config} >>{log} 2>&1 </dev/null &
echo $! > {pidfile}
"""


@dataclass
class Containerd:
    base: Path
    host: Path
    config: Path
    sock: Path
    pidfile: Path
    log: Path
    first: subprocess.Popen[bytes] | None = None
    pids: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return int(self.pidfile.read_text())


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    # When this process is a child subreaper (lab code may set that), the detached
    # containerd became our child: reap it rather than leave a zombie.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@pytest.fixture
def containerd() -> Iterator[Containerd]:
    # A short base path: the socket path must fit in sun_path (108 bytes).
    base = Path(tempfile.mkdtemp(prefix="ctr-", dir="/tmp"))
    state = base / "containerd"
    host = base / "host"
    (host / "etc/containerd").mkdir(parents=True)
    # The socket is created inside the host tree, where the node's view expects it.
    sock = host / "run/containerd/containerd.sock"
    config = base / "config.toml"
    config.write_text(
        f"""version = 2
root = "{state}/root"
state = "{state}/state"
[grpc]
  address = "{sock}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{state}/opt"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{base}/cni/bin"
  conf_dir = "{base}/cni/net.d"
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{base}/certs.d"
"""
    )
    # The node's view: the host root holds a config naming the socket by its host path.
    (host / "etc/containerd/config.toml").write_text(
        'version = 2\n[grpc]\n  address = "/run/containerd/containerd.sock"\n'
    )
    ctr = Containerd(
        base=base,
        host=host,
        config=config,
        sock=sock,
        pidfile=base / "containerd.pid",
        log=base / "containerd.log",
    )
    with ctr.log.open("ab") as log:
        ctr.first = subprocess.Popen(
            ["env", "-i", CLEAN_PATH, "containerd", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    ctr.pids.add(ctr.first.pid)
    ctr.pidfile.write_text(str(ctr.first.pid))
    try:
        yield ctr
    finally:
        if ctr.pidfile.exists():
            ctr.pids.add(ctr.pid)
        for pid in ctr.pids:
            _stop(pid)
        ctr.first.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def _manager(ctr: Containerd, method: RestartMethod | None = None) -> RuntimeManager:
    return RuntimeManager(HostFS(str(ctr.host)), DirectRunner(), method or RestartMethod("systemd"))


def _restart_script(ctr: Containerd) -> Path:
    script = ctr.base / "restart-runtime.sh"
    script.write_text(
        RESTART_SCRIPT.replace("{pidfile}", str(ctr.pidfile))
        .replace("{path}", CLEAN_PATH)
        .replace("{config}", str(ctr.config))
        .replace("{log}", str(ctr.log))
    )
    script.chmod(0o755)
    return script


def test_wait_ready_answers_when_real_containerd_serves_grpc(containerd: Containerd) -> None:
    manager = _manager(containerd)
    assert manager.socket("containerd") == "/run/containerd/containerd.sock"
    start = time.monotonic()
    manager.wait_ready("containerd", timeout=30)
    print(f"containerd start to gRPC-ready: {time.monotonic() - start:.2f}s")
    assert detect_runtimes(HostFS(str(containerd.host))) == ("containerd",)


def test_restart_through_a_command_replaces_the_process_and_waits_until_ready(
    containerd: Containerd,
) -> None:
    script = _restart_script(containerd)
    manager = _manager(containerd, RestartMethod("command", (str(script), "{runtime}")))
    manager.wait_ready("containerd", timeout=30)
    before = containerd.pid

    seconds = manager.restart("containerd", timeout=60)

    after = containerd.pid
    containerd.pids.add(after)
    print(f"containerd restart (stop + start) to gRPC-ready: {seconds:.2f}s")
    assert after != before
    assert not _alive(before)
    assert _alive(after)
    manager.wait_ready("containerd", timeout=5)  # the new one answers


def test_a_failing_restart_command_is_reported_with_its_stderr(containerd: Containerd) -> None:
    script = _restart_script(containerd)
    manager = _manager(containerd, RestartMethod("command", (str(script), "dockerd")))
    manager.wait_ready("containerd", timeout=30)
    before = containerd.pid
    with pytest.raises(RuntimeRestartError, match="unexpected runtime 'dockerd'") as err:
        manager.restart("containerd", timeout=30)
    assert err.value.kind == "failed"
    assert containerd.pid == before and _alive(before)  # nothing was touched


def test_a_containerd_that_never_comes_back_is_not_ready(containerd: Containerd) -> None:
    """A restart command that only stops the runtime: restart() reports "not-ready"."""
    stop_only = containerd.base / "stop-only.sh"
    stop_only.write_text(
        "#!/bin/sh\n"
        f"old=$(cat {containerd.pidfile}); kill $old\n"
        # Like `systemctl stop`, return only once it is gone: a dying containerd still answers.
        "while [ -e /proc/$old ] && ! grep -q zombie /proc/$old/status; do sleep 0.05; done\n"
    )
    stop_only.chmod(0o755)
    manager = _manager(containerd, RestartMethod("command", (str(stop_only),)))
    manager.wait_ready("containerd", timeout=30)
    with pytest.raises(RuntimeRestartError, match="did not answer") as err:
        manager.restart("containerd", timeout=3)
    assert err.value.kind == "not-ready"
