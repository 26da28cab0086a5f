"""Import everything a package can import -- lazy imports included -- in *this* interpreter.

    python -I importcheck.py PACKAGE_DIR [--verbose]
    python -I importcheck.py --installed NAME [--verbose]

The list is derived from the code, never kept by hand: every `.py` file under the package is
parsed, and every `import X` and `from X import Y` at any depth (module level, inside
functions, methods, `try` blocks) is collected, relative imports resolved; every module of the
package itself is added (except `__main__`, which would run the program). Each is then
imported here: `from X import Y` must give Y as an attribute or a submodule of X. Imports
under `if TYPE_CHECKING:` are skipped: they never run.

Why: the product's dependencies are declared in pyproject.toml, but a test suite runs from a
venv with the test extras, where a module the product imports lazily may be present only
because a test tool pulled it in (issue 17: grpc). Run this with the interpreter of a plain
`pip install` or of the image to see what a user really gets.

Output: one `FAIL module[:name] (file:line): error` line per failing import on stdout (with
--verbose also an `ok ...` line per import that works), a summary on stderr. Exit 0 when everything
imports, 1 when something does not, 2 when the package is not the one imported (another copy
shadows it) or the arguments are wrong.

Standard library only, no import of the lab or the tests: the script is copied into, or
mounted read-only into, the interpreter under test.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Wanted:
    """One import the package can make: `module`, or `name` from `module`."""

    module: str
    name: str | None
    where: str  # file:line of the first occurrence

    @property
    def label(self) -> str:
        return self.module if self.name is None else f"{self.module}:{self.name}"


def module_name(package_dir: Path, path: Path) -> str:
    parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, where: str) -> None:
        # the package relative imports start from: the module itself for an __init__
        self.package = module if is_package else module.rpartition(".")[0]
        self.where = where
        self.found: list[Wanted] = []
        self.skipped = 0

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.skipped += sum(isinstance(n, ast.Import | ast.ImportFrom)
                                for stmt in node.body for n in ast.walk(stmt))
            for stmt in node.orelse:
                self.visit(stmt)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append(Wanted(alias.name, None, f"{self.where}:{node.lineno}"))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            module = ".".join([*base, module] if module else base)
        where = f"{self.where}:{node.lineno}"
        for alias in node.names:
            name = None if alias.name == "*" else alias.name
            if module != "__future__":
                self.found.append(Wanted(module, name, where))


def collect(package_dir: Path) -> tuple[list[Wanted], int, int]:
    """(imports in first-seen order, deduplicated; files parsed; TYPE_CHECKING imports skipped)."""
    seen: dict[tuple[str, str | None], Wanted] = {}
    files = sorted(package_dir.rglob("*.py"))
    skipped = 0
    for path in files:
        module = module_name(package_dir, path)
        where = str(path.relative_to(package_dir.parent))
        wanted: list[Wanted] = []
        if not module.endswith(".__main__"):
            wanted.append(Wanted(module, None, where))
        collector = _Collector(module, path.name == "__init__.py", where)
        collector.visit(ast.parse(path.read_bytes(), filename=str(path)))
        skipped += collector.skipped
        for w in [*wanted, *collector.found]:
            seen.setdefault((w.module, w.name), w)
    return list(seen.values()), len(files), skipped


def check(wanted: Wanted) -> str | None:
    """None when the import works here, else the error as one line."""
    try:
        module = importlib.import_module(wanted.module)
    except BaseException as exc:  # a module may even raise SystemExit at import
        return f"{type(exc).__name__}: {exc}"
    if wanted.name is None or hasattr(module, wanted.name):
        return None
    submodule = f"{wanted.module}.{wanted.name}"
    try:
        importlib.import_module(submodule)
    except ModuleNotFoundError as exc:
        if exc.name == submodule:
            return f"ImportError: cannot import name {wanted.name!r} from {wanted.module!r}"
        return f"{type(exc).__name__}: {exc}"
    except BaseException as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _package_dir(argv: list[str]) -> Path:
    if argv[:1] == ["--installed"] and len(argv) == 2:
        spec = importlib.util.find_spec(argv[1])
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"importcheck: no package {argv[1]!r} in {sys.executable}")
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    if len(argv) == 1 and Path(argv[0]).is_dir():
        return Path(argv[0]).resolve()
    raise SystemExit(__doc__.split("\n\n")[1] if __doc__ else "usage: PACKAGE_DIR")


def main(argv: list[str]) -> int:
    verbose = "--verbose" in argv
    package_dir = _package_dir([a for a in argv if a != "--verbose"])
    # Never let this script's own directory shadow a module (python without -I puts it first).
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    if str(package_dir.parent) not in sys.path:
        sys.path.insert(0, str(package_dir.parent))
    root = importlib.import_module(package_dir.name)
    if Path(root.__file__ or "").resolve().parent != package_dir:
        print(f"importcheck: {package_dir.name} imports from {root.__file__}, not {package_dir}",
              file=sys.stderr)
        return 2
    wanted, files, skipped = collect(package_dir)
    failed = 0
    for w in wanted:
        error = check(w)
        if error is not None:
            failed += 1
            print(f"FAIL {w.label} ({w.where}): {error}", flush=True)
        elif verbose:
            print(f"ok {w.label}", flush=True)
    print(f"importcheck: {len(wanted)} imports from {files} files of {package_dir} "
          f"({skipped} under TYPE_CHECKING skipped): {failed} failed, "
          f"python {sys.version.split()[0]} at {sys.executable}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
