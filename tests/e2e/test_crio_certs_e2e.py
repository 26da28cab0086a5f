"""CRI-O's placement judged by containers/image, the library CRI-O pulls with.

CRI-O itself is not packaged for Debian 12 (shared/LAB.md), but `skopeo` (1.9.3) and `podman`
(4.3.1) are, and they pull with the same containers/image, reading the same
`/etc/containers/certs.d/<host:port>/*.crt` and the same Go system roots. Each command runs
in a mount namespace of its own with a clean environment and `/etc/containers` bound from
the test's directory (a policy.json, an empty registries.conf, the certs.d under test), so
the machine's configuration is neither read nor changed.

The file the product writes is the product's: `RegistryStore("crio", ...)`'s placement for
the registry (its directory and `ca-trust-agent-*.crt` name). What this shows: that
containers/image honours that placement with no daemon to restart (each skopeo/podman run
is a new process, as each CRI-O pull is not: CRI-O re-reads certs.d per pull too, by the
same library code, but that is not run here).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.core.hostport import HostPort
from agent.node.runtimes.crio import CRIO_CERTS_DIR
from agent.node.stores.registry import RegistryStore
from lab.procs import clean_env
from tests.e2e.conftest import LabRegistry

pytestmark = [pytest.mark.e2e, pytest.mark.root]

X509 = "x509: certificate signed by unknown authority"
BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # what Go's SystemCertPool reads first on Debian


@dataclass(frozen=True)
class ContainersEtc:
    """A private /etc/containers for containers/image, and where the product writes in it."""

    etc: Path  # bound at /etc/containers
    work: Path

    def real(self, node_path: str) -> Path:
        assert node_path.startswith("/etc/containers/")
        return self.etc / node_path[len("/etc/containers/") :]

    def run(self, *argv: str, bundle: Path | None = None) -> subprocess.CompletedProcess[str]:
        """`argv` in a private mount namespace with this /etc/containers (and, if given, a
        system bundle of the test's) and a clean environment."""
        binds = [str(self.etc), "/etc/containers"]
        if bundle is not None:
            binds += [str(bundle), BUNDLE]
        script = (
            'while [ "$1" != "--" ]; do mount --bind "$1" "$2" || exit 97; shift 2; done; '
            'shift; exec "$@"'
        )
        home = self.work / "home"
        home.mkdir(exist_ok=True)
        (self.work / "tmp").mkdir(exist_ok=True)
        env = clean_env(
            {"HOME": str(home), "XDG_RUNTIME_DIR": str(home), "TMPDIR": str(self.work / "tmp")}
        )
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--",
             "sh", "-c", script, "sh", *binds, "--", *argv],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def containers_etc(tmp_path_factory: pytest.TempPathFactory) -> ContainersEtc:
    work = tmp_path_factory.mktemp("containers")
    etc = work / "etc-containers"
    (etc / "certs.d").mkdir(parents=True)
    (etc / "policy.json").write_text(
        json.dumps({"default": [{"type": "insecureAcceptAnything"}]}) + "\n"
    )
    (etc / "registries.conf").write_text("unqualified-search-registries = []\n")
    return ContainersEtc(etc, work)


@pytest.fixture
def placed(containers_etc: ContainersEtc, netns_registry: LabRegistry) -> Iterator[Path]:
    """The product's CRI-O placement for the registry, written; removed afterwards."""
    registry = HostPort(netns_registry.host, netns_registry.port)
    pem = netns_registry.pki.paths.root.read_bytes()
    placement = RegistryStore("crio", CRIO_CERTS_DIR).placement(registry, pem)
    file = containers_etc.real(placement.file)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(placement.content)
    try:
        yield file
    finally:
        shutil.rmtree(containers_etc.real(placement.directory), ignore_errors=True)


def skopeo_inspect(etc: ContainersEtc, image: str, bundle: Path | None = None) -> str:
    """ "ok" or skopeo's error."""
    done = etc.run("skopeo", "inspect", "--raw", f"docker://{image}", bundle=bundle)
    return "ok" if done.returncode == 0 else done.stderr.strip()


def test_skopeo_trusts_the_product_crio_placement_and_stops_when_it_is_removed(
    containers_etc: ContainersEtc, netns_registry: LabRegistry, placed: Path
) -> None:
    assert placed.name.startswith("ca-trust-agent-") and placed.suffix == ".crt"
    assert placed.parent.name == netns_registry.target  # certs.d/<host:port>/
    assert skopeo_inspect(containers_etc, netns_registry.image) == "ok"
    placed.unlink()
    error = skopeo_inspect(containers_etc, netns_registry.image)
    assert X509 in error, error


def test_without_any_placement_skopeo_fails_x509(
    containers_etc: ContainersEtc, netns_registry: LabRegistry
) -> None:
    error = skopeo_inspect(containers_etc, netns_registry.image)
    assert X509 in error, error


def test_podman_pulls_with_the_product_crio_placement(
    containers_etc: ContainersEtc, netns_registry: LabRegistry, placed: Path
) -> None:
    """A whole pull (blobs into storage of the test's own), not only the manifest."""
    storage = containers_etc.work / "storage"
    # podman refuses a runroot longer than 50 characters: a short directory of our own
    runroot = Path(tempfile.mkdtemp(prefix="cta-podman-", dir="/tmp"))
    podman = (
        "podman", "--root", str(storage), "--runroot", str(runroot),
        "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none",
    )  # fmt: skip
    try:
        done = containers_etc.run(*podman, "pull", "--quiet", netns_registry.image)
        assert done.returncode == 0, done.stderr
        placed.unlink()
        done = containers_etc.run(*podman, "pull", "--quiet", netns_registry.image)
    finally:
        shutil.rmtree(runroot, ignore_errors=True)
    # the image is in storage now, but a pull still asks the registry for the manifest
    assert done.returncode != 0 and X509 in done.stderr, done.stderr


def test_the_system_store_is_read_too(
    containers_etc: ContainersEtc, netns_registry: LabRegistry, tmp_path: Path
) -> None:
    """Go's system roots, here a bundle holding only the registry's CA bound over Debian's:
    containers/image trusts it with no certs.d entry (each run is a new process)."""
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(netns_registry.pki.paths.root.read_bytes())
    assert skopeo_inspect(containers_etc, netns_registry.image, bundle) == "ok"
