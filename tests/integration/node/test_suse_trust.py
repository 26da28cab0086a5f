"""System scope on a SUSE node (SLES 15, openSUSE Leap), run by the real p11-kit.

SUSE's `update-ca-certificates` is p11-kit based like RHEL's `update-ca-trust`: anchors in
`/etc/pki/trust/anchors`, the bundle in `/var/lib/ca-certificates/ca-bundle.pem`, which Go
reads through `/etc/ssl/ca-bundle.pem`. `lab.isolation.rhel.suse_trust` models that layout with
Debian's p11-kit and a driver running the `trust extract` of SUSE's certbundle hook (the
other hooks, Java and the hashed directory, are left out). The agent runs unchanged.
Root in a private mount namespace only (see tests/e2e/conftest.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.errors import ApplyError, StoreError
from agent.core.hostport import parse_hostport
from agent.node.chain import verify_handshake
from agent.node.engine import Engine, InstallRequest
from agent.node.host import DirectRunner, HostFS
from agent.node.stores.bundle import bundle_digests
from lab.isolation.rhel import SUSE_ANCHORS, SUSE_BUNDLE_LINK, RhelStore, suse_trust
from lab.isolation.sandbox import Sandbox
from lab.tls import pki
from lab.tls.servers import TLSServer
from tests.e2e.conftest import sandbox
from tests.integration.node.test_rhel_trust import forgetting_new_entries

__all__ = ["sandbox"]

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture(params=["sles-15", "opensuse-leap-15.6"])
def suse(request: pytest.FixtureRequest, sandbox: Sandbox, tmp_path: Path) -> Iterator[RhelStore]:
    with suse_trust(tmp_path / "suse", os_release=request.param) as store, forgetting_new_entries():
        yield store


def trusted(issued: pki.Issued) -> bool:
    return issued.sha256 in bundle_digests(SUSE_BUNDLE_LINK.read_bytes())


def engine() -> Engine:
    return Engine(HostFS("/"), DirectRunner(), runtimes=("containerd",))


def test_install_verify_and_remove_on_suse(suse: RhelStore, tmp_path: Path) -> None:
    ca = pki.make_pki(tmp_path / "pki", names=("registry.test",), ips=("127.0.0.1",))
    assert ca.intermediate is not None
    with TLSServer(ca.chain, ca.leaf) as server:
        target = parse_hostport(server.hostport)
        result = engine().install(InstallRequest(target, scope="system", restart="never"))
        assert result.status == "installed" and result.verified
        assert os.listdir(SUSE_ANCHORS) == [f"ca-trust-agent-127.0.0.1_{server.port}.crt"]
        assert trusted(ca.intermediate)
        verify_handshake(target, str(SUSE_BUNDLE_LINK), timeout=5)  # what Go reads there

        assert engine().remove(target, restart="never").status == "removed"
        assert os.listdir(SUSE_ANCHORS) == []
        assert not trusted(ca.intermediate)
        with pytest.raises(ApplyError):
            verify_handshake(target, str(SUSE_BUNDLE_LINK), timeout=5)


def test_a_self_signed_leaf_is_dropped_by_p11kit_and_refused_for_system_scope(
    suse: RhelStore,
) -> None:
    leaf = pki.make_leaf(None, names=("selfsigned.test",), ips=("127.0.0.1",))
    (SUSE_ANCHORS / "leaf.crt").write_bytes(leaf.pem)
    suse.extract()
    assert not trusted(leaf)
    (SUSE_ANCHORS / "leaf.crt").unlink()
    with TLSServer([leaf], leaf) as srv, pytest.raises(StoreError) as err:
        engine().install(InstallRequest(parse_hostport(srv.hostport), scope="system"))
    assert err.value.kind == "not-a-ca"
    assert os.listdir(SUSE_ANCHORS) == []
