"""docs/events.md lists every Event reason the agent can emit, with the type it is emitted as,
and nothing else.

The reasons are found in the agent's code, not in a list kept beside the docs: every call
in agent/ that passes an Event type ("Normal" / "Warning", as a literal or a constant, also
`WARNING if failed else NORMAL`) followed by a reason; every value given to a field named
`event_reason` (the gate's verdicts, which the controller emits as they are); and every
string constant of a module named after reasons (where the reasons are meant to move, e.g.
agent/core/reasons.py). A reason given as a constant (`REASON`, `reasons.CA_TRUSTED`,
`Reason.CA_TRUSTED`) is resolved through the assignments in agent/. The external contract
(DESIGN.md's list) is checked too: the scan must find each of its reasons, so a refactor the
scan cannot follow fails here instead of letting reasons go unnoticed.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "agent"
EVENTS_DOC = ROOT / "docs" / "events.md"
README = ROOT / "README.md"
REASON_SHAPE = re.compile(r"[A-Z][A-Za-z]+")
TYPES = frozenset({"Normal", "Warning"})

# DESIGN.md, "Event reasons": the external contract, with the type of each.
CONTRACT = {
    "UntrustedRegistryDetected": "Warning",
    "RegistryNotAllowed": "Warning",
    "CATrusted": "Normal",
    "CATrustFailed": "Warning",
    "CATrustDryRun": "Normal",
    "ContainerRuntimeRestarted": "Normal",
    "ContainerRuntimeRestartDeferred": "Normal",
    "ContainerRuntimeRestartRefused": "Warning",
    "CARemoved": "Normal",
    "CAExpiringSoon": "Warning",
    "PolicyInvalid": "Warning",
    "PodRecycled": "Normal",
    "CATrustConflict": "Warning",
    "CATrustPending": "Normal",
    "CATrustPendingApproval": "Normal",
    "CARotated": "Normal",
    # issue 19: what a CA cannot fix, and a proxy's CA that does not match what was shown
    "RegistryCertificateInvalid": "Warning",
    "InterceptedChainRefused": "Warning",
}


def modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(AGENT.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def constants() -> dict[str, set[str]]:
    """NAME -> the strings assigned to it anywhere in agent/ (module or class level)."""
    found: dict[str, set[str]] = defaultdict(set)
    aliases: list[tuple[str, ast.expr]] = []
    for _, tree in modules():
        for node in ast.walk(tree):
            value = getattr(node, "value", None)
            if not isinstance(node, ast.Assign | ast.AnnAssign) or not _is_str(value):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    found[target.id].add(value.value)  # type: ignore[union-attr]
        for node in ast.walk(tree):  # enum rows: MEMBER = ("EventReason", TYPE, "when")
            row = _reason_row(node)
            if row is not None:
                found[row[0]].add(row[1])
        for node in ast.walk(tree):  # aliases: REASON = Reason.POD_RECYCLED
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute | ast.Name):
                aliases.extend((t.id, node.value) for t in node.targets if isinstance(t, ast.Name))
    for name, value in aliases:
        found[name] |= values_of(value, found)
    return found


def _reason_row(node: ast.AST) -> tuple[str, str, ast.expr] | None:
    """(member name, reason, type expression) of a row `MEMBER = ("Reason", TYPE, ...)`."""
    if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple)):
        return None
    elts = node.value.elts
    target = node.targets[0]
    if len(elts) < 2 or not _is_str(elts[0]) or not isinstance(target, ast.Name):
        return None
    return target.id, elts[0].value, elts[1]  # type: ignore[attr-defined]


def _is_str(node: object) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def values_of(node: ast.expr, names: dict[str, set[str]]) -> set[str]:
    """The strings an argument can be: a literal, a constant (`X`, `mod.X`, `Enum.X`), or
    either branch of `a if c else b`. Anything else (a variable) is not statically known."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Name):
        return set(names.get(node.id, ()))
    if isinstance(node, ast.Attribute):
        return set(names.get(node.attr, ()))
    if isinstance(node, ast.IfExp):
        return values_of(node.body, names) | values_of(node.orelse, names)
    return set()


@cache
def reasons_in_code() -> dict[str, set[str]]:
    """reason -> the Event types the code emits it as (empty: decided elsewhere)."""
    names = constants()
    found: dict[str, set[str]] = defaultdict(set)
    for path, tree in modules():
        if "reason" in path.stem:  # a module of reasons: each string constant is one
            for node in tree.body:
                if isinstance(node, ast.Assign) and _is_str(node.value):
                    found[node.value.value]  # type: ignore[attr-defined]
            for node in ast.walk(tree):  # ... and each row of a reasons enum, with its type
                row = _reason_row(node)
                if row is not None:
                    found[row[1]] |= values_of(row[2], names) & TYPES
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            for first, second in zip(call.args, call.args[1:], strict=False):
                types = values_of(first, names) & TYPES
                if types:  # recorder.node(name, TYPE, REASON, message) and its wrappers
                    for reason in values_of(second, names):
                        found[reason] |= types
            for keyword in call.keywords:
                if keyword.arg == "event_reason":
                    for reason in values_of(keyword.value, names):
                        found[reason]
            if _names(call.func) == "Verdict" and len(call.args) > 1:
                # core.gate.Verdict(action, event_reason, message, ...)
                for reason in values_of(call.args[1], names):
                    found[reason]
    return {r: t for r, t in found.items() if REASON_SHAPE.fullmatch(r) and r not in TYPES}


def _names(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def documented() -> dict[str, str]:
    """reason -> the type cell of docs/events.md's table rows."""
    rows = {}
    for line in EVENTS_DOC.read_text().splitlines():
        match = re.match(r"\|\s*`([A-Za-z]+)`\s*\|\s*([^|]*)\|", line)
        if match and REASON_SHAPE.fullmatch(match.group(1)):
            rows[match.group(1)] = match.group(2).strip()
    return rows


def test_the_scan_finds_every_reason_of_the_contract() -> None:
    missing = set(CONTRACT) - set(reasons_in_code())
    assert not missing, f"reasons of the contract the scan of agent/ no longer finds: {missing}"


def test_the_code_emits_no_reason_outside_the_contract() -> None:
    extra = set(reasons_in_code()) - set(CONTRACT)
    assert not extra, f"new Event reasons: add them to DESIGN.md's contract and here: {extra}"


def test_docs_events_lists_every_reason_and_no_other() -> None:
    known = set(reasons_in_code()) | set(CONTRACT)
    rows = set(documented())
    assert known - rows == set(), "reasons missing from docs/events.md"
    assert rows - known == set(), "docs/events.md lists reasons the agent never emits"


def test_docs_events_gives_each_reason_the_type_it_is_emitted_as() -> None:
    rows = documented()
    for reason, types in reasons_in_code().items():
        wanted = types | {CONTRACT[reason]} if reason in CONTRACT else types
        for kind in wanted:
            assert kind in rows[reason], f"{reason}: emitted as {kind}, documented {rows[reason]}"
        for kind in TYPES - wanted:
            assert kind not in rows[reason], f"{reason}: documented as {kind}, never emitted so"


def test_the_readme_points_at_the_events_reference() -> None:
    assert "docs/events.md" in README.read_text()
