"""Command line: `fetch`, `install`, `list`, `remove` on this machine; `run` for the DaemonSet.

Imports are lazy on purpose: `fetch` is timed against `openssl s_client`, and loading the
Kubernetes client (or even the stores) for it would cost more than the TLS handshake.

Exit codes: 0 success; 1 unexpected error; 2 bad input; 3 fetch failed; 4 chain not
trustable; 5 policy; 6 store (unsupported OS, conflict, symlink); 7 apply failed and was
rolled back; 8 container runtime not restarted; 9 ledger problem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.core.errors import AgentError, InputError

if TYPE_CHECKING:
    from agent.node.engine import Engine

EXIT_CODES = """exit codes:
  0  success                         5  forbidden by policy / bad policy
  1  unexpected error                6  trust store: unsupported OS, conflict, symlink
  2  bad input                       7  apply failed, everything rolled back
  3  could not fetch the chain       8  container runtime not restarted
  4  chain must not be trusted       9  ledger unreadable
"""


def _parser() -> argparse.ArgumentParser:
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

    st = sub.add_parser(
        "status", help="cluster-wide: registry -> anchor -> nodes (exit 1 on a conflict)"
    )
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    st.add_argument("--kubeconfig", default=None, help="default: KUBECONFIG or in-cluster")
    st.add_argument("-n", "--namespace", default="ca-trust-agent")

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
        choices=["containerd", "docker", "crio"],
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


def _status(args: argparse.Namespace) -> int:
    from agent.status import run as status  # the API client loads only for this command

    return status(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.host_root = getattr(args, "host_root", "/")
    args.json = getattr(args, "json", False)
    from agent.logs import setup_logging

    setup_logging(
        getattr(args, "log_level", "warning" if args.command != "run" else "info"),
        json=getattr(args, "log_json", False),
    )
    try:
        handler = {
            "fetch": _fetch,
            "install": _install,
            "list": _list,
            "remove": _remove,
            "run": _run,
            "status": _status,
        }[args.command]
        return handler(args)
    except AgentError as exc:
        _error(args, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _error(args: argparse.Namespace, exc: AgentError) -> None:
    if args.json:
        print(
            json.dumps(
                {
                    "error": {
                        "type": type(exc).__name__,
                        "kind": exc.kind,
                        "message": str(exc),
                        "exit_code": exc.exit_code,
                    }
                },
                indent=2,
            )
        )
    else:
        print(f"ca-trust-agent: {exc}", file=sys.stderr)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        sys.stdout.write(text)


def _target(text: str) -> Any:
    from agent.core.hostport import parse_hostport

    return parse_hostport(text)


def _fetch(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from agent.core.render import chain_dict, chain_text
    from agent.core.trust import analyze
    from agent.node.chain import UNSET, fetch_chain

    target = _target(args.target)
    got = fetch_chain(
        target,
        sni=args.sni if args.sni is not None else UNSET,
        proxy=args.proxy if args.proxy is not None else UNSET,
        timeout=args.timeout,
    )
    now = datetime.now(UTC)
    analysis = None
    error: AgentError | None = None
    try:
        analysis = analyze(got.certs, target, now=now)
    except AgentError as exc:
        error = exc
    kw: dict[str, Any] = dict(
        peer=got.peer, tls_version=got.tls_version, analysis=analysis, error=error, pem=args.pem
    )
    _emit(args, chain_dict(target, got.certs, **kw), chain_text(target, got.certs, now=now, **kw))
    return 0 if error is None else error.exit_code


def _engine(args: argparse.Namespace) -> Engine:
    import shlex

    from agent.node.engine import Engine
    from agent.node.host import DirectRunner, HostFS, NsenterRunner
    from agent.node.runtimes import RestartMethod, restart_method_from_env

    fs = HostFS(args.host_root)
    use_nsenter = args.runner == "nsenter" or (
        args.runner == "auto" and os.path.realpath(args.host_root) != "/"
    )
    runner = NsenterRunner() if use_nsenter else DirectRunner()
    if args.restart_command:
        method = RestartMethod("command", tuple(shlex.split(args.restart_command)))
    else:
        method = restart_method_from_env()
    return Engine(fs, runner, runtimes=args.runtime, restart_method=method)


def _install(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agent.core.pins import normalize_pin
    from agent.core.render import result_dict, result_text
    from agent.node.engine import InstallRequest

    ca_pem = None
    if args.ca_file:
        try:
            ca_pem = Path(args.ca_file).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read --ca-file {args.ca_file}: {exc.strerror}") from exc
    req = InstallRequest(
        endpoint=_target(args.target),
        registry=_target(args.registry) if args.registry else None,
        scope=args.scope,
        restart=args.restart,
        pins=tuple(normalize_pin(x) for x in args.pin),
        ca_pem=ca_pem,
        source="ca-file" if ca_pem is not None else "fetched",
        dry_run=args.dry_run,
        allow_docker_restart_without_live_restore=args.allow_docker_restart,
        sni=args.sni,
        proxy=args.proxy,
        timeout=args.timeout,
        image=args.image,
        verify=args.verify,
        hosts_toml=args.hosts_toml,
    )
    engine = _engine(args)
    result = engine.install(req)
    _emit(args, result_dict(result), result_text(result))
    return result.restart_error.exit_code if result.restart_error else 0


def _list(args: argparse.Namespace) -> int:
    from agent.core.render import entries_text, entry_dict
    from agent.node.host import HostFS
    from agent.node.ledger import Ledger

    entries = [e for _, e in sorted(Ledger(HostFS(args.host_root)).entries().items())]
    _emit(args, [entry_dict(e) for e in entries], entries_text(entries))
    return 0


def _remove(args: argparse.Namespace) -> int:
    from agent.core.render import result_dict, result_text

    engine = _engine(args)
    result = engine.remove(
        _target(args.target),
        restart=args.restart,
        dry_run=args.dry_run,
        allow_docker_restart_without_live_restore=args.allow_docker_restart,
    )
    _emit(args, result_dict(result), result_text(result))
    if result.status == "absent":
        return 0
    return result.restart_error.exit_code if result.restart_error else 0


def _run(args: argparse.Namespace) -> int:
    from agent.cluster.daemon import run

    return run(args)
