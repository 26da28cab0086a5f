"""The layering contract: the deciding modules never reach the node, the network or the API.

Like kopf's `.importlinter`: if a pure module imported `agent.host` or `subprocess`, its
unit tests would quietly start touching the machine, and a reader could no longer find every
side effect of the agent in `host`, `chain`, `runtime` and `kube/`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent"

PURE = (
    "hostport",
    "pins",
    "errors",
    "detect",
    "policy",
    "trust",
    "plan",
    "gate",
    "flights",
    "recycle",
    "render",
)
EFFECTS = (
    "agent.host",
    "agent.chain",
    "agent.runtime",
    "agent.kube",
    "agent.remediate",
    "agent.daemon",
    "agent.ledger",
    "agent.stores",
)
SYSTEM = ("socket", "subprocess", "ssl", "OpenSSL", "urllib", "http", "kubernetes", "shutil")


def imports(module: str) -> set[str]:
    """Modules imported at run time (imports under `if TYPE_CHECKING:` are types only)."""
    tree = ast.parse((AGENT / f"{module}.py").read_text())
    type_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for n in ast.walk(block)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_effects(module: str) -> None:
    allowed_type_only = {"plan": {"agent.ledger", "agent.stores"}}  # value types only
    bad = {
        name
        for name in imports(module)
        if (_under(name, EFFECTS) and name not in allowed_type_only.get(module, set()))
        or _under(name, SYSTEM)
    }
    assert not bad, f"agent/{module}.py imports {sorted(bad)}"


def test_the_fetch_path_never_loads_kubernetes_or_the_engine() -> None:
    """`ca-trust-agent fetch` is timed against openssl s_client: what it imports is its cost."""
    code = (
        "import sys, agent.cli, agent.chain, agent.trust, agent.render, agent.logs;"
        "print(sorted(m for m in sys.modules if m.startswith(('kubernetes', 'agent.kube',"
        " 'agent.remediate', 'agent.stores', 'prometheus_client', 'yaml'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
