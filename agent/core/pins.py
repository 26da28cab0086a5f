"""SHA-256 pins as the policy and the CLI write them. No cryptography import: the daemon
parses its policy at start and must not load the X.509 stack until it has work to do."""

from __future__ import annotations

from agent.core.errors import InputError

_HEX = frozenset("0123456789ABCDEF")


def normalize_pin(text: str) -> str:
    """`sha256:ab:CD...`, `SHA256:ABCD...` or bare hex -> `sha256:ABCD...` (64 hex digits)."""
    raw = text.strip()
    if raw.lower().startswith("sha256:"):
        raw = raw[len("sha256:") :]
    digits = raw.replace(":", "").upper()
    if len(digits) != 64 or not set(digits) <= _HEX:
        raise InputError(
            f"pin {text!r} is not a SHA-256 fingerprint (sha256: + 64 hex digits)",
            kind="bad-pin",
        )
    return "sha256:" + digits
