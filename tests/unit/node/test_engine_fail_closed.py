"""Fail closed: a verification that breaks leaves nothing behind, in every scope.

The runtime's own pull is the verdict of an install. When that step raises instead of
answering (the CRI client's grpc missing from the install, a bug, anything), what was
written is not trusted: the files, the hosts.toml line and the ledger go back to what they
were, the error is one line naming what broke (exit 7), and no entry says "installed"
without a verdict. A process killed during the verification leaves an "installing" intent
that the next start undoes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.errors import ApplyError
from agent.core.pull_verdict import PullVerdict
from agent.core.trust import cert_from_der
from agent.node.engine import Engine, InstallRequest
from lab.tls import pki
from tests.unit.node.engine_world import (
    IMAGE,
    OUR_FILE,
    REG,
    SYSTEM_FILE,
    Node,
    Pulls,
    der,
    ledger,
    with_runtime_socket,
)

LEDGER = "/var/lib/ca-trust-agent/ledger.json"
HOSTS_TOML = "/etc/containerd/certs.d/registry.test:5443/hosts.toml"
THEIRS = b'server = "https://registry.test:5443"\n[host."https://registry.test:5443"]\n'


class Killed(BaseException):
    """Stands in for SIGKILL in the middle of the verification: nothing after it runs."""


def broken_pull(exc: BaseException):  # type: ignore[no-untyped-def]
    def pull(runtime: str, socket: str, image: str, timeout: float) -> PullVerdict:
        raise exc

    return pull


NO_GRPC = ModuleNotFoundError("No module named 'grpc'")


@pytest.mark.parametrize("scope", ["registry", "system", "auto"])
def test_a_verification_that_raises_rolls_back_every_scope(node: Node, scope: str) -> None:
    with_runtime_socket(node)
    before = node.files()
    with pytest.raises(ApplyError) as err:
        node.engine(pull=broken_pull(NO_GRPC)).install(
            InstallRequest(REG, scope=scope, image=IMAGE)
        )
    assert err.value.exit_code == 7
    assert err.value.kind == "verify-failed"
    message = str(err.value)
    assert "\n" not in message
    assert "ModuleNotFoundError: No module named 'grpc'" in message
    assert "rolled back" in message
    assert node.files() - before <= {LEDGER}
    assert OUR_FILE not in node.files() and SYSTEM_FILE not in node.files()
    assert REG.key not in node.engine().entries()


def test_system_scope_refreshes_and_restarts_again_after_the_rollback(node: Node) -> None:
    """The store forgets the CA and the runtime, restarted to load it, drops it again."""
    with_runtime_socket(node)
    with pytest.raises(ApplyError):
        node.engine(pull=broken_pull(RuntimeError("boom"))).install(
            InstallRequest(REG, scope="system", image=IMAGE)
        )
    refreshes = [c for c in node.runner.calls if c[0] == "update-ca-certificates"]
    assert len(refreshes) == 2  # once to add, once after taking the file out again
    assert node.manager.restarts == ["containerd", "containerd"]
    bundle = node.root / "etc/ssl/certs/ca-certificates.crt"
    assert node.chain[-1].pem.decode().strip() not in bundle.read_text()


def test_a_crashed_verification_is_not_mistaken_for_a_refusal(node: Node) -> None:
    """`auto` falls back to system scope only when the runtime says no; a verifier that
    broke says nothing about registry scope, so nothing else is tried."""
    with_runtime_socket(node)
    with pytest.raises(ApplyError, match="failed"):
        node.engine(pull=broken_pull(NO_GRPC)).install(InstallRequest(REG, image=IMAGE))
    assert node.manager.restarts == []
    assert not [c for c in node.runner.calls if c[0] == "update-ca-certificates"]


def test_their_hosts_toml_is_given_back_when_the_verification_raises(node: Node) -> None:
    path = node.root / HOSTS_TOML.lstrip("/")
    path.parent.mkdir(parents=True)
    path.write_bytes(THEIRS)
    with_runtime_socket(node)
    with pytest.raises(ApplyError):
        node.engine(pull=broken_pull(NO_GRPC)).install(
            InstallRequest(REG, scope="registry", image=IMAGE, hosts_toml="append")
        )
    assert path.read_bytes() == THEIRS
    assert OUR_FILE not in node.files()
    assert REG.key not in node.engine().entries()


def test_a_rotation_whose_verification_raises_keeps_the_previous_anchor(
    node: Node, tmp_path: Path
) -> None:
    node.engine().install(InstallRequest(REG, scope="registry"))
    old_bytes = (node.root / OUR_FILE.lstrip("/")).read_bytes()
    old_entry = node.engine().entries()[REG.key]
    rotated = pki.make_pki(tmp_path / "rotated", names=("registry.test",))
    node.chain = tuple(cert_from_der(c.public_bytes(der())) for c in rotated.chain)
    with_runtime_socket(node)
    with pytest.raises(ApplyError, match="rolled back"):
        node.engine(pull=broken_pull(NO_GRPC)).install(
            InstallRequest(REG, scope="registry", image=IMAGE)
        )
    assert (node.root / OUR_FILE.lstrip("/")).read_bytes() == old_bytes
    assert node.engine().entries()[REG.key] == old_entry


def test_an_earlier_verified_install_stays_when_a_later_check_breaks(node: Node) -> None:
    """Nothing was written by the attempt whose verifier broke: the install that was
    verified when it was written is not taken away, and the message says so."""
    with_runtime_socket(node)
    node.engine(pull=Pulls(["pulled"])).install(InstallRequest(REG, image=IMAGE))
    with pytest.raises(ApplyError, match="earlier install is unchanged"):
        node.engine(pull=broken_pull(NO_GRPC)).install(InstallRequest(REG, image=IMAGE))
    assert OUR_FILE in node.files()
    assert node.engine().entries()[REG.key].state == "installed"


def test_the_ledger_says_installed_only_after_the_runtime_s_verdict(node: Node) -> None:
    with_runtime_socket(node)
    states: list[str] = []

    def pull(runtime: str, socket: str, image: str, timeout: float) -> PullVerdict:
        states.append(ledger(node)["entries"][REG.key]["state"])  # type: ignore[index]
        return PullVerdict("pulled", runtime, image, "sha256:0123", 0.01)

    result = node.engine(pull=pull).install(InstallRequest(REG, image=IMAGE))
    assert states == ["installing"]
    assert result.verification == "runtime"
    assert node.engine().entries()[REG.key].state == "installed"


def test_a_process_killed_while_the_runtime_judges_is_undone_at_the_next_start(
    node: Node,
) -> None:
    with_runtime_socket(node)
    with pytest.raises(Killed):
        node.engine(pull=broken_pull(Killed())).install(
            InstallRequest(REG, scope="registry", image=IMAGE)
        )
    assert node.engine().entries()[REG.key].state == "installing"
    fresh: Engine = node.engine()
    assert fresh.recover() == [REG.key]
    assert OUR_FILE not in node.files()
    assert REG.key not in fresh.entries()
