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
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent.cli_args import build_parser
from agent.core.errors import AgentError, InputError, describe_failure
from agent.status import run as status_run

if TYPE_CHECKING:
    from agent.node.engine import Engine
    from agent.node.wiring import EngineConfig

def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
            "status": status_run,
        }[args.command]
        return handler(args)
    except AgentError as exc:
        _error(args, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug or a broken install: one line, never a traceback
        logging.getLogger("agent.cli").debug("unexpected error", exc_info=exc)

        _error(args, AgentError(f"unexpected error: {describe_failure(exc)}", kind="internal"))
        return AgentError.exit_code


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


def _engine_config(args: argparse.Namespace) -> EngineConfig:
    from agent.node.wiring import EngineConfig

    return EngineConfig(
        host_root=args.host_root,
        runner=args.runner,
        runtimes=tuple(args.runtime) if args.runtime else None,
        restart_command=args.restart_command,
    )


def _engine(args: argparse.Namespace) -> Engine:
    from agent.node.wiring import build_engine  # the daemon's builder (agent.cluster.daemon)

    return build_engine(_engine_config(args))


def _install(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agent.core.options import InstallOptions
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
        options=InstallOptions(
            scope=args.scope,
            restart=args.restart,
            dry_run=args.dry_run,
            allow_docker_restart_without_live_restore=args.allow_docker_restart,
            hosts_toml=args.hosts_toml,
        ),
        pins=tuple(normalize_pin(x) for x in args.pin),
        ca_pem=ca_pem,
        source="ca-file" if ca_pem is not None else "fetched",
        sni=args.sni,
        proxy=args.proxy,
        timeout=args.timeout,
        image=args.image,
        verify=args.verify,
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
    from agent.cluster.config import DaemonConfig
    from agent.cluster.daemon import run

    return run(
        DaemonConfig(
            node_name=args.node_name or "",
            engine=_engine_config(args),
            namespace=args.namespace,
            kubeconfig=args.kubeconfig,
            metrics_address=args.metrics_address,
            reconcile_seconds=args.reconcile_seconds,
        )
    )
