"""The README's first command: a real x509 pull failure, fixed by the agent, on this machine.

A private CA signs a TLS registry (Debian's docker-registry) on 127.0.0.1 as
`registry.test`; a real containerd laid out like a node's asks for an image through its CRI,
as kubelet does, and fails with "x509: certificate signed by unknown authority". Then
`ca-trust-agent` fixes it twice — registry scope (no restart) and system scope (the real
update-ca-certificates and a containerd restart through the agent's own runtime layer) —
and undoes it, printing a timeline.

Everything happens in a private mount namespace over copies of the trust directories,
/etc/hosts, /etc/containerd and /run/containerd, so the machine is left as it was.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab.isolation.sandbox import (
    in_private_mount_namespace,
    isolate_node_paths,
    reexec_in_private_mount_namespace,
)
from lab.procs import become_subreaper, free_port
from lab.registry.distribution import run_registry
from lab.registry.push import push_tiny_image
from lab.runtimes.containerd import Containerd, node_layout, run_containerd
from lab.tls.pki import make_pki

REPO = Path(__file__).resolve().parent.parent
NAME = "registry.test"


@dataclass
class Timeline:
    start: float = field(default_factory=time.monotonic)
    rows: list[tuple[float, str, str]] = field(default_factory=list)

    def step(self, what: str, outcome: str) -> None:
        at = time.monotonic() - self.start
        self.rows.append((at, what, outcome))
        bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
        print(f"\n{bold}[{at:6.2f}s] {what}{plain} -> {outcome}", flush=True)

    def table(self) -> str:
        width = max(len(w) for _, w, _ in self.rows)
        lines = ["", "Timeline", "--------"]
        lines += [f"{at:7.2f}s  {what.ljust(width)}  {out}" for at, what, out in self.rows]
        return "\n".join(lines)


def _agent(
    args: Sequence[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "agent", *args]
    print("$ ca-trust-agent " + shlex.join(args), flush=True)
    out = subprocess.run(
        argv,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    sys.stdout.write(_indent(out.stdout))
    if out.stderr.strip():
        sys.stdout.write(_indent(out.stderr))
    return out


def _indent(text: str) -> str:
    return "".join("    " + line + "\n" for line in text.splitlines())


def _pull(daemon: Containerd, image: str, timeline: Timeline, expect_ok: bool) -> bool:
    with daemon.cri() as cri:
        t0 = time.monotonic()
        result = cri.pull(image)
        took = time.monotonic() - t0
        if result.ok:
            cri.remove(image)  # the next pull must reach the registry again
    verdict = "pulled" if result.ok else "FAILED: " + _short(result.error or "")
    timeline.step(
        f"CRI PullImage {image} (containerd pid {daemon.pid})", f"{verdict} ({took * 1000:.0f} ms)"
    )
    if result.ok != expect_ok:
        raise SystemExit(f"lab: expected the pull to {'succeed' if expect_ok else 'fail'}")
    return result.ok


def _short(error: str) -> str:
    idx = error.find("x509:")
    return error[idx:] if idx >= 0 else error[-160:]


def run_demo() -> int:
    timeline = Timeline()
    become_subreaper()
    with tempfile.TemporaryDirectory(prefix="ca-trust-agent-lab-") as tmp:
        base = Path(tmp)
        with isolate_node_paths(base / "sandbox", {NAME: "127.0.0.1"}) as box:
            pki = make_pki(base / "pki", names=(NAME,), ips=("127.0.0.1",))
            port = free_port()
            with run_registry(
                base / "registry",
                chain=pki.paths.chain,
                key=pki.paths.key,
                address="127.0.0.1",
                port=port,
            ) as _reg:
                image = push_tiny_image(
                    NAME, port, pki.paths.root, connect_to="127.0.0.1"
                ).reference
                timeline.step(
                    f"registry {NAME}:{port} up (leaf + intermediate, private root CA)",
                    f"pushed {image}",
                )
                with run_containerd(node_layout(base / "containerd")) as containerd:
                    timeline.step(
                        "containerd 1.6 up, node layout (/etc/containerd/config.toml, "
                        "config_path = /etc/containerd/certs.d)",
                        f"pid {containerd.pid}",
                    )
                    _scenarios(containerd, image, f"{NAME}:{port}", timeline)
            leftovers = box.changed_real_paths()
        print(timeline.table())
        print(
            "\nThe machine's own trust store, /etc/hosts and /etc/containerd: "
            + ("unchanged." if not leftovers else f"CHANGED: {leftovers}")
        )
    return 0


def _scenarios(containerd: Containerd, image: str, target: str, timeline: Timeline) -> None:
    restart_env = {"CA_TRUST_AGENT_RESTART_COMMAND": shlex.join(containerd.restart_command)}
    _pull(containerd, image, timeline, expect_ok=False)

    print("\n--- what the registry presents")
    _agent(["fetch", target])
    timeline.step("ca-trust-agent fetch", "anchor = the intermediate (the root was not sent)")

    print("\n--- registry scope: certs.d/<registry>/, no restart; containerd itself judges it")
    out = _agent(["install", target, "--scope", "registry", "--image", image])
    timeline.step("ca-trust-agent install --scope registry", f"exit {out.returncode}")
    pid = containerd.pid
    _pull(containerd, image, timeline, expect_ok=True)
    timeline.step("containerd restarted?", "no" if containerd.pid == pid else "YES (unexpected)")
    _agent(["list"])
    out = _agent(["remove", target])
    timeline.step("ca-trust-agent remove", f"exit {out.returncode}")
    _pull(containerd, image, timeline, expect_ok=False)

    print("\n--- system scope: the OS store + update-ca-certificates + containerd restart")
    out = _agent(["install", target, "--scope", "system", "--image", image], env=restart_env)
    timeline.step("ca-trust-agent install --scope system", f"exit {out.returncode}")
    new_pid = containerd.pid
    timeline.step("containerd restarted by the agent's runtime layer", f"pid {pid} -> {new_pid}")
    _pull(containerd, image, timeline, expect_ok=True)
    out = _agent(["remove", target], env=restart_env)
    timeline.step("ca-trust-agent remove (refresh + restart)", f"exit {out.returncode}")
    _pull(containerd, image, timeline, expect_ok=False)


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m lab", description=__doc__.splitlines()[0]).parse_args(
        argv
    )
    if os.geteuid() != 0:
        print(
            "lab: run as root (it starts containerd and mounts over node paths privately)",
            file=sys.stderr,
        )
        return 2
    if not in_private_mount_namespace():
        reexec_in_private_mount_namespace(["-m", "lab", *(argv or sys.argv[1:])])
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "HTTPS_PROXY", "https_proxy"):
        os.environ.pop(name, None)  # a node has none of these
    return run_demo()
