"""The command line's words: every subcommand, flag, default and help text of `ca-trust-agent`.

Building the parser imports nothing heavy; `agent.cli` dispatches on what it parses.
"""

from __future__ import annotations

import argparse
import os

from agent import __version__
from agent.core.runtime_kinds import RUNTIMES
from agent.status import add_arguments as status_arguments

EXIT_CODES = """exit codes:
  0  success                         5  forbidden by policy / bad policy
  1  unexpected error                6  trust store: unsupported OS, conflict, symlink
  2  bad input                       7  apply failed, everything rolled back
  3  could not fetch the chain       8  container runtime not restarted
  4  chain must not be trusted       9  ledger unreadable
"""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--host-root",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="the node's root file system (default /; /host in the DaemonSet)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print data as JSON"
    )
    common.add_argument(
        "--log-level", default=argparse.SUPPRESS, choices=["debug", "info", "warning", "error"]
    )
    common.add_argument(
        "--log-json", action="store_true", default=argparse.SUPPRESS, help="log as JSON lines"
    )

    top = argparse.ArgumentParser(
        prog="ca-trust-agent",
        description="Fix image pulls failing with 'x509: certificate signed by unknown authority'.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    # what an operator checks first in a running pod (`kubectl exec ... -- ca-trust-agent
    # --version`); argparse prints it and exits 0 before the required COMMAND is asked for
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def network(p: argparse.ArgumentParser) -> None:
        p.add_argument("--sni", metavar="NAME", help="TLS server name (default: the host name)")
        p.add_argument(
            "--proxy",
            metavar="URL",
            help="HTTP CONNECT proxy (default: HTTPS_PROXY unless NO_PROXY matches)",
        )
        p.add_argument(
            "--timeout",
            type=float,
            default=10.0,
            metavar="SECONDS",
            help="overall deadline for connecting and the handshake (default 10)",
        )

    f = sub.add_parser(
        "fetch",
        parents=[common],
        help="show the certificate chain a server presents",
        description="Show the chain HOST presents, and which certificate would become "
        "the trust anchor. Exit 0 when it could be trusted, 4 when not.",
    )
    f.add_argument("target", metavar="HOST[:PORT]")
    f.add_argument("--pem", action="store_true", help="include each certificate's PEM")
    network(f)

    i = sub.add_parser(
        "install",
        parents=[common],
        help="trust the CA of HOST on this machine",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("target", metavar="HOST[:PORT]")
    i.add_argument(
        "--registry",
        metavar="HOST[:PORT]",
        help="image registry whose certs.d directory gets the CA, when it differs from "
        "HOST (an auth-token or CDN host)",
    )
    i.add_argument(
        "--scope",
        choices=["auto", "registry", "system"],
        default="auto",
        help="registry: certs.d for this registry only, no restart; system: OS trust "
        "store + runtime restart; auto (default): registry where the runtime supports it",
    )
    i.add_argument(
        "--ca-file", metavar="PEM", help="trust this CA instead of the one the server sent"
    )
    i.add_argument(
        "--pin",
        action="append",
        default=[],
        metavar="sha256:HEX",
        help="only trust an anchor with this fingerprint (repeatable)",
    )
    _restart_options(i)
    i.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    i.add_argument(
        "--image",
        metavar="REF",
        help="the image whose pull failed: after writing, the runtime pulls it through its "
        "CRI (containerd, CRI-O) or Engine API (docker) to prove it uses the new trust",
    )
    i.add_argument(
        "--verify",
        choices=["auto", "runtime", "tls"],
        default="auto",
        help="runtime: the runtime's own pull must get past TLS (needs --image); tls: a "
        "handshake trusting only the new CA; auto (default): runtime when --image is given "
        "and a runtime answers, else tls",
    )
    i.add_argument(
        "--hosts-toml",
        choices=["refuse", "append"],
        default="refuse",
        help="a containerd certs.d/<registry>/hosts.toml someone else manages: refuse "
        "(default: report the conflict, write nothing) or append our CA to its `ca` "
        "(remove restores the file byte for byte)",
    )
    network(i)

    sub.add_parser("list", parents=[common], help="what ca-trust-agent installed on this machine")

    r = sub.add_parser(
        "remove", parents=[common], help="undo exactly what the ledger says for HOST"
    )
    r.add_argument("target", metavar="HOST[:PORT]")
    _restart_options(r)
    r.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")

    status_arguments(sub.add_parser("status", help="registry -> anchor -> nodes, cluster-wide"))

    run = sub.add_parser("run", parents=[common], help="the DaemonSet loop")
    run.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG"),
        help="kubeconfig outside a cluster (default: in-cluster service account)",
    )
    run.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME"),
        help="this node (default: $NODE_NAME from the downward API)",
    )
    run.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE", "ca-trust-agent"),
        help="namespace of the policy ConfigMap and restart Leases",
    )
    run.add_argument(
        "--metrics-address",
        default="0.0.0.0:9402",
        metavar="HOST:PORT",
        help="serve /metrics /healthz /readyz here (default 0.0.0.0:9402)",
    )
    run.add_argument(
        "--reconcile-seconds",
        type=float,
        default=300.0,
        help="mean period of the drift/expiry reconcile (jittered)",
    )
    _restart_options(run, with_policy=False)
    return top


def _restart_options(p: argparse.ArgumentParser, *, with_policy: bool = True) -> None:
    if with_policy:
        p.add_argument(
            "--restart",
            choices=["auto", "never"],
            default="auto",
            help="restart the container runtime when system scope needs it (default auto)",
        )
        p.add_argument(
            "--allow-docker-restart",
            action="store_true",
            help="restart dockerd even without live-restore (stops running containers)",
        )
    p.add_argument(
        "--runtime",
        action="append",
        choices=list(RUNTIMES),
        help="container runtime(s) on this host (default: detected)",
    )
    p.add_argument(
        "--restart-command",
        metavar="CMD",
        help="restart runtimes with this command instead of systemctl; {runtime} is "
        "replaced (also $CA_TRUST_AGENT_RESTART_COMMAND)",
    )
    p.add_argument(
        "--runner",
        choices=["auto", "direct", "nsenter"],
        default="auto",
        help="how host commands run: nsenter into PID 1's namespaces, or directly "
        "(auto: nsenter when --host-root is not /)",
    )
