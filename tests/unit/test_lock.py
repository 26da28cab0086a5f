"""The image's locks in requirements/ match what pyproject.toml declares.

The Dockerfile installs requirements/image.lock with `--require-hashes --no-deps`: nothing
is resolved at build time, so the lock alone decides what ships. These checks read the files
only (no index); `scripts/lock --check` in CI also re-resolves against the index. Whenever
one fails, the fix is the same: run `scripts/lock` and commit requirements/.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from lab.runtimes.imagebuild import IMAGE_LOCK, locked

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "requirements"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# How uv annotates a package that pyproject.toml asks for directly.
DECLARED_VIA = "ca-trust-agent (pyproject.toml)"
STALE = "requirements/{} does not match what it is locked from: run scripts/lock and commit it"


@dataclass(frozen=True)
class Pin:
    name: NormalizedName
    version: Version
    hashes: tuple[str, ...]
    via: tuple[str, ...]  # what needs it, as the lock's `# via` annotations say


def pins(lock: Path) -> dict[NormalizedName, Pin]:
    """Every `name==version` entry of a uv/pip-compile lock, with its hashes and `# via`."""
    entries = re.split(r"^(?=[A-Za-z0-9])", lock.read_text(), flags=re.MULTILINE)
    found: dict[NormalizedName, Pin] = {}
    for entry in entries:
        head = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", entry)
        if head is None:
            continue
        via_text = entry.split("# via", 1)[1] if "# via" in entry else ""
        via = [line.strip(" #") for line in via_text.splitlines()]
        name = canonicalize_name(head[1])
        found[name] = Pin(name, Version(head[2]), tuple(re.findall(r"--hash=(\S+)", entry)),
                          tuple(v for v in via if v))
    return found


def declared() -> list[Requirement]:
    return [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]


def test_every_declared_dependency_is_locked_at_a_version_in_its_range() -> None:
    lock = pins(IMAGE_LOCK)
    for req in declared():
        pin = lock.get(canonicalize_name(req.name))
        assert pin is not None, STALE.format(f"image.lock (no {req.name})")
        assert req.specifier.contains(pin.version, prereleases=True), STALE.format(
            f"image.lock ({req.name}=={pin.version} is outside {req.specifier})")


def test_the_lock_holds_nothing_the_declared_dependencies_do_not_need() -> None:
    lock = pins(IMAGE_LOCK)
    direct = {name for name, pin in lock.items() if DECLARED_VIA in pin.via}
    wanted = {canonicalize_name(r.name) for r in declared()}
    assert direct == wanted, STALE.format(
        f"image.lock (locked as declared: {sorted(direct ^ wanted)})")
    # Walk `# via` up from each pin: it must reach a declared dependency through pins only. A
    # package needed only through one the lock leaves out (aiohttp's helpers) must be left out
    # with it, or it would ship unused.
    needed = set(direct)
    while grown := {name for name, pin in lock.items() if name not in needed
                    and any(canonicalize_name(v) in needed for v in pin.via)}:
        needed |= grown
    unneeded = sorted(set(lock) - needed)
    assert unneeded == [], STALE.format(f"image.lock ({', '.join(unneeded)} not needed)")


def test_the_image_lock_and_the_shipped_set_agree() -> None:
    # lab.runtimes.imagebuild.locked (what the image test compares the venv and the SBOM with) reads
    # the same pins as this file's parser
    assert locked() == {name: str(pin.version) for name, pin in pins(IMAGE_LOCK).items()}
    assert "ca-trust-agent" not in locked()  # the agent is installed from its own wheel
    assert {"aiohttp", "kubernetes"} & set(locked()) == {"kubernetes"}


def test_every_lock_pins_exact_versions_with_sha256_hashes() -> None:
    for lock in sorted(REQUIREMENTS.glob("*.lock")):
        entries = pins(lock)
        assert entries, lock.name
        for pin in entries.values():
            assert pin.hashes, f"{lock.name}: {pin.name} has no hash"
            assert all(h.startswith("sha256:") for h in pin.hashes), pin.name
        # no line a pip install would treat as a requirement without being a pin
        loose = [line for line in lock.read_text().splitlines()
                 if line and not line.startswith((" ", "#")) and "==" not in line]
        assert loose == [], f"{lock.name}: {loose}"


def test_the_build_backend_lock_follows_pyproject_build_system() -> None:
    build_in = [line for line in (REQUIREMENTS / "build.in").read_text().splitlines()
                if line and not line.startswith("#")]
    requires = PYPROJECT["build-system"]["requires"]
    assert build_in == requires, "requirements/build.in must repeat [build-system].requires"
    lock = pins(REQUIREMENTS / "build.lock")
    for req in map(Requirement, requires):
        pin = lock.get(canonicalize_name(req.name))
        assert pin is not None and pin.version in req.specifier, STALE.format("build.lock")


def test_the_sbom_generator_lock_follows_sbom_in() -> None:
    wanted = [Requirement(line) for line in (REQUIREMENTS / "sbom.in").read_text().splitlines()
              if line and not line.startswith("#")]
    lock = pins(REQUIREMENTS / "sbom.lock")
    for req in wanted:
        pin = lock.get(canonicalize_name(req.name))
        assert pin is not None and pin.version in req.specifier, STALE.format("sbom.lock")
