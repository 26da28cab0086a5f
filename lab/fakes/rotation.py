"""Drive a CA rotation the way the daemon does it, on a host-root tree, killable at any step.

A rotation is two engine installs made by `agent.cluster.firsttrust.FirstTrust`: first the
trust file holds the new anchor with the old one beside it (`InstallRequest.overlap`), and
once the new one is verified, the new one alone (`CARotated`). This module runs that very
code (a real `Controller` with its `FirstTrust`, on the pinned path: the pin is the
operator's approval, so the cluster's record is never consulted) against a real TLS server
presenting the new chain. Only the Kubernetes side is replaced, by an in-memory recorder:
the rotation writes nothing to the API.

    python -m lab.fakes.rotation ROOT HOST:PORT sha256:NEW [--scope system] [--kill-in-step N]

With `--kill-in-step N` and `CA_TRUST_AGENT_FAILPOINT` set, the failpoint is armed only for
the N-th real install (1: old + new, 2: new alone), so every step of both installs can be
hit; the process then dies by SIGKILL exactly there (agent/node/failpoints.py). On success it
prints the Events it emitted, as JSON (a case reproduced by hand).

The tests use `killed_rotation`: the same run in a forked child of the test process (the
agent's modules are imported once, so a case costs a fork instead of a 1.7 s interpreter
start), killed the same way. `node_engine` builds the same engine for the test process (the
setup install, and the run after the kill, which starts with the restarted daemon's ledger
recovery).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes.client import Configuration

from agent.cluster.client import KubeClient
from agent.cluster.controller import Controller
from agent.cluster.controller.interfaces import PodRef
from agent.cluster.firsttrust import FirstTrust
from agent.cluster.trustrecord import TrustRecord
from agent.core.detect import parse_pull_error
from agent.core.hostport import parse_hostport
from agent.core.remediation import InstallRequest, Result
from agent.node import failpoints
from agent.node.engine import Engine
from agent.node.host import HostFS
from lab.fakes.doubles import FakeRestarts, RecordingRunner, x509_message

NAMESPACE = "ca-trust-agent"
NODE = "rotation-node"


class ArmedEngine(Engine):
    """The engine, with the failpoint armed only from its `kill_in_step`-th real install on
    (dry runs, the first-trust preview, do not count)."""

    def __init__(self, *args: Any, kill_in_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kill_in_step = kill_in_step
        self.failpoint = os.environ.pop(failpoints.ENV, None)
        self.real_installs = 0

    def install(self, req: InstallRequest) -> Result:
        if not req.dry_run:
            self.real_installs += 1
            if self.failpoint is not None and self.real_installs == self.kill_in_step:
                os.environ[failpoints.ENV] = self.failpoint
        return super().install(req)


def node_engine(root: Path, *, kill_in_step: int | None = None) -> ArmedEngine:
    """A node's engine on `root` (see lab.fakes.hostroot): containerd for registry scope; for
    system scope a stand-in update-ca-certificates that rebuilds the root's bundle and a
    recording runtime restart. The verification is the engine's own TLS check, a real
    handshake with the registry trusting only the file written."""
    return ArmedEngine(
        HostFS(str(root)),
        RecordingRunner(root),
        runtimes=("containerd",),
        manager=FakeRestarts(),
        kill_in_step=kill_in_step,
    )


class Events:
    """The Recorder and Cluster a Controller reports to, kept in memory."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.messages: list[str] = []

    def node(self, node_name: str, type: str, reason: str, message: str) -> None:
        self.reasons.append(reason)
        self.messages.append(message)

    def message(self, reason: str) -> str:
        return self.messages[self.reasons.index(reason)]

    def pod(
        self, namespace: str, name: str, uid: str, type: str, reason: str, message: str
    ) -> None:
        pass  # the same Event goes to the Node: counted once

    def pod_events(self, namespace: str, uid: str) -> list[Mapping[str, Any]]:
        return []

    def set_trusted_registries(self, node_name: str, keys: Sequence[str]) -> None:
        pass


def rotate(engine: Engine, target: str, pin: str, *, scope: str = "registry") -> Events:
    """One failing pull on `target` handled by the daemon's first-trust step, with `pin`
    (the new anchor) approved: the rotation, or a plain install when the ledger holds no
    other anchor."""
    events = Events()
    config = Configuration()
    config.host = "http://127.0.0.1:9"  # never contacted: a pinned registry skips the record
    controller = Controller(NODE, engine, events, events)
    controller.first_trust = FirstTrust(
        TrustRecord(KubeClient(config), NAMESPACE),
        engine,
        node_name=NODE,
        requeue=controller.requeue,
        namespace=NAMESPACE,
    )
    endpoint = parse_hostport(target)
    image = f"{target}/lab/tiny:v1"
    failure = parse_pull_error(x509_message(image, target), image)
    assert failure is not None
    # As Remediation.handle_failure builds it, without the image: no runtime answers on a
    # host-root tree, so the engine's TLS check is the verification either way.
    req = InstallRequest(endpoint=endpoint, registry=endpoint, scope=scope, pins=(pin,))
    pod = PodRef("default", "web", "uid-web")
    controller.remediate(req, pod, failure, endpoint.key)  # through first trust, as the daemon
    return events


def killed_rotation(
    root: Path, target: str, pin: str, *, scope: str, step: int, failpoint: str
) -> int:
    """Run `rotate` in a forked child with `failpoint` armed for the `step`-th install;
    return what `subprocess` would: the exit code, or minus the signal that ended it."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's (pytest's) stack
        code = 1
        try:
            os.environ[failpoints.ENV] = failpoint
            rotate(node_engine(root, kill_in_step=step), target, pin, scope=scope)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.fakes.rotation", description=__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("target")
    parser.add_argument("pin")
    parser.add_argument("--scope", default="registry", choices=("registry", "system"))
    parser.add_argument("--kill-in-step", type=int, choices=(1, 2))
    args = parser.parse_args(argv)
    engine = node_engine(args.root, kill_in_step=args.kill_in_step)
    events = rotate(engine, args.target, args.pin, scope=args.scope)
    json.dump({"reasons": events.reasons, "messages": events.messages}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
