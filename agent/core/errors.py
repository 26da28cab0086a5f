"""Every failure the agent reports, with the CLI exit code that goes with it.

One class per kind of failure an operator acts on differently; `kind` narrows it down
(e.g. FetchError kind "timeout" vs "not-tls") so messages, Events and metrics can name it
without parsing text.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base: a clear, operator-facing message; `kind` is a short stable token."""

    exit_code = 1

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def message(self) -> str:
        return str(self)


class InputError(AgentError):
    """Bad arguments: host names, ports, PEM files, pins, flags."""

    exit_code = 2


class FetchError(AgentError):
    """The chain could not be fetched. kinds: unreachable, timeout, not-tls, tls-alert,
    empty-chain, too-large, proxy, resolve."""

    exit_code = 3


class TrustError(AgentError):
    """The chain must not be trusted. kinds: no-san, hostname-mismatch, expired,
    not-yet-valid, not-a-ca, chain-does-not-link, leaf-not-self-signed, pin-mismatch,
    malformed, invalid (refused by the verifier for another reason: EKU, weak key, ...)."""

    exit_code = 4


class PolicyError(AgentError):
    """policy.yaml is broken (kind "invalid") or forbids the registry (kind "not-allowed")."""

    exit_code = 5


class StoreError(AgentError):
    """Trust cannot be placed. kinds: unsupported-os, conflict, symlink, unavailable,
    io, not-a-ca (the OS store would drop the anchor)."""

    exit_code = 6


class ApplyError(AgentError):
    """A step failed after writing began; everything written was rolled back.
    kinds: refresh-failed, verify-failed, write-failed."""

    exit_code = 7


class RuntimeRestartError(AgentError):
    """The container runtime was not restarted. kinds: refused (live-restore off),
    failed, not-ready, unknown-runtime, lock-timeout."""

    exit_code = 8


class LedgerError(AgentError):
    """The ledger is unreadable or names something we cannot undo. kinds: corrupt,
    not-found."""

    exit_code = 9


def describe_failure(exc: BaseException) -> str:
    """One line for an operator: our errors say what they mean; anything else is named by
    its type, so "ModuleNotFoundError: No module named 'grpc'" is what the Event says."""
    if isinstance(exc, AgentError):
        return str(exc)
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
