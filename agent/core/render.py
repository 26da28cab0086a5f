"""Pure rendering of chains, results and ledger entries: human text and JSON-ready dicts.

Human output is for an operator at a terminal (one block per certificate, the anchor
marked, like `openssl s_client -showcerts` but readable); the dicts are the stable
`--json` schema for scripts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `fetch` renders chains only: the engine's modules stay unloaded
    from agent.core.errors import AgentError
    from agent.core.hostport import HostPort
    from agent.core.ledger_entry import LedgerEntry
    from agent.core.remediation import Result
    from agent.core.trust import Analysis, CertInfo


def _when(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def role(cert: CertInfo, index: int) -> str:
    if cert.self_signed and cert.is_ca:
        return "root"
    if index == 0:
        return "self-signed leaf" if cert.self_signed else "leaf"
    return "intermediate" if cert.is_ca else "non-CA certificate"


def cert_dict(cert: CertInfo, index: int | None, *, anchor: bool, pem: bool) -> dict[str, Any]:
    d: dict[str, Any] = {
        "subject": cert.subject,
        "issuer": cert.issuer,
        "sha256": cert.sha256,
        "serial": cert.serial,
        "not_before": _iso(cert.not_before),
        "not_after": _iso(cert.not_after),
        "is_ca": cert.is_ca,
        "self_signed": cert.self_signed,
        "san": [f"DNS:{n}" for n in cert.san_dns] + [f"IP:{a}" for a in cert.san_ip],
        "anchor": anchor,
    }
    if index is not None:
        d["index"] = index
        d["role"] = role(cert, index)
    if pem:
        d["pem"] = cert.pem.decode()
    return d


def chain_dict(
    target: HostPort,
    certs: Sequence[CertInfo],
    *,
    peer: str,
    tls_version: str,
    analysis: Analysis | None,
    error: AgentError | None,
    pem: bool,
) -> dict[str, Any]:
    anchor_index = analysis.anchor_index if analysis else None
    return {
        "target": target.key,
        "peer": peer,
        "tls_version": tls_version,
        "certificates": [
            cert_dict(c, i, anchor=(i == anchor_index), pem=pem) for i, c in enumerate(certs)
        ],
        "anchor": (
            {
                "index": analysis.anchor_index,
                "subject": analysis.anchor.subject,
                "sha256": analysis.anchor.sha256,
                "reason": analysis.reason,
            }
            if analysis
            else None
        ),
        "trustable": analysis is not None,
        "error": {"kind": error.kind, "message": str(error)} if error else None,
    }


def chain_text(
    target: HostPort,
    certs: Sequence[CertInfo],
    *,
    peer: str,
    tls_version: str,
    analysis: Analysis | None,
    error: AgentError | None,
    pem: bool,
    now: datetime,
) -> str:
    n = len(certs)
    lines = [
        f"Chain presented by {target.key} (connected to {peer}, {tls_version}): "
        f"{n} certificate{'s' if n != 1 else ''}",
        "",
    ]
    anchor_index = analysis.anchor_index if analysis else None
    for i, cert in enumerate(certs):
        mark = "   <== anchor" if i == anchor_index else ""
        lines.append(f"[{i}] {role(cert, i)}{mark}")
        days = (cert.not_after - now).days
        left = f"{days} days left" if days >= 0 else f"EXPIRED {-days} days ago"
        san = ", ".join([f"DNS:{d}" for d in cert.san_dns] + [f"IP:{a}" for a in cert.san_ip])
        lines += [
            f"    subject  {cert.subject}",
            f"    issuer   {cert.issuer}",
            f"    sha256   {cert.sha256}",
            f"    valid    {_when(cert.not_before)} -> {_when(cert.not_after)} ({left})",
            f"    CA       {'yes' if cert.is_ca else 'no'}"
            + (", self-signed" if cert.self_signed else ""),
        ]
        if san:
            lines.append(f"    SAN      {san}")
        if pem:
            lines += ["", cert.pem.decode().rstrip()]
        lines.append("")
    if analysis is not None:
        lines.append(
            f"Anchor: [{anchor_index}] {analysis.anchor.subject} ({analysis.anchor.sha256}) "
            f"- {analysis.reason}; the leaf verifies to it for {target.host}."
        )
    elif error is not None:
        lines.append(f"Would NOT trust this chain ({error.kind}): {error}")
    return "\n".join(lines).rstrip() + "\n"


def result_dict(result: Result) -> dict[str, Any]:
    from agent.core.plan import describe

    return {
        "endpoint": result.endpoint.key,
        "registry": result.registry.key,
        "status": result.status,
        "scope": result.scope,
        "stores": list(result.stores),
        "anchor": (
            cert_dict(result.anchor, None, anchor=True, pem=False) if result.anchor else None
        ),
        "anchor_reason": result.analysis.reason if result.analysis else None,
        "actions": [describe(a) for a in result.actions],
        "restarted": list(result.restarted),
        "restart_required": list(result.restart_required),
        "restart_error": (
            {"kind": result.restart_error.kind, "message": str(result.restart_error)}
            if result.restart_error
            else None
        ),
        "verified": result.verified,
        "verification": result.verification,
        "verdict": (
            {
                "kind": result.verdict.kind,
                "runtime": result.verdict.runtime,
                "image": result.verdict.image,
                "detail": result.verdict.detail,
                "seconds": round(result.verdict.seconds, 3),
            }
            if result.verdict
            else None
        ),
        "scope_reason": result.scope_reason or None,
        "next": result.next_step,
        "timings_ms": {k: round(v * 1000, 1) for k, v in sorted(result.timings.items())},
    }


def result_text(result: Result) -> str:
    from agent.core.plan import describe

    verb = {
        "installed": "Trusted",
        "unchanged": "Already trusted, nothing changed:",
        "dry-run": "Dry run, would trust",
        "removed": "Removed trust for",
        "absent": "Nothing to remove for",
    }[result.status]
    lines: list[str] = []
    if result.anchor is not None:
        lines.append(
            f"{verb} {result.anchor.subject} ({result.anchor.sha256}) for {result.endpoint.key}"
            f" in {result.scope} scope ({', '.join(result.stores)})"
        )
    else:
        lines.append(
            f"{verb} {result.endpoint.key}" + (f" ({result.scope} scope)" if result.scope else "")
        )
    if result.actions:
        lines.append("Plan:" if result.status == "dry-run" else "Steps:")
        lines += [f"  {i + 1}. {describe(a)}" for i, a in enumerate(result.actions)]
    if result.scope_reason:
        lines.append(f"Scope: {result.scope} because {result.scope_reason}")
    if result.verified_by:
        lines.append(f"Check: {result.verified_by}")
    if result.status in ("installed", "dry-run", "removed", "unchanged"):
        lines.append(f"Next: {result.next_step}")
    return "\n".join(lines) + "\n"


def entry_dict(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "endpoint": entry.endpoint,
        "registry": entry.registry,
        "state": entry.state,
        "scope": entry.scope,
        "stores": list(entry.stores),
        "files": list(entry.files),
        "dirs": list(entry.dirs),
        "anchor_subject": entry.anchor_subject,
        "sha256": entry.sha256,
        "not_after": entry.not_after,
        "installed_at": entry.installed_at,
        "restarted": list(entry.restarted),
        "source": entry.source,
    }


def entries_text(entries: Sequence[LedgerEntry]) -> str:
    if not entries:
        return "No CA installed by ca-trust-agent on this host.\n"
    rows = [("ENDPOINT", "SCOPE", "STATE", "NOT AFTER", "SHA-256", "SUBJECT")]
    for e in entries:
        rows.append(
            (
                e.endpoint,
                e.scope,
                e.state,
                e.not_after[:10],
                e.sha256[:23] + "...",
                e.anchor_subject,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    out = []
    for r in rows:
        out.append(
            "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        )
    return "\n".join(out) + "\n"
