"""After an install: let the runtime that failed judge it, and undo what it did not accept.

The TLS handshake in the plan proves the CA matches the server. Whether the runtime reads
the file is only proven by the runtime pulling through it (agent.node.judge). When it still
fails TLS, the install is rolled back and, if the request left the scope to us, system scope
is tried next; otherwise CATrustFailed says what was found.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

from agent.core import plan as p
from agent.core.errors import AgentError, ApplyError, describe_failure
from agent.core.pull_verdict import INCONCLUSIVE, regarding
from agent.core.remediation import InstallRequest, Result
from agent.core.runtime_kinds import BY_NAME, RUNTIMES
from agent.node import failpoints
from agent.node.engine.apply import Applier, Undo
from agent.node.engine.context import EngineContext, log, timed
from agent.node.engine.remove import Remover
from agent.node.runtimes.registry import REGISTRY


class Verifier:
    """The runtime's verdict on a finished install: commit it, or undo it when refused.

    The "installed" record of an install the runtime will judge is held back by the
    installer (`Undo.pending`) and written here, by `commit`, only after the verdict; a
    verification that raises rolls the install back (fail closed)."""

    def __init__(self, context: EngineContext, applier: Applier, remover: Remover) -> None:
        self._ctx = context
        self._applier = applier
        self._remover = remover

    def expected(self, req: InstallRequest) -> bool:
        """Whether a runtime will be asked to pull after this request's writes."""
        if req.verify == "tls":
            return False
        if req.verify == "runtime":
            return True  # asked for: a runtime that cannot answer is reported, not skipped
        return bool(req.image) and bool(self._ctx.judge.answering(self._ctx.runtimes.names))

    def _verification_wanted(self, req: InstallRequest, result: Result) -> bool:
        return result.status in ("installed", "unchanged") and self.expected(req)

    def judged(
        self, req: InstallRequest, result: Result, undo: Undo | None
    ) -> tuple[Result, str | None]:
        """`result` with the verification that ran, and a reason to try system scope next
        when the runtime refused registry scope and the request allows that (the install
        is rolled back by then). Raises ApplyError when nothing else is allowed, and when
        the verification itself breaks: what was written is rolled back first."""
        base = "none" if result.analysis is None else "tls"
        if not self._verification_wanted(req, result):
            self._commit(undo)
            return replace(result, verification=base if result.status == "installed" else ""), None
        assert req.image is not None
        try:
            failpoints.hit("verify:runtime")
            judge = self._ctx.judge
            with timed(result.timings, "runtime-verify"):
                verdict = judge.judge(
                    judge.answering(self._ctx.runtimes.names), req.image, req.timeout
                )
        except Exception as exc:  # a verifier that breaks must not leave unverified trust
            self._revert_unverified(req, result, undo)
            raise ApplyError(
                f"verifying {req.endpoint.key} through the container runtime failed "
                f"({describe_failure(exc)}); {_undone(result)}",
                kind="verify-failed",
            ) from exc
        verdict = regarding(verdict, req.endpoint)  # x509 on a CDN or token host is not ours
        if verdict.verified:
            self._commit(undo)
            return replace(result, verified=True, verification="runtime", verdict=verdict), None
        if verdict.kind == INCONCLUSIVE:
            log.warning("no runtime verdict, keeping the TLS check: %s", verdict.describe())
            self._commit(undo)
            return replace(result, verification=base, verdict=verdict), None
        self._revert(req, result, undo)
        found = self._findings(result)
        if req.scope == "auto" and result.scope == "registry" and req.restart == "auto":
            log.warning("%s; falling back to system scope", verdict.describe())
            return result, f"registry scope was not used by {verdict.runtime} ({found})"
        raise ApplyError(
            f"{verdict.describe()}: {verdict.runtime} did not use the CA written for "
            f"{result.endpoint.key} ({found}); everything written was rolled back",
            kind="runtime-rejected",
        )

    def _commit(self, undo: Undo | None) -> None:
        """The runtime accepted (or could not be asked): record the install as done."""
        if undo is not None and undo.pending is not None:
            self._ctx.ledger.put(undo.pending)

    def _revert_unverified(self, req: InstallRequest, result: Result, undo: Undo | None) -> None:
        """Undo this run's writes after a broken verification. An install that wrote
        nothing this time ("unchanged": verified when it was written) is left as it is."""
        if result.status != "installed":
            return
        try:
            self._revert(req, result, undo)
        except AgentError as exc:
            raise ApplyError(
                f"verifying {req.endpoint.key} failed and the rollback failed too ({exc}); "
                "the ledger keeps the install as unfinished and the next start undoes it",
                kind="verify-failed",
            ) from exc

    def _findings(self, result: Result) -> str:
        """What an operator needs to see why the runtime ignored the file."""
        files = ", ".join(a.path for a in result.actions if isinstance(a, p.WriteFile))
        found = [
            f"wrote {files}" if files else f"{result.scope} scope ({', '.join(result.stores)})"
        ]
        # the runtimes whose config decides where they read trust: the stores written, or
        # for system scope every runtime that could have been meant
        for name in RUNTIMES if result.scope == "system" else result.stores:
            source = REGISTRY[name].config_source(self._ctx.fs) if name in REGISTRY else None
            if source is not None:
                found.append(f"{BY_NAME[name].label} config: {source}")
        if result.scope_reason:
            found.append(result.scope_reason)
        return "; ".join(found)

    def _revert(self, req: InstallRequest, result: Result, undo: Undo | None) -> None:
        """Put the node back as it was before this install (restarting what the install
        restarted, so a runtime that cached the new pool drops it again)."""
        entry = self._ctx.entries().get(req.endpoint.key)
        if entry is None:
            return
        if result.status == "unchanged" or undo is None or undo.previous is None:
            self._remover.remove(
                req.endpoint,
                restart=req.restart,
                allow_docker_restart_without_live_restore=req.allow_docker_restart_without_live_restore,
            )
            return
        writes = [a for a in result.actions if isinstance(a, p.WriteFile | p.MakeDir)]
        self._applier.rollback(entry, writes, undo)
        for runtime in result.restarted:
            with contextlib.suppress(AgentError), self._ctx.gate(runtime):
                self._ctx.manager.restart(runtime)


def _undone(result: Result) -> str:
    if result.status == "installed":
        return "everything written was rolled back"
    return "nothing was written by this attempt, the earlier install is unchanged"
