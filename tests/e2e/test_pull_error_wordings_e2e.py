"""The x509 failures a CA cannot fix, as real containerd pulls word them.

A registry whose certificate is expired, not yet valid, for other names, CN-only, without
the IP SAN its IP address needs, sent without its intermediate, or for client use only:
trusting its CA (which the node does here: `certs.d/<host>/ca.crt` holds the root) fixes none
of them. Each defect is one name the lab's CONNECT proxy answers with that certificate
(lab/tls/pki.py `defective_chain`), relaying to the lab registry; containerd 1.6.20 and 2.1.9
pull through the CRI behind the proxy, as kubelet does. The TLS error is the one Go returns
for the tunnelled handshake, the same text as for a registry reached directly.

The wordings captured here are copied into tests/fixtures/pull-errors.txt (with the
containerd version), where the detector's and the diagnosis's unit tests read them; this
module checks that each live wording is still diagnosed as its defect.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from agent.core.detect import parse_pull_error
from agent.core.diagnosis import diagnose
from agent.node.chain import fetch_chain
from lab.isolation.netns import NetnsHost
from lab.isolation.sandbox import Sandbox
from lab.runtimes.containerd2 import VERSION, Containerd2
from lab.tls.intercept import InterceptingProxy, Upstream, intercepting_proxy
from lab.tls.pki import DEFECTS, PKI, defective_chain, make_ca, make_pki, write_pem
from tests.e2e.conftest import LabRegistry
from tests.e2e.test_default_dir_facts_e2e import start_behind

pytestmark = [pytest.mark.e2e, pytest.mark.root]

IP_HOST = "198.18.99.99"  # never assigned: only the proxy ever "connects" to it
HOSTS = {d: (IP_HOST if d == "no-ip-san" else f"{d}.test") for d in DEFECTS}
CONFLICTING = "conflicting-ca.test"  # a sound chain, but the node trusts a same-named impostor
# Go's phrase for each defect (crypto/x509), and the diagnosis kind it must give
PHRASES = {
    "expired": "x509: certificate has expired or is not yet valid: current time",
    "not-yet-valid": "x509: certificate has expired or is not yet valid: current time",
    "name-mismatch": "x509: certificate is valid for a.example, b.example, not name-mismatch.test",
    "legacy-cn": "x509: certificate relies on legacy Common Name field",
    "no-ip-san": f"x509: cannot validate certificate for {IP_HOST} because it doesn't contain",
    "missing-intermediate": "x509: certificate signed by unknown authority",
    "incompatible-usage": "x509: certificate specifies an incompatible key usage",
    "conflicting-ca": "while trying to verify candidate authority certificate",
}


@dataclass(frozen=True)
class DefectLab:
    proxy: InterceptingProxy
    pki: PKI  # the registries' CA: its root is what the node trusts
    impostor: bytes  # a root with the same name as pki's, another key


@pytest.fixture(scope="module")
def defect_lab(
    sandbox: Sandbox,
    lab_netns: NetnsHost,
    netns_registry: LabRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DefectLab]:
    work = tmp_path_factory.mktemp("defects")
    pki = make_pki(work / "pki", names=(CONFLICTING,))
    reg = netns_registry
    upstream = Upstream(reg.registry.address, reg.port, reg.host, reg.pki.paths.root)
    hosts = [*HOSTS.values(), CONFLICTING]
    presents = {f"{HOSTS[d]}:443": defective_chain(pki, HOSTS[d], d) for d in DEFECTS}
    presents[f"{CONFLICTING}:443"] = (pki.leaf, pki.intermediate)  # type: ignore[assignment]
    routes = {f"{h}:443": upstream for h in hosts}
    with intercepting_proxy(work / "proxy", routes, presents=presents) as proxy:
        yield DefectLab(proxy, pki, make_ca("Lab Root CA").pem)


@pytest.fixture(scope="module", params=["1.6.20", VERSION])
def containerd(
    request: pytest.FixtureRequest, defect_lab: DefectLab, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Containerd2]:
    runtime = str(request.param)
    daemon = start_behind(defect_lab.proxy, runtime, tmp_path_factory.mktemp(f"w-{runtime}"))
    try:
        yield daemon
    finally:
        daemon.stop()


def pull_error(daemon: Containerd2, lab: DefectLab, defect: str) -> str:
    host = CONFLICTING if defect == "conflicting-ca" else HOSTS[defect]
    anchor = daemon.certs_d / host / "ca.crt"
    anchor.parent.mkdir(parents=True, exist_ok=True)
    if defect == "conflicting-ca":
        anchor.write_bytes(lab.impostor)
    else:
        write_pem(anchor, lab.pki.root)
    try:
        with daemon.cri() as cri:
            result = cri.pull(f"{host}/lab/tiny:v1")
    finally:
        shutil.rmtree(anchor.parent)
    assert not result.ok
    print(f"\n[captured] containerd {daemon.version} {defect}\n{result.error}")
    return result.error


@pytest.mark.parametrize("defect", [*DEFECTS, "conflicting-ca"])
def test_a_defect_a_ca_cannot_fix_is_diagnosed_from_the_real_wording(
    containerd: Containerd2, defect_lab: DefectLab, defect: str
) -> None:
    error = pull_error(containerd, defect_lab, defect)
    assert PHRASES[defect] in error, error
    failure = parse_pull_error(error)
    assert failure is not None, error
    diagnosis = diagnose(failure)
    if defect == "missing-intermediate":
        # the wording is the unknown-authority one: only the chain, fetched as the runtime
        # connects (through the proxy), tells
        assert diagnosis is None
        assert failure.failing is not None
        chain = fetch_chain(failure.failing, proxy=defect_lab.proxy.url).certs
        assert len(chain) == 1
        found = diagnose(failure, chain)
        assert found is not None and found.kind == defect and found.ca_would_fix
    else:
        assert diagnosis is not None, error
        assert diagnosis.kind == defect
