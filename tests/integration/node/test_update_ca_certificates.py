"""System scope against the real `update-ca-certificates`, and the other OS families by layout.

The Debian test runs inside a private mount namespace whose /etc/ssl/certs,
/usr/local/share/ca-certificates and /etc/ca-certificates are tmpfs copies (LAB.md), so the
machine's trust store is never changed, even if the test dies halfway. It drives the same
pieces the engine uses: SystemStore for the placement, HostFS(root="/") for the write and the
removal, DirectRunner for the refresh.

The RHEL/EulerOS store runs on the real p11-kit in test_rhel_trust.py; the layouts of all
families, SUSE's and Alpine's only, run here on a host-root temp tree with a RecordingRunner
that checks the exact commands. The namespace hides /etc/ca-certificates/update.d hooks (see
lab/isolation/sandbox.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.core.hostport import HostPort
from agent.node.host import CommandResult, HostFS
from agent.node.stores import check_placement, system_store

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for mount namespaces"),
]

REPO = Path(__file__).resolve().parents[3]
OS_RELEASE = REPO / "tests" / "fixtures" / "os-release"
MACHINE_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
MACHINE_ANCHORS = Path("/usr/local/share/ca-certificates")

# LAB.md's recipe: each trust directory becomes a tmpfs holding a copy of itself.
PRIVATE_TRUST = """
set -e
for d in /etc/ssl/certs /usr/local/share/ca-certificates /etc/ca-certificates; do
  t=$(mktemp -d); cp -a "$d"/. "$t"/; mount -t tmpfs tmpfs "$d"; cp -a "$t"/. "$d"/; rm -rf "$t"
done
# the hooks (Debian's jks-keystore) write /var/lib/ca-certificates-java and run dpkg
rm -rf /etc/ca-certificates/update.d/*
exec "$@"
"""

# Runs inside the namespace: install, refresh, check; remove, refresh, check.
CYCLE = textwrap.dedent(
    """
    import json, sys, time
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from agent.node.host import DirectRunner, HostFS
    from agent.core.hostport import HostPort
    from agent.node.stores import check_placement, system_store

    pem = open(sys.argv[1], "rb").read()
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    fs = HostFS("/")
    runner = DirectRunner()
    store = system_store(fs)
    placement = store.placement(HostPort("registry.test", 5443), pem)

    def bundle_has_ca():
        data = fs.read_bytes(store.bundle, limit=64 << 20)
        certs = x509.load_pem_x509_certificates(data)
        return any(c.public_bytes(Encoding.DER) == der for c in certs)

    out = {"family": store.family, "file": placement.file, "before": bundle_has_ca()}
    check_placement(fs, placement, ours=())
    out["created"] = list(fs.makedirs(placement.directory))
    fs.write_atomic(placement.file, placement.content)
    r = runner.run(placement.refresh, timeout=120)
    out["install_refresh"] = [r.returncode, r.duration, r.stderr[-300:]]
    out["after_install"] = bundle_has_ca()
    out["removed"] = fs.remove_file(placement.file)
    r = runner.run(placement.refresh, timeout=120)
    out["remove_refresh"] = [r.returncode, r.duration, r.stderr[-300:]]
    out["after_remove"] = bundle_has_ca()
    print(json.dumps(out))
    """
)


def make_ca(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca-trust-agent test root")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def machine_state() -> tuple[str, list[str], list[str]]:
    return (
        hashlib.sha256(MACHINE_BUNDLE.read_bytes()).hexdigest(),
        sorted(os.listdir(MACHINE_ANCHORS)),
        sorted(n for n in os.listdir("/etc/ssl/certs") if "ca-trust-agent" in n),
    )


def test_real_update_ca_certificates_adds_and_removes_our_ca(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    script = tmp_path / "cycle.py"
    script.write_text(CYCLE)
    before = machine_state()
    proc = subprocess.run(
        [
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", PRIVATE_TRUST, "sh", sys.executable, str(script), str(ca),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        "update-ca-certificates: install refresh "
        f"{result['install_refresh'][1]:.2f}s, remove refresh {result['remove_refresh'][1]:.2f}s"
    )
    assert result["family"] == "debian"
    assert result["file"] == (
        "/usr/local/share/ca-certificates/ca-trust-agent-registry.test_5443.crt"
    )
    assert result["created"] == []
    assert result["before"] is False
    assert result["install_refresh"][0] == 0, result["install_refresh"][2]
    assert result["after_install"] is True
    assert result["removed"] is True
    assert result["remove_refresh"][0] == 0, result["remove_refresh"][2]
    assert result["after_remove"] is False
    # The machine itself never saw any of it.
    assert machine_state() == before
    assert before[2] == []


# --- other families: file layout and the exact command ------------------------------------


class RecordingRunner:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], *, timeout: float = 120.0) -> CommandResult:
        self.calls.append(tuple(argv))
        return CommandResult(tuple(argv), 0, "", "", 0.0, False)


@pytest.mark.parametrize(
    ("fixture", "anchor_dir", "refresh"),
    [
        ("rhel-9", "/etc/pki/ca-trust/source/anchors", ("update-ca-trust", "extract")),
        ("euleros-2.0", "/etc/pki/ca-trust/source/anchors", ("update-ca-trust", "extract")),
        ("hce-2.0", "/etc/pki/ca-trust/source/anchors", ("update-ca-trust", "extract")),
        ("sles-15", "/etc/pki/trust/anchors", ("update-ca-certificates",)),
        ("alpine-3.19", "/usr/local/share/ca-certificates", ("update-ca-certificates",)),
    ],
)
def test_install_and_remove_cycle_by_layout(
    tmp_path: Path, fixture: str, anchor_dir: str, refresh: tuple[str, ...]
) -> None:
    """Write, refresh, remove, refresh on a host tree: exactly our file, exactly the command."""
    root = tmp_path / "host"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_bytes((OS_RELEASE / fixture).read_bytes())
    fs = HostFS(str(root))
    runner = RecordingRunner()
    pem = make_ca(tmp_path).read_bytes()
    placement = system_store(fs).placement(HostPort("registry.test", 5443), pem)
    assert placement.refresh == refresh

    check_placement(fs, placement, ours=())
    created = fs.makedirs(placement.directory)
    fs.write_atomic(placement.file, placement.content)
    runner.run(placement.refresh)
    anchors = root / anchor_dir.lstrip("/")
    assert sorted(p.name for p in anchors.iterdir()) == ["ca-trust-agent-registry.test_5443.crt"]
    assert (anchors / "ca-trust-agent-registry.test_5443.crt").read_bytes() == pem
    assert (anchors / "ca-trust-agent-registry.test_5443.crt").stat().st_mode & 0o777 == 0o644

    assert fs.remove_file(placement.file)
    for directory in reversed(created):
        assert fs.remove_dir(directory)
    runner.run(placement.refresh)
    assert runner.calls == [refresh, refresh]
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["etc", "etc/os-release"]
