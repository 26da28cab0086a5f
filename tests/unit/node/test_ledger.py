"""The ledger round-trips exactly, is written atomically with sorted keys, and a corrupt one
stops the agent with a recovery hint instead of being overwritten."""

from __future__ import annotations

import json
import multiprocessing
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from agent.core.errors import LedgerError
from agent.node.host import HostFS
from agent.node.ledger import LEDGER_PATH, Ledger, LedgerEntry

ENTRY = LedgerEntry(
    endpoint="registry.test:5443",
    registry="registry.test:5443",
    state="installed",
    scope="registry",
    stores=("containerd",),
    files=("/etc/containerd/certs.d/registry.test:5443/ca-trust-agent-registry.test_5443.crt",),
    dirs=("/etc/containerd/certs.d/registry.test:5443",),
    refresh=(),
    anchor_subject="CN=Lab Root CA,O=ca-trust-agent lab",
    sha256="sha256:" + "AB" * 32,
    not_after="2036-11-27T00:00:00+00:00",
    installed_at="2026-11-27T14:00:00+00:00",
    restarted=(),
    source="fetched",
)

SYSTEM_ENTRY = replace(
    ENTRY,
    endpoint="auth.corp:443",
    registry="registry.corp:443",
    state="installing",
    scope="system",
    stores=("system",),
    files=("/etc/pki/ca-trust/source/anchors/ca-trust-agent-auth.corp_443.crt",),
    dirs=(),
    refresh=(("update-ca-trust", "extract"),),
    restarted=("containerd",),
    source="policy",
)


@pytest.fixture
def fs(tmp_path: Path) -> HostFS:
    return HostFS(str(tmp_path))


def test_a_missing_ledger_is_empty(fs: HostFS) -> None:
    assert Ledger(fs).entries() == {}


def test_entries_round_trip_exactly(fs: HostFS) -> None:
    ledger = Ledger(fs)
    ledger.put(ENTRY)
    ledger.put(SYSTEM_ENTRY)
    again = Ledger(fs).entries()
    assert again == {ENTRY.endpoint: ENTRY, SYSTEM_ENTRY.endpoint: SYSTEM_ENTRY}
    assert again[SYSTEM_ENTRY.endpoint].refresh == (("update-ca-trust", "extract"),)


def test_put_replaces_the_entry_of_the_same_endpoint(fs: HostFS) -> None:
    ledger = Ledger(fs)
    ledger.put(replace(ENTRY, state="installing"))
    ledger.put(ENTRY)
    assert ledger.entries() == {ENTRY.endpoint: ENTRY}


def test_delete_drops_an_entry_and_tolerates_a_missing_one(fs: HostFS) -> None:
    ledger = Ledger(fs)
    ledger.put(ENTRY)
    ledger.put(SYSTEM_ENTRY)
    ledger.delete(ENTRY.endpoint)
    ledger.delete(ENTRY.endpoint)
    ledger.delete("never.there:443")
    assert list(ledger.entries()) == [SYSTEM_ENTRY.endpoint]


def test_file_is_versioned_json_with_sorted_keys_and_private(fs: HostFS) -> None:
    Ledger(fs).put(SYSTEM_ENTRY)
    Ledger(fs).put(ENTRY)
    path = Path(fs.real(LEDGER_PATH))
    text = path.read_text()
    doc = json.loads(text)
    assert doc["version"] == 1
    assert list(doc["entries"]) == sorted(doc["entries"])
    assert list(doc["entries"][ENTRY.endpoint]) == sorted(doc["entries"][ENTRY.endpoint])
    assert text == json.dumps(doc, sort_keys=True, indent=2) + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["ledger.json"]  # no temp, no lock


def test_writes_are_byte_for_byte_deterministic(fs: HostFS, tmp_path: Path) -> None:
    other = HostFS(str(tmp_path / "other"))
    Path(other.root).mkdir()
    Ledger(fs).put(ENTRY)
    Ledger(fs).put(SYSTEM_ENTRY)
    Ledger(other).put(SYSTEM_ENTRY)
    Ledger(other).put(ENTRY)
    assert Path(fs.real(LEDGER_PATH)).read_bytes() == Path(other.real(LEDGER_PATH)).read_bytes()


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"version": 2, "entries": {}}',
        b'{"version": 1}',
        b'{"version": 1, "entries": {"a:443": {"endpoint": "a:443"}}}',
        b"\xff\xfe",
    ],
)
def test_a_corrupt_ledger_is_reported_with_a_recovery_hint_and_left_alone(
    fs: HostFS, content: bytes
) -> None:
    path = Path(fs.real(LEDGER_PATH))
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    ledger = Ledger(fs)
    with pytest.raises(LedgerError) as err:
        ledger.entries()
    assert err.value.kind == "corrupt"
    assert "move it aside" in str(err.value)
    assert str(path) in str(err.value)
    with pytest.raises(LedgerError):
        ledger.put(ENTRY)
    with pytest.raises(LedgerError):
        ledger.delete(ENTRY.endpoint)
    assert path.read_bytes() == content


def test_an_entry_with_wrong_types_or_state_is_corrupt(fs: HostFS) -> None:
    Ledger(fs).put(ENTRY)
    path = Path(fs.real(LEDGER_PATH))
    for field, bad in (("files", "/not/a/list"), ("state", "half-done"), ("sha256", 5)):
        doc = json.loads(path.read_text())
        doc["entries"][ENTRY.endpoint][field] = bad
        path.write_text(json.dumps(doc))
        with pytest.raises(LedgerError) as err:
            Ledger(fs).entries()
        assert err.value.kind == "corrupt"


def test_an_entry_filed_under_another_endpoint_is_corrupt(fs: HostFS) -> None:
    Ledger(fs).put(ENTRY)
    path = Path(fs.real(LEDGER_PATH))
    doc = json.loads(path.read_text())
    doc["entries"]["other:443"] = doc["entries"].pop(ENTRY.endpoint)
    path.write_text(json.dumps(doc))
    with pytest.raises(LedgerError, match="names endpoint"):
        Ledger(fs).entries()


def test_an_unknown_state_cannot_be_constructed() -> None:
    with pytest.raises(ValueError):
        replace(ENTRY, state="done")


def test_a_pathologically_nested_ledger_is_corrupt_not_a_crash(fs: HostFS) -> None:
    path = Path(fs.real(LEDGER_PATH))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"[" * 100_000)
    with pytest.raises(LedgerError) as err:
        Ledger(fs).entries()
    assert err.value.kind == "corrupt"


def _put_many(root: str, worker: int) -> None:
    ledger = Ledger(HostFS(root))
    for i in range(10):
        ledger.put(replace(ENTRY, endpoint=f"w{worker}-{i}.test:443"))


def test_concurrent_writers_in_separate_processes_lose_no_entry(fs: HostFS) -> None:
    """The daemon and a CLI run may write at once: every put survives."""
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_put_many, args=(fs.root, w)) for w in range(6)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(60)
        assert proc.exitcode == 0
    assert len(Ledger(fs).entries()) == 60
