"""agent.core.hosts_toml: the one line `hostsToml: append` adds, and every case it refuses.

The edit must be exact: the file parses to what it was plus our `ca` for the host whose chain
we trust, nothing else moves, and the original bytes stay recoverable (the ledger keeps them).
"""

from __future__ import annotations

import tomllib

import pytest

from agent.core.errors import StoreError
from agent.core.hostport import parse_hostport
from agent.core.hosts_toml import append_ca

REG = parse_hostport("registry.test:5443")
CDN = parse_hostport("cdn.test:8443")
CA = "/etc/containerd/certs.d/registry.test:5443/ca-trust-agent-registry.test_5443.crt"


def test_the_server_gets_a_top_level_ca_before_the_first_table() -> None:
    original = (
        b'server = "https://registry.test:5443"\n'
        b'[host."https://mirror.test:5000"]\n  capabilities = ["pull", "resolve"]\n'
    )
    edited = append_ca(original, REG, REG, CA)
    doc = tomllib.loads(edited.decode())
    assert doc["ca"] == [CA]
    assert doc["host"] == {"https://mirror.test:5000": {"capabilities": ["pull", "resolve"]}}
    assert edited.startswith(original.split(b"\n")[0] + b"\nca = [")


def test_a_mirror_host_gets_its_ca_in_its_own_table() -> None:
    original = (
        b"# managed by the mirror operator\n"
        b'server = "https://registry.test:5443"\n'
        b"[host.'https://cdn.test:8443/v2']\n  capabilities = [\"pull\"]\n"
    )
    edited = append_ca(original, CDN, REG, CA)
    doc = tomllib.loads(edited.decode())
    assert doc["host"]["https://cdn.test:8443/v2"]["ca"] == [CA]
    assert "ca" not in doc


def test_no_server_means_the_registry_itself() -> None:
    edited = append_ca(b"# nothing but a comment\n", REG, REG, CA)
    assert tomllib.loads(edited.decode()) == {"ca": [CA]}


@pytest.mark.parametrize(
    ("original", "endpoint", "reason"),
    [
        (b'server = "https://other.test"\n', REG, "does not name registry.test:5443"),
        (
            b'server = "https://registry.test:5443"\nca = "/etc/their.crt"\n',
            REG,
            "already names a CA",
        ),
        (
            b'[host."https://cdn.test:8443"]\n  ca = ["/x.crt"]\n',
            CDN,
            "already names a CA",
        ),
        (b"this is [ not toml", REG, "not valid TOML"),
    ],
)
def test_anything_not_exact_is_refused(original: bytes, endpoint: object, reason: str) -> None:
    with pytest.raises(StoreError, match=reason) as err:
        append_ca(original, endpoint, REG, CA)  # type: ignore[arg-type]
    assert err.value.kind == "conflict"
