"""The layers and the lazy imports: what a process loads is part of its contract.

The layer contract itself (core never imports node or cluster or any I/O module; node never
imports cluster; nothing imports the CLI; the agent never imports the lab; the lab's packages
are layers of their own and its fakes start no process) lives in `pyproject.toml` under
`[tool.importlinter]` and is checked by `lint-imports`, as kopf does with `.importlinter`.
The tests below guard what import-linter cannot see: which modules a *running* process
loads. `fetch` is timed against `openssl s_client`, and the idle daemon has a 56 MiB budget,
so neither may pull in what it does not use.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def loaded_after(imports: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules under `prefixes` that a fresh interpreter holds after `imports`."""
    code = (
        f"import json, sys; {imports}; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return list(json.loads(out.stdout))


def test_the_layer_contract_holds() -> None:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run(
        [lint, "--no-cache"], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_fetch_path_never_loads_kubernetes_or_the_engine() -> None:
    """`ca-trust-agent fetch` is timed against openssl s_client: what it imports is its cost."""
    loaded = loaded_after(
        "import agent.cli, agent.node.chain, agent.core.trust, agent.core.render, agent.logs",
        (
            "kubernetes",
            "agent.cluster",
            "agent.node.engine",
            "agent.node.stores",
            "prometheus_client",
            "yaml",
            "grpc",
        ),
    )
    assert loaded == []


def test_the_idle_daemon_never_loads_the_x509_stack_or_typed_models() -> None:
    """Everything `run` wires up before the first failure arrives: the controller, the
    engine, the watches, Events, Leases, metrics, the policy parser. cryptography and
    pyOpenSSL load with the first install; the typed API models never load."""
    loaded = loaded_after(
        "import agent.cli, agent.cluster.daemon, agent.cluster.controller, agent.node.engine,"
        " agent.core.policy, agent.metrics; "
        "from agent.core.policy import parse_policy; "
        "parse_policy('registries: [{host: registry.test}]')",
        (
            "cryptography",
            "OpenSSL",
            "kubernetes.client.models.",  # the package is loaded, no model module
            "kubernetes.client.api.core_v1_api",
            "grpc",
            "google.protobuf",
        ),
    )
    assert loaded == []


def test_no_module_in_the_agent_or_the_lab_is_over_400_lines() -> None:
    """A module that outgrows a screenful of concerns is split along them (ruff's size rules
    keep each function under 60 statements; this keeps each room small). The lab is held to
    it too, all but the CRI stubs protoc generates into lab/runtimes/_proto/."""
    generated = ROOT / "lab" / "runtimes" / "_proto"
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for top in ("agent", "lab")
        for path in (ROOT / top).rglob("*.py")
        if not path.is_relative_to(generated)
    }
    assert any(name.startswith("lab/") for name in sizes)
    assert {name: n for name, n in sizes.items() if n > 400} == {}


def test_no_module_of_the_agent_imports_itself_through_another() -> None:
    """No import circle anywhere in agent/ (type-checking imports included): a module that
    reaches itself again through what it imports is two concerns that should be one, or a
    value that belongs lower down. grimp is the graph import-linter builds its contracts on."""
    import grimp

    graph = grimp.build_graph("agent")
    circles = sorted(
        (module, imported)
        for module in graph.modules
        for imported in graph.find_modules_directly_imported_by(module)
        if graph.chain_exists(importer=imported, imported=module)
    )
    assert circles == [], f"import circles (module -> import that leads back): {circles}"


def test_no_object_reaches_into_another_object_s_private_state() -> None:
    """Collaborators receive what they use through their constructors and call each other's
    public methods: `other._field` is nowhere in agent/ (self, cls and super() aside, and the
    enum protocol's `_value_`)."""
    import ast

    reached = []
    for path in sorted((ROOT / "agent").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            if node.attr.startswith("__") or node.attr == "_value_":
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and ast.unparse(owner.func) == "super":
                continue
            reached.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert reached == []
