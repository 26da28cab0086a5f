"""kill -9 at every step of a CA rotation: old and new overlap, the old one goes, and the
ledger and the disk agree whatever instant the agent dies at.

A rotation is two engine installs made by the daemon's first-trust step
(agent.cluster.firsttrust): the trust file first holds the new anchor with the old one beside
it, then, once the new one is verified, the new one alone. The node starts with the old
anchor installed; the registry (a real TLS server) now presents a chain under a new CA, whose
fingerprint the operator approved (a pin). lab.fakes.rotation runs the daemon's own code for the
failing pull in a child process and kills it by SIGKILL exactly at a named step of the first
or the second install (CA_TRUST_AGENT_FAILPOINT, as tests/robustness/test_crash_safety.py).

After each kill, what a runtime or trust tool would read:
- every trust file of ours holds complete certificates: the old anchor, the new one, or both,
  byte for byte what an install writes (system scope: the rebuilt bundle too, beside the
  node's own CA, which is never touched);
- the ledger parses and names every file of ours; each file it names exists; its anchor is
  the old or the new one, and an entry marked `installed` names an anchor its files hold;
then the daemon restarts: its ledger recovery first, as the policy sync does, which puts
back what the interrupted install replaced (the old anchor, or old+new: never nothing);
then it handles the pull again, which must converge: the new anchor alone, in the ledger and
on disk.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from agent.core.hostport import parse_hostport
from agent.core.ledger_entry import LedgerEntry
from agent.core.remediation import InstallRequest, Result
from agent.core.trust import CertInfo, cert_from_der, parse_pem_bundle, pem_bundle
from agent.node.engine import Engine
from agent.node.host import HostFS
from lab.fakes.doubles import FakeRestarts, RecordingRunner
from lab.fakes.hostroot import CERTS_D, node_root
from lab.fakes.rotation import killed_rotation, node_engine, rotate
from lab.tls import pki
from lab.tls.servers import TLSServer

pytestmark = pytest.mark.integration

ANCHOR_DIR = "usr/local/share/ca-certificates"
BUNDLE = "etc/ssl/certs/ca-certificates.crt"
TMP_PREFIX = ".ca-trust-agent-tmp-"
FOREIGN = "corp-root.crt"  # the node's own anchor in the system store: never touched
KILLED = -9

# The plan actions each install of a rotation runs (the store directory exists already:
# no MakeDir), and the two instants inside every atomic write (the ledger's first).
REACHED = {
    "registry": ("RecordLedger", "WriteFile", "Verify"),
    "system": ("RecordLedger", "WriteFile", "Refresh", "Verify", "Restart"),
}
WRITE_FAILPOINTS = ("write:temp-written", "write:renamed")


def _cases() -> list[object]:
    return [
        pytest.param(scope, step, failpoint, id=f"{scope}-step{step}-{failpoint}")
        for scope, actions in REACHED.items()
        for step in (1, 2)
        for failpoint in (
            *(f"apply:{when}:{a}" for a in actions for when in ("before", "after")),
            *WRITE_FAILPOINTS,
        )
    ]


def certinfo(issued: pki.Issued) -> CertInfo:
    return cert_from_der(issued.cert.public_bytes(Encoding.DER))


@dataclass(frozen=True)
class CAs:
    old: pki.PKI
    new: pki.PKI
    node_own: pki.PKI

    @property
    def old_anchor(self) -> CertInfo:
        return certinfo(self.old.root)

    @property
    def new_anchor(self) -> CertInfo:
        return certinfo(self.new.root)


@pytest.fixture(scope="module")
def cas() -> Iterator[CAs]:
    with tempfile.TemporaryDirectory(prefix="rotation-pki-") as tmp:
        base = Path(tmp)
        names, ips = ("registry.test",), ("127.0.0.1",)
        yield CAs(
            pki.make_pki(base / "old", names=names, ips=ips),
            pki.make_pki(base / "new", names=names, ips=ips),
            pki.make_pki(base / "corp", names=("corp.test",)),
        )


@pytest.fixture(scope="module")
def registry(cas: CAs) -> Iterator[TLSServer]:
    """The registry after its move to the new CA (it presents its whole chain)."""
    with TLSServer(cas.new.fullchain, cas.new.leaf) as server:
        yield server


@dataclass(frozen=True)
class Node:
    scope: str
    root: Path
    target: str
    old: CertInfo
    new: CertInfo

    @property
    def store_dir(self) -> Path:
        if self.scope == "registry":
            return self.root / CERTS_D.lstrip("/") / self.target
        return self.root / ANCHOR_DIR

    @property
    def our_file(self) -> Path:
        return self.store_dir / f"ca-trust-agent-{self.target.replace(':', '_')}.crt"

    def engine(self) -> Engine:
        return node_engine(self.root)

    def entry(self) -> LedgerEntry | None:
        return self.engine().entries().get(self.target)

    def allowed_contents(self) -> dict[bytes, str]:
        """What an install of this rotation writes into our file, by name."""
        return {
            pem_bundle([self.old]): "old",
            pem_bundle([self.new, self.old]): "old+new",
            pem_bundle([self.new]): "new",
        }


def _node(tmp_path: Path, cas: CAs, registry: TLSServer, scope: str) -> Node:
    """A node that trusts the old anchor: installed before the registry moved (its fetch
    then returned the old chain)."""
    root = node_root(tmp_path / "host")
    (root / ANCHOR_DIR).mkdir(parents=True)
    (root / ANCHOR_DIR / FOREIGN).write_bytes(cas.node_own.root.pem)
    target = f"127.0.0.1:{registry.port}"
    old_chain = tuple(certinfo(c) for c in (cas.old.leaf, cas.old.intermediate, cas.old.root) if c)
    before = Engine(
        HostFS(str(root)),
        RecordingRunner(root),
        runtimes=("containerd",),
        manager=FakeRestarts(),  # type: ignore[arg-type]
        fetch=lambda endpoint: old_chain,
        verify=lambda endpoint, cafile: None,
    )
    done = before.install(InstallRequest(endpoint=parse_hostport(target), scope=scope))
    assert done.status == "installed" and done.anchor == cas.old_anchor
    return Node(scope, root, target, cas.old_anchor, cas.new_anchor)


# --- what a reader sees ---------------------------------------------------------------------


def check_trust_files(node: Node) -> str:
    """Only complete old / old+new / new in our file, nothing else of ours in the store;
    returns which of the three the file holds."""
    allowed = node.allowed_contents()
    for entry in sorted(node.store_dir.iterdir()):
        if entry.name.startswith(TMP_PREFIX):
            assert not entry.name.endswith(".crt"), f"{entry}: readers would load a temp file"
        elif node.scope == "system" and entry.name == FOREIGN:
            continue
        else:
            assert entry == node.our_file, f"unexpected {entry}"
    assert node.our_file.exists(), "the node trusts nothing: the old anchor went too early"
    content = node.our_file.read_bytes()
    assert content in allowed, f"{node.our_file} is not a complete old, new or old+new"
    if node.scope == "system":
        bundle = {c.sha256 for c in parse_pem_bundle((node.root / BUNDLE).read_bytes())}
        assert bundle - {node.old.sha256, node.new.sha256} == {certinfo_sha(node, FOREIGN)}
        assert bundle & {node.old.sha256, node.new.sha256}, "the bundle trusts neither anchor"
    return allowed[content]


def certinfo_sha(node: Node, name: str) -> str:
    return parse_pem_bundle((node.root / ANCHOR_DIR / name).read_bytes())[0].sha256


def check_ledger_matches_disk(node: Node) -> LedgerEntry | None:
    """The ledger names our file (or, after a recovery, neither exists); the anchor it names
    is one of the two, and an `installed` entry's anchor is in its files."""
    entry = node.entry()  # parses the ledger
    if entry is None:
        assert not node.our_file.exists(), "our file is on disk but not in the ledger"
        return None
    assert entry.sha256 in (node.old.sha256, node.new.sha256)
    assert "/" + str(node.our_file.relative_to(node.root)) in entry.files
    for path in entry.files:
        real = node.root / path.lstrip("/")
        assert real.exists(), f"the ledger names {path}, which is gone"
        if entry.state == "installed":
            held = [c.sha256 for c in parse_pem_bundle(real.read_bytes())]
            assert entry.sha256 in held, f"the ledger says {path} holds {entry.sha256}"
    return entry


# --- the kills --------------------------------------------------------------------------------


@pytest.mark.parametrize(("scope", "step", "failpoint"), _cases())
def test_rotation_killed_at_any_step_keeps_ledger_and_disk_agreeing_and_converges(
    tmp_path: Path, cas: CAs, registry: TLSServer, scope: str, step: int, failpoint: str
) -> None:
    node = _node(tmp_path, cas, registry, scope)

    code = killed_rotation(
        node.root, node.target, node.new.sha256, scope=scope, step=step, failpoint=failpoint
    )
    assert code == KILLED, f"the rotation was expected to die at {failpoint} (exit {code})"
    holds = check_trust_files(node)
    entry = check_ledger_matches_disk(node)
    assert entry is not None
    if step == 2:
        # the first install completed: both anchors were trusted before the old one goes
        assert holds in ("old+new", "new")

    # the DaemonSet restarts the agent: ledger recovery first, then the failing pull again
    recovered = node.engine()
    recovered.recover()
    after_recovery = check_ledger_matches_disk(node)
    recovered_holds = "nothing" if after_recovery is None else check_trust_files(node)
    # recovery gives back what was installed before the interrupted install: the old anchor
    # (step 1) or old+new (step 2); a rotation never leaves the registry untrusted
    assert after_recovery is not None and after_recovery.state == "installed"
    assert recovered_holds == ("old" if step == 1 else "old+new")
    events = rotate(node_engine(node.root), node.target, node.new.sha256, scope=scope)
    print(
        f"\n{scope} step {step} {failpoint}: after the kill the file holds {holds} (ledger "
        f"{entry.state}); after the restart's recovery {recovered_holds}; the pull handled "
        f"again: {events.reasons}"
    )

    assert "CATrusted" in events.reasons, events.messages
    assert check_trust_files(node) == "new"
    final = check_ledger_matches_disk(node)
    assert final is not None and (final.state, final.sha256) == ("installed", node.new.sha256)
    assert final.files == ("/" + str(node.our_file.relative_to(node.root)),)
    if scope == "system":
        bundle = (node.root / BUNDLE).read_bytes()
        assert node.new.pem in bundle and node.old.pem not in bundle
        assert (node.root / ANCHOR_DIR / FOREIGN).read_bytes() == cas.node_own.root.pem


@pytest.mark.parametrize("scope", ["registry", "system"])
def test_an_uninterrupted_rotation_overlaps_then_drops_the_old_anchor(
    tmp_path: Path, cas: CAs, registry: TLSServer, scope: str
) -> None:
    """The reference run: each install's result on disk, in order."""
    node = _node(tmp_path, cas, registry, scope)
    engine = node_engine(node.root)
    seen: list[str] = []
    install = engine.install

    def observed(req: InstallRequest) -> Result:
        result = install(req)
        if not req.dry_run:
            seen.append(check_trust_files(node))
        return result

    engine.install = observed  # type: ignore[method-assign]
    events = rotate(engine, node.target, node.new.sha256, scope=scope)

    assert seen == ["old+new", "new"]
    assert [r for r in events.reasons if r.startswith("CA")] == ["CATrusted", "CARotated"]
    rotated = events.message("CARotated")
    assert node.old.sha256 in rotated and node.new.sha256 in rotated
    entry = check_ledger_matches_disk(node)
    assert entry is not None and entry.sha256 == node.new.sha256
    if scope == "system":
        # each install rewrites the system store, and the runtime reloads it each time
        assert engine.manager.done == ["containerd", "containerd"]  # type: ignore[attr-defined]
