"""lab/importcheck.py, the check that every module a package can import imports.

It runs in the interpreter under test (a plain `pip install`, the image), so here it is run
the same way: a separate `python -I` on a package of the test's making. A check that found
nothing would pass for ever; these packages hold exactly the failures it must find.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from textwrap import dedent

from lab.procs import CLEAN_PATH

CHECKER = Path(__file__).resolve().parents[2] / "lab" / "importcheck.py"

LAZY = dedent(
    """\
    from __future__ import annotations

    from typing import TYPE_CHECKING

    import json

    if TYPE_CHECKING:
        import only_for_the_type_checker_xyz


    def later() -> None:
        import missing_dependency_xyz


    class Client:
        def connect(self) -> None:
            from . import sub
            from .sub import absent_name_xyz
            from json import loads
    """
)


def write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkgxyz"
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return package


def run_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # -I as the real runs do, unless the test sets the environment on purpose
        [sys.executable, *(["-I"] if env is None else []), str(CHECKER), *args],
        env={"PATH": CLEAN_PATH, **(env or {})},
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_a_missing_module_imported_lazily_and_a_missing_name_are_both_reported(
    tmp_path: Path,
) -> None:
    package = write_package(tmp_path, {
        "__init__.py": "",
        "lazy.py": LAZY,
        "sub/__init__.py": "from .. import lazy\n",
        # running __main__ would run the program: it is never imported
        "__main__.py": "raise SystemExit('__main__ must not run')\n",
    })
    done = run_check(str(package))
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        "FAIL missing_dependency_xyz (pkgxyz/lazy.py:12): "
        "ModuleNotFoundError: No module named 'missing_dependency_xyz'",
        "FAIL pkgxyz.sub:absent_name_xyz (pkgxyz/lazy.py:18): "
        "ImportError: cannot import name 'absent_name_xyz' from 'pkgxyz.sub'",
    ]
    assert "1 under TYPE_CHECKING skipped): 2 failed" in done.stderr


def test_a_package_whose_imports_all_work_passes_and_lists_them(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "__init__.py": "from .inner import value\n",
        "inner.py": "value = 1\n\ndef f():\n    import json.decoder\n",
    })
    done = run_check(str(package), "--verbose")
    assert (done.returncode, done.stderr.count("0 failed")) == (0, 1), done.stdout
    assert done.stdout.splitlines() == [
        "ok pkgxyz", "ok pkgxyz.inner:value", "ok pkgxyz.inner", "ok json.decoder",
    ]


def test_another_copy_of_the_package_earlier_on_the_path_is_refused(tmp_path: Path) -> None:
    ours = write_package(tmp_path / "ours", {"__init__.py": ""})
    shadow = write_package(tmp_path / "shadow", {"__init__.py": ""})
    # the shadow comes first on the path, ours is on it too (as a checkout's would be)
    done = run_check(str(ours), env={"PYTHONPATH": f"{shadow.parent}:{ours.parent}"})
    assert done.returncode == 2
    assert f"imports from {shadow / '__init__.py'}, not {ours}" in done.stderr
