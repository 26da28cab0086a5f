"""System scope on a RHEL-family node (EulerOS, CentOS, RHEL, openEuler), run by the real p11-kit.

`lab.isolation.rhel.rhel_trust` mounts a RHEL layout in this private mount namespace and puts an
`update-ca-trust` on the PATH that runs the `p11-kit extract` commands of the real script,
in the EL7/8/9/openEuler style (no `set -e`, arguments ignored) and in the Fedora/RHEL 10
style (strict). The agent's engine runs unchanged against it: DirectRunner, HostFS("/"),
a real TLS server presenting leaf + intermediate. The first tests pin down what p11-kit
really does with what lands in `anchors/`; the rest show the agent copes with it.

Root in a private mount namespace only (see tests/e2e/conftest.py); elsewhere skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.errors import ApplyError, StoreError
from agent.core.hostport import parse_hostport
from agent.node.chain import verify_handshake
from agent.node.engine import Engine, InstallRequest
from agent.node.host import STAGING_DIR, DirectRunner, HostFS
from agent.node.ledger import Ledger
from agent.node.stores.bundle import bundle_digests
from lab.isolation.rhel import ANCHORS, CA_BUNDLE_LINK, EXTRACTED, TLS_BUNDLE, RhelStore, rhel_trust
from lab.isolation.sandbox import Sandbox
from lab.tls import pki
from lab.tls.servers import TLSServer
from tests.e2e.conftest import REPO, sandbox, timing

__all__ = ["sandbox"]  # the session fixture, imported for pytest

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture(params=["el", "fedora"])
def rhel(request: pytest.FixtureRequest, sandbox: Sandbox, tmp_path: Path) -> Iterator[RhelStore]:
    with rhel_trust(tmp_path / "rhel", style=request.param) as store, forgetting_new_entries():
        yield store


@contextlib.contextmanager
def forgetting_new_entries() -> Iterator[None]:
    """The sandbox's ledger is shared by the session: entries a test leaves (a removal that
    failed on purpose) go with it; their files went with the RHEL tmpfs."""
    ledger = Ledger(HostFS("/"))
    before = set(ledger.entries())
    try:
        yield
    finally:
        for key in set(ledger.entries()) - before:
            ledger.delete(key)


@pytest.fixture(scope="module")
def lab_ca(tmp_path_factory: pytest.TempPathFactory) -> pki.PKI:
    return pki.make_pki(
        tmp_path_factory.mktemp("pki"), names=("registry.test",), ips=("127.0.0.1",)
    )


@pytest.fixture
def server(lab_ca: pki.PKI) -> Iterator[TLSServer]:
    with TLSServer(lab_ca.chain, lab_ca.leaf) as srv:
        yield srv


def in_bundle(issued: pki.Issued, bundle: Path = TLS_BUNDLE) -> bool:
    return bundle.exists() and issued.sha256 in bundle_digests(bundle.read_bytes())


def engine() -> Engine:
    return Engine(HostFS("/"), DirectRunner(), runtimes=("containerd",))


def ours() -> list[str]:
    return sorted(n for n in os.listdir(ANCHORS) if "ca-trust-agent" in n)


# --- what p11-kit does with what lands in anchors/ -----------------------------------------


def test_a_self_signed_leaf_without_ca_true_never_reaches_the_bundle(
    rhel: RhelStore, tmp_path: Path
) -> None:
    leaf = pki.make_leaf(None, names=("selfsigned.test",))
    (ANCHORS / "leaf.crt").write_bytes(leaf.pem)
    ca = pki.make_ca("a real CA")
    (ANCHORS / "ca.crt").write_bytes(ca.pem)
    rhel.extract()
    assert in_bundle(ca)
    assert not in_bundle(leaf)  # and update-ca-trust said nothing about it


def test_p11kit_reads_dot_files_in_anchors_but_not_its_subdirectories(rhel: RhelStore) -> None:
    """Why the agent's temp files live in a staging subdirectory, not beside its file."""
    beside, staged = pki.make_ca("left beside"), pki.make_ca("left in staging")
    (ANCHORS / ".ca-trust-agent-tmp-0123456789abcdef").write_bytes(beside.pem)
    (ANCHORS / STAGING_DIR).mkdir()
    (ANCHORS / STAGING_DIR / ".ca-trust-agent-tmp-fedcba9876543210").write_bytes(staged.pem)
    rhel.extract()
    assert in_bundle(beside)
    assert not in_bundle(staged)


def test_a_write_killed_before_its_rename_never_becomes_trusted(rhel: RhelStore) -> None:
    """kill -9 between writing the temp file and renaming it, then the next refresh: the
    half-done anchor must not be trusted (before the staging dir, it was)."""
    ca = pki.make_ca("killed write")
    code = (
        "import sys; from agent.node.host import HostFS; "
        "HostFS('/').write_atomic(sys.argv[1], sys.stdin.buffer.read())"
    )
    killed = subprocess.run(
        [sys.executable, "-c", code, str(ANCHORS / "ca-trust-agent-killed.test_443.crt")],
        input=ca.pem,
        env={**os.environ, "CA_TRUST_AGENT_FAILPOINT": "write:temp-written"},
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    assert [n for n in os.listdir(ANCHORS)] == [STAGING_DIR]  # only the staging dir
    rhel.extract()
    assert not in_bundle(ca)
    assert HostFS("/").remove_temp_files(str(ANCHORS)) == 1
    assert os.listdir(ANCHORS) == []


def test_only_extract_is_understood_by_every_style(rhel: RhelStore) -> None:
    """EL7/8/9 ignore arguments; Fedora-style scripts refuse `enable`. `extract` works on both,
    and it is what the agent runs."""
    from agent.core.os_families import FAMILIES as LAYOUTS

    assert LAYOUTS["rhel"].refresh == ("update-ca-trust", "extract")
    assert rhel.update_ca_trust("extract").returncode == 0
    assert rhel.update_ca_trust("enable").returncode == (0 if rhel.style == "el" else 1)


def test_exit_status_zero_does_not_prove_the_bundle_was_written(rhel: RhelStore) -> None:
    shutil.rmtree(EXTRACTED / "pem")
    done = rhel.update_ca_trust("extract")
    assert "pem" in done.stderr  # p11-kit complained ...
    assert done.returncode == (0 if rhel.style == "el" else 1)  # ... and EL said "fine"


# --- the agent on it ------------------------------------------------------------------------


def test_install_verify_and_remove_on_the_real_extractor(
    rhel: RhelStore, server: TLSServer, lab_ca: pki.PKI
) -> None:
    target = parse_hostport(server.hostport)
    anchor = lab_ca.intermediate
    assert anchor is not None  # the registry sends leaf + intermediate: that is the anchor
    assert not in_bundle(anchor)

    result = engine().install(InstallRequest(target, scope="system", restart="never"))
    assert result.status == "installed"
    assert result.verified  # the engine's own handshake, against the extracted bundle
    assert ours() == [f"ca-trust-agent-127.0.0.1_{server.port}.crt"]
    assert in_bundle(anchor)
    # the OpenSSL bundle with trust flags (BEGIN TRUSTED CERTIFICATE) names it in a comment
    assert b"# Lab Intermediate CA" in (EXTRACTED / "openssl/ca-bundle.trust.crt").read_bytes()
    # What a runtime reads: Go opens /etc/pki/tls/certs/ca-bundle.crt (the package link).
    verify_handshake(target, str(CA_BUNDLE_LINK), timeout=5)
    timing(f"update-ca-trust extract ({rhel.style}, 142 roots + ours)", rhel.extract())

    removed = engine().remove(target, restart="never")
    assert removed.status == "removed"
    assert ours() == []
    assert not in_bundle(anchor)
    with pytest.raises(ApplyError):
        verify_handshake(target, str(CA_BUNDLE_LINK), timeout=5)


def test_a_self_signed_leaf_is_refused_for_system_scope_before_anything_is_written(
    rhel: RhelStore,
) -> None:
    leaf = pki.make_leaf(None, names=("selfsigned.test",), ips=("127.0.0.1",))
    with TLSServer([leaf], leaf) as srv, pytest.raises(StoreError) as err:
        engine().install(
            InstallRequest(parse_hostport(srv.hostport), scope="system", restart="never")
        )
    assert err.value.kind == "not-a-ca"
    assert "registry scope" in str(err.value)
    assert os.listdir(ANCHORS) == []
    assert engine().entries() == {}


def test_a_refresh_that_exits_0_without_writing_the_bundle_fails_and_rolls_back(
    rhel: RhelStore, server: TLSServer
) -> None:
    target = parse_hostport(server.hostport)
    shutil.rmtree(EXTRACTED / "pem")  # p11-kit cannot write tls-ca-bundle.pem any more
    with pytest.raises(ApplyError) as err:
        engine().install(InstallRequest(target, scope="system", restart="never"))
    assert err.value.kind == "refresh-failed"
    if rhel.style == "el":  # exit 0: only reading the bundle back catches it
        assert "left no CA bundle a runtime reads" in str(err.value)
    assert "rolled back" in str(err.value)
    assert ours() == []
    assert engine().entries() == {}


def test_a_removal_the_refresh_did_not_apply_is_reported(
    rhel: RhelStore, server: TLSServer, lab_ca: pki.PKI
) -> None:
    target = parse_hostport(server.hostport)
    engine().install(InstallRequest(target, scope="system", restart="never"))
    # A refresh that "succeeds" without rebuilding anything: EL style with p11-kit gone.
    (rhel.base / "sbin/update-ca-trust").write_text("#!/bin/sh\nexit 0\n")
    with pytest.raises(ApplyError) as err:
        engine().remove(target, restart="never")
    assert "still holds the removed anchor" in str(err.value)
    assert lab_ca.intermediate is not None and in_bundle(lab_ca.intermediate)
