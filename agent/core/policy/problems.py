"""How problems in policy.yaml are collected and worded: every one at once, each as
`path: what is wrong`, unknown keys with a "did you mean" hint.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from agent.core.errors import PolicyError
from agent.core.policy.model import MAX_REPORTED_ERRORS


class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, problem: str) -> None:
        self.items.append(f"{path}: {problem}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_REPORTED_ERRORS]
        more = len(self.items) - len(shown)
        message = "; ".join(shown) + (f"; and {more} more" if more else "")
        raise PolicyError(message, kind="invalid")


def _unknown_keys(
    mapping: Mapping[Any, Any], known: tuple[str, ...], prefix: str, errors: _Errors
) -> None:
    lowered = {k.lower(): k for k in known}
    for key in mapping:
        if key in known:
            continue
        name = key if isinstance(key, str) and len(key) <= 80 else _shown(key)
        path = f"{prefix}{name}"
        guess = difflib.get_close_matches(str(key)[:80].lower(), list(lowered), n=1, cutoff=0.6)
        hint = f"; did you mean {lowered[guess[0]]!r}?" if guess else ""
        errors.add(path, f"unknown key (known: {', '.join(known)}){hint}")


def _shown(value: Any) -> str:
    """A value for an error message: short, one line, with its type when it is not a str."""
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
