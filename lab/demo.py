"""The README's first command: a real x509 pull failure, fixed by the agent, on this machine.

A private CA signs a TLS registry (Debian's docker-registry) on 127.0.0.1 as
`registry.test`; a real containerd laid out like a node's asks for an image through its CRI,
as kubelet does, and fails with "x509: certificate signed by unknown authority". Then
`ca-trust-agent` fixes it twice — registry scope (no restart) and system scope (the real
update-ca-certificates and a containerd restart through the agent's own runtime layer) —
and undoes it, printing a timeline. Last, the corporate case: a containerd behind a
TLS-inspecting proxy (lab/tls/intercept.py) fails to pull `ghcr.io/lab/tiny:v1`, and the
agent's daemon, given the proxy's CA in its policy (`interception`), fixes it with no
restart and removes it again when the declaration goes.

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

from lab.fakes.apiserver import FakeApiServer
from lab.fakes.doubles import node, pod, policy, wait_until
from lab.isolation.nodens import HostRoot
from lab.isolation.sandbox import (
    in_private_mount_namespace,
    isolate_node_paths,
    reexec_in_private_mount_namespace,
)
from lab.procs import become_subreaper, free_port
from lab.registry.distribution import run_registry
from lab.registry.push import push_tiny_image
from lab.runtimes.containerd import Containerd, node_layout, run_containerd
from lab.runtimes.containerd2 import Containerd2
from lab.tls.intercept import Upstream, intercepting_proxy
from lab.tls.pki import PKI, make_pki

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


def _pull(
    daemon: Containerd | Containerd2, image: str, timeline: Timeline, expect_ok: bool
) -> bool:
    with daemon.cri() as cri:
        t0 = time.monotonic()
        result = cri.pull(image)
        took = time.monotonic() - t0
        if result.ok:
            cri.remove(image)  # the next pull must reach the registry again
    verdict = "pulled" if result.ok else "FAILED: " + _short(result.error or "")
    pid = daemon.pid if isinstance(daemon, Containerd) else _pid(daemon)
    timeline.step(
        f"CRI PullImage {image} (containerd pid {pid})", f"{verdict} ({took * 1000:.0f} ms)"
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
                _behind_a_proxy(base / "proxied", pki, port, timeline)
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


def _pid(daemon: Containerd2) -> str:
    return Path(daemon.spec.pidfile).read_text().strip()


PROXIED_IMAGE = "ghcr.io/lab/tiny:v1"


def _behind_a_proxy(base: Path, pki: PKI, port: int, timeline: Timeline) -> None:
    """containerd 1.6 with HTTPS_PROXY (a systemd drop-in) behind an intercepting proxy that
    answers ghcr.io from the lab registry; the agent's daemon against a fake API server."""
    print("\n--- behind a TLS-inspecting proxy: the proxy's CA declared in the policy")
    route = Upstream("127.0.0.1", port, NAME, pki.paths.root)
    with intercepting_proxy(base / "proxy", {"ghcr.io:443": route}) as proxy:
        root = HostRoot(base / "host")
        daemon = Containerd2(root, base / "daemon", "1.6.20", env={"HTTPS_PROXY": proxy.url})
        root.prepare()
        (root.base / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
        dropin = root.base / "etc/systemd/system/containerd.service.d/http-proxy.conf"
        dropin.parent.mkdir(parents=True)
        dropin.write_text(f'[Service]\nEnvironment="HTTPS_PROXY={proxy.url}"\n')
        table = '[plugins."io.containerd.grpc.v1.cri".registry]'
        daemon.write_config(
            f'{daemon.base_config()}{table}\n  config_path = "/etc/containerd/certs.d"\n'
        )
        daemon.start()
        try:
            timeline.step(
                f"containerd 1.6 with HTTPS_PROXY={proxy.url} (drop-in http-proxy.conf)",
                f"pid {_pid(daemon)}; the proxy re-signs with {proxy.ca.subject}",
            )
            _pull(daemon, PROXIED_IMAGE, timeline, expect_ok=False)
            _daemon_fixes_it(daemon, proxy.ca.pem.decode(), timeline)
        finally:
            daemon.stop()


def _daemon_fixes_it(daemon: Containerd2, proxy_ca: str, timeline: Timeline) -> None:
    from kubernetes.client import Configuration

    from agent.cluster.client import KubeClient
    from agent.cluster.daemon import Agent
    from agent.node.engine import Engine
    from agent.node.host import DirectRunner, HostFS

    with daemon.cri() as cri:
        failed = cri.pull(PROXIED_IMAGE)
    pem = "".join(f"    {line}\n" for line in proxy_ca.splitlines())
    declared = f"interception:\n  caPEM: |\n{pem}"
    print("policy.yaml:\n" + _indent(declared))
    with FakeApiServer() as api:
        api.put_object(node("lab-node"))
        api.put_object(policy(declared))
        config = Configuration()
        config.host = api.url
        agent = Agent(
            KubeClient(config), "lab-node", "ca-trust-agent",
            Engine(HostFS(str(daemon.node.base)), DirectRunner()), reconcile_seconds=3600,
        )  # fmt: skip
        agent.start()
        try:
            wait_until(lambda: agent.ready().ready, timeout=30)
            pid = _pid(daemon)
            waiting = {"reason": "ErrImagePull", "message": failed.error or ""}
            api.put_object(pod("web-1", "lab-node", PROXIED_IMAGE, waiting))
            trusted = _event(api, "CATrusted", "ghcr.io:443")
            timeline.step("agent (interception CA declared): CATrusted", trusted)
            _pull(daemon, PROXIED_IMAGE, timeline, expect_ok=True)
            timeline.step("containerd restarted?", "no" if _pid(daemon) == pid else "YES")
            api.put_object(policy("registries: []\n"))
            timeline.step("policy without interception: CARemoved", _event(api, "CARemoved", ""))
            _pull(daemon, PROXIED_IMAGE, timeline, expect_ok=False)
        finally:
            agent.stop()
            agent.join()


def _event(api: FakeApiServer, reason: str, about: str) -> str:
    def found() -> list[str]:
        return [
            str(e.get("message"))
            for e in api.objects("events")
            if e.get("reason") == reason and about in str(e.get("message"))
        ]

    return wait_until(found, timeout=60)[0]  # type: ignore[no-any-return]


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
