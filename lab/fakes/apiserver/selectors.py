"""Field and label selectors, parsed and matched as the apiserver does (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lab.fakes.apiserver.kinds import JSON, ApiFailure, Kind


@dataclass(frozen=True)
class Selector:
    """A parsed field or label selector: all terms must hold."""

    terms: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (key, op, values)

    def matches(self, values: dict[str, str | None]) -> bool:
        for key, op, wanted in self.terms:
            have = values.get(key)
            if op == "=" and have != wanted[0]:
                return False
            if op == "!=" and have == wanted[0]:
                return False
            if op == "in" and have not in wanted:
                return False
            if op == "notin" and have in wanted:
                return False
            if op == "exists" and have is None:
                return False
            if op == "!exists" and have is not None:
                return False
        return True


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_field_selector(text: str, kind: Kind) -> Selector:
    terms = []
    for part in _split_top(text):
        m = re.fullmatch(r"([^=!]+)(==|=|!=)(.*)", part)
        if not m:
            raise ApiFailure(400, "BadRequest", f"invalid field selector: {part!r}")
        key, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        if key not in kind.fields:
            raise ApiFailure(400, "BadRequest", f'field label not supported: "{key}"')
        terms.append((key, "!=" if op == "!=" else "=", (value,)))
    return Selector(tuple(terms))


def parse_label_selector(text: str) -> Selector:
    terms = []
    for part in _split_top(text):
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\((.*)\)", part):
            values = tuple(v.strip() for v in m.group(3).split(","))
            terms.append((m.group(1), m.group(2), values))
        elif m := re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)", part):
            terms.append((m.group(1), "!=" if m.group(2) == "!=" else "=", (m.group(3),)))
        elif m := re.fullmatch(r"(!?)([\w./-]+)", part):
            terms.append((m.group(2), "!exists" if m.group(1) else "exists", ()))
        else:
            raise ApiFailure(400, "BadRequest", f"unable to parse requirement: {part!r}")
    return Selector(tuple(terms))


def field_values(obj: JSON, kind: Kind) -> dict[str, str | None]:
    """The field-selector view of an object: missing fields read as "" as on the server."""
    out: dict[str, str | None] = {}
    for label in kind.fields:
        path = "source.component" if label == "source" else label
        node: Any = obj
        for step in path.split("."):
            node = node.get(step) if isinstance(node, dict) else None
        if isinstance(node, bool):
            node = str(node).lower()
        out[label] = "" if node is None else str(node)
    return out
