"""The operator's log: one structured line per decision and outcome of a remediation.

Events are rate limited and expire after an hour; log pipelines keep lines for weeks. So
every step an operator may ask about later (detected, allowed/denied, fetched, installed,
verified, restarted, removed, recycled, failed) is logged once, at INFO (WARNING when it
failed), with the same keys every time, so a query like `event="installed" and
registry="..."` finds them (agent/logs.py renders them as JSON fields or `key=value`):

    event     detected | allowed | denied | not-remediable | fetched | installed | verified
              | restarted | restart-failed | failed | removed | remove-failed | recycled
              | recycle-summary
    node      this node;  pod  namespace/name (when a pod is involved)
    registry  the image's registry (host:port);  endpoint  the failing host (host:port)
    sha256    the anchor's fingerprint;  subject  its subject
    scope     registry | system;  stores  where it went (containerd, docker, system, ...)
    result    what came of it (installed, unchanged, dry-run, failed, evicted, ...)
    duration  seconds, for outcomes
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.core.remediation import Result

# one logger name for the whole story: a pipeline filters on it (and on `event`)
log = logging.getLogger("agent.remediation")


def _pod(namespace: str | None, name: str | None) -> dict[str, str]:
    return {"pod": f"{namespace}/{name}"} if namespace and name else {}


def detected(node: str, namespace: str, name: str, image: str, endpoint: str,
             registry: str) -> None:
    log.info(
        "x509 pull failure detected: %s/%s pulling %s failed at %s",
        namespace, name, image, endpoint,
        extra={"event": "detected", "node": node, **_pod(namespace, name), "image": image,
               "endpoint": endpoint, "registry": registry},
    )


def decided(node: str, namespace: str, name: str, endpoint: str, registry: str, *,
            action: str, scope: str, message: str) -> None:
    """The gate's verdict: allowed (remediate), denied, or not remediable."""
    event = {"remediate": "allowed", "deny": "denied"}.get(action, "not-remediable")
    level = logging.WARNING if event == "not-remediable" else logging.INFO
    text = {"allowed": f"policy allows {endpoint} (scope {scope}); remediating",
            "denied": f"policy denies {endpoint}: {message}"}.get(event, message)
    log.log(level, text, extra={"event": event, "node": node, **_pod(namespace, name),
                                "endpoint": endpoint, "registry": registry, "scope": scope,
                                "result": event})


def outcome(node: str, result: Result, duration: float, pod: tuple[str, str] | None,
            source: str) -> None:
    """What an install came to: fetched, installed, verified, restarted (one line each)."""
    base: dict[str, Any] = {
        "node": node,
        **_pod(*(pod or (None, None))),
        "endpoint": result.endpoint.key,
        "registry": result.registry.key,
        "scope": result.scope,
        "stores": ",".join(result.stores),
    }
    anchor = result.anchor
    if anchor is not None:
        base |= {"sha256": anchor.sha256, "subject": anchor.subject}
        if source == "fetched":
            log.info("fetched the chain of %s: anchor %s (%s)", result.endpoint.key,
                     anchor.subject, anchor.sha256, extra={"event": "fetched", **base})
    timing = {"result": result.status, "duration": round(duration, 3)}
    # "unchanged" comes back on every reconcile for caPEM entries: not news at INFO
    level = logging.DEBUG if result.status == "unchanged" else logging.INFO
    log.log(level, "%s the CA for %s in %s scope (%s)", _verb(result.status),
            result.endpoint.key, result.scope, base["stores"],
            extra={"event": "installed", **base, **timing})
    if result.verified_by:
        log.info("verified %s: %s", result.endpoint.key, result.verified_by,
                 extra={"event": "verified", **base, "result": result.verification})
    for runtime in result.restarted:
        log.info("restarted %s for %s", runtime, result.endpoint.key,
                 extra={"event": "restarted", **base, "runtime": runtime, "result": "ok"})
    if result.restart_error is not None:
        log.warning("runtime not restarted for %s: %s", result.endpoint.key,
                    result.restart_error,
                    extra={"event": "restart-failed", **base,
                           "result": result.restart_error.kind})


def _verb(status: str) -> str:
    return {"installed": "installed", "unchanged": "already trusted, kept",
            "dry-run": "dry run: would install"}.get(status, status)


def failed(node: str, endpoint: str, registry: str, kind: str, error: str, duration: float,
           pod: tuple[str, str] | None) -> None:
    log.warning("could not trust %s (%s): %s", endpoint, kind, error,
                extra={"event": "failed", "node": node, **_pod(*(pod or (None, None))),
                       "endpoint": endpoint, "registry": registry, "result": kind,
                       "duration": round(duration, 3)})


def removed(node: str, endpoint: str, registry: str, sha256: str, subject: str, scope: str,
            reason: str, error: str | None = None) -> None:
    fields = {"node": node, "endpoint": endpoint, "registry": registry, "sha256": sha256,
              "subject": subject, "scope": scope, "reason": reason}
    if error is None:
        log.info("removed the CA for %s: %s", endpoint, reason,
                 extra={"event": "removed", **fields, "result": "removed"})
    else:
        log.warning("could not remove the CA for %s: %s", endpoint, error,
                    extra={"event": "remove-failed", **fields, "result": "failed"})


def recycled(node: str, namespace: str, name: str, endpoint: str, owner: str) -> None:
    log.info("evicted %s/%s so %s recreates it and pulls from %s at once", namespace, name,
             owner, endpoint,
             extra={"event": "recycled", "node": node, **_pod(namespace, name),
                    "endpoint": endpoint, "owner": owner, "result": "evicted"})


def recycle_summary(node: str, endpoint: str, message: str, evicted: int) -> None:
    log.info("%s", message, extra={"event": "recycle-summary", "node": node,
                                   "endpoint": endpoint, "evicted": evicted,
                                   "result": "summary"})
