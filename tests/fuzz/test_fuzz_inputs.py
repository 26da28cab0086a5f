"""Hostile input to every parser on the agent's path: it fails with the module's own error or
succeeds with a value that is safe to use, never anything else, never a hang.

What reaches these parsers is not ours: pull-error text and pod statuses come from anyone who
can create a pod, certificates from any server the agent connects to, policy.yaml from the
cluster, host names from messages and the CLI, and os-release / config.toml / daemon.json
from the node. The last test pushes arbitrary accepted endpoint names through the real engine
on a host-root tree and checks that nothing is written outside the three trees the agent owns.

Examples per test: `FUZZ_EXAMPLES` (default 300, so CI stays fast; `scripts/fuzz` runs
thousands). Hangs are caught by the hypothesis deadline (each example, generously) and by
pytest-timeout for the whole test. When `FUZZ_REPORT` names a file, the number of examples
each test actually ran is appended to it (scripts/fuzz prints the total).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent.core.detect import PodPullFailure, PullFailure, parse_pull_error, pull_failures_from_pod
from agent.core.errors import (
    InputError,
    LedgerError,
    PolicyError,
    RuntimeRestartError,
    StoreError,
    TrustError,
)
from agent.core.hostport import HostPort, parse_hostport
from agent.core.os_families import FAMILIES as LAYOUTS
from agent.core.policy import Policy, parse_policy
from agent.core.trust import cert_from_der, parse_pem_bundle, pem_bundle
from agent.node.engine import Engine, InstallRequest
from agent.node.host import CommandResult, HostFS
from agent.node.ledger import Ledger
from agent.node.runtimes import RuntimeManager, containerd_socket, detect_runtimes
from agent.node.runtimes.containerd import load_containerd_config
from agent.node.stores import file_name, safe
from agent.node.stores.registry import registry_store
from agent.node.stores.system import parse_os_release, system_store
from lab.fakes.doubles import RecordingRunner as BundleRebuildingRunner
from lab.tls import pki

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
PROFILE = "ca-trust-agent-fuzz"
# The deadline is per example and generous on purpose: it catches a parser that spins
# (catastrophic backtracking, unbounded recursion), not one that is merely slow on 2 cores.
settings.register_profile(
    PROFILE,
    max_examples=EXAMPLES,
    deadline=dt.timedelta(seconds=5),
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
    print_blob=True,
    database=None,  # failures print a reproduce blob; no .hypothesis/ litter in the tree
)
FUZZ = settings.get_profile(PROFILE)

RAN: Counter[str] = Counter()
F = TypeVar("F", bound=Callable[..., None])


def counted(fn: F) -> F:
    """Count the examples a property really ran (hypothesis stops early on small spaces)."""

    def wrapper(*args: Any, **kwargs: Any) -> None:
        RAN[fn.__name__] += 1
        fn(*args, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    yield
    path = os.environ.get("FUZZ_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            for name, count in sorted(RAN.items()):
                fh.write(f"{name} {count}\n")


# --- shared strategies ------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=30,
)


def one_component(name: str) -> None:
    """A path component that cannot climb, split or end a path."""
    assert name, "empty component"
    assert "/" not in name and "\0" not in name and "\\" not in name
    assert name not in (".", "..")


# --- detect: pull-error text and pod statuses --------------------------------------------

PULL_FRAGMENTS = [
    "https://",
    'Head "',
    '": ',
    "/v2/",
    "[",
    "]",
    ":",
    "@",
    ".",
    "..",
    "/",
    "::1",
    "registry.test",
    "5443",
    "99999",
    "x509: ",
    "certificate signed by unknown authority",
    "certificate is valid for ",
    "certificate has expired or is not yet valid",
    ' (possibly because of "',
    '" while trying to verify candidate authority certificate "',
    '")',
    'failed to pull and unpack image "',
    "pinging container registry ",
    "\\",
    '"',
    "\x00",
    "İ",
    "\n",
]
pull_text = st.one_of(
    st.text(max_size=400),
    st.lists(st.one_of(st.sampled_from(PULL_FRAGMENTS), st.text(max_size=6)), max_size=60).map(
        "".join
    ),
)


def check_pull_failure(found: PullFailure | None) -> None:
    if found is None:
        return
    assert isinstance(found, PullFailure)
    for hp in (found.failing, found.registry):
        if hp is not None:
            assert isinstance(hp, HostPort)
            one_component(hp.reference)


@FUZZ
@given(message=pull_text, image=st.one_of(st.none(), st.text(max_size=60)))
@counted
def test_parse_pull_error_never_raises_and_hosts_are_safe(message: str, image: str | None) -> None:
    check_pull_failure(parse_pull_error(message, image))


pod_like = st.fixed_dictionaries(
    {
        "metadata": st.one_of(json_values, st.fixed_dictionaries({"name": json_values})),
        "spec": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {
                    "containers": st.lists(
                        st.dictionaries(st.sampled_from(["name", "image"]), json_values), max_size=3
                    )
                }
            ),
        ),
        "status": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {
                    "containerStatuses": st.lists(
                        st.fixed_dictionaries(
                            {
                                "name": json_values,
                                "image": st.one_of(json_values, pull_text),
                                "state": st.fixed_dictionaries(
                                    {
                                        "waiting": st.fixed_dictionaries(
                                            {
                                                "reason": st.sampled_from(
                                                    ["ErrImagePull", "ImagePullBackOff", "x"]
                                                ),
                                                "message": st.one_of(pull_text, json_values),
                                            }
                                        )
                                    }
                                ),
                            }
                        ),
                        max_size=3,
                    )
                }
            ),
        ),
    }
)


@FUZZ
@given(pod=st.one_of(json_values, pod_like))
@counted
def test_pull_failures_from_pod_reads_any_json_without_raising(pod: Any) -> None:
    found = pull_failures_from_pod(pod) if isinstance(pod, dict) else []
    assert isinstance(found, list)
    for item in found:
        assert isinstance(item, PodPullFailure)
        check_pull_failure(item.failure)


# --- trust: certificates from any server -------------------------------------------------


def _real_material() -> tuple[bytes, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        ca = pki.make_pki(Path(tmp), names=("registry.test",), ips=("127.0.0.1",))
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in ca.fullchain)
    return pem, ca.leaf.der


REAL_PEM, REAL_DER = _real_material()


def check_bundle(data: bytes) -> None:
    """Either TrustError, or certificates that round-trip exactly."""
    try:
        certs = parse_pem_bundle(data)
    except TrustError:
        return
    assert 1 <= len(certs) <= 16
    for cert in certs:
        assert cert_from_der(cert.der).sha256 == cert.sha256
    assert {c.sha256 for c in parse_pem_bundle(pem_bundle(certs))} == {c.sha256 for c in certs}


@FUZZ
@given(data=st.one_of(st.binary(max_size=2048), st.text(max_size=600).map(str.encode)))
@counted
def test_parse_pem_bundle_on_arbitrary_bytes(data: bytes) -> None:
    check_bundle(data)
    check_bundle(b"-----BEGIN CERTIFICATE-----\n" + data + b"\n-----END CERTIFICATE-----\n")


def flip_bits(data: bytes, positions: Sequence[int]) -> bytes:
    out = bytearray(data)
    for pos in positions:
        out[(pos // 8) % len(out)] ^= 1 << (pos % 8)
    return bytes(out)


@FUZZ
@given(
    which=st.sampled_from(["pem", "der"]),
    flips=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=6),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=4096)),
)
@counted
def test_parse_pem_bundle_on_mutated_real_certificates(
    which: str, flips: list[int], cut: int | None
) -> None:
    data = REAL_PEM if which == "pem" else REAL_DER
    data = flip_bits(data, flips)
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    check_bundle(data)


# --- policy.yaml -------------------------------------------------------------------------

YAML_FRAGMENTS = [
    "registries:",
    "\n  - host: ",
    "\n    pins: ",
    "\n    caPEM: |\n      ",
    "-----BEGIN CERTIFICATE-----",
    "scope: ",
    "dryRun: ",
    "&a ",
    "*a",
    "<<: ",
    "[",
    "]",
    "{",
    "}",
    "!!python/object:os.system",
    "registry.test:5443",
    "*.corp.example",
    "sha256:" + "AB" * 32,
    "\n",
    "  ",
    ": ",
    "- ",
    '"',
    "'",
    "#",
]
policy_values = st.recursive(
    st.one_of(
        json_scalars,
        st.sampled_from(["registry.test", "*.x", "[::1]:5000", "sha256:" + "00" * 32, "auto"]),
        st.just(REAL_PEM.decode()),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(
                st.sampled_from(["host", "pins", "caPEM", "scope", "x"]), st.text(max_size=8)
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=20,
)
policy_docs = st.dictionaries(
    st.sampled_from(
        [
            "scope",
            "restart",
            "maxConcurrentRestarts",
            "allowDockerRestartWithoutLiveRestore",
            "dryRun",
            "recyclePods",
            "registries",
            "registry",
        ]
    ),
    policy_values,
    max_size=7,
)


def check_policy(text: str) -> None:
    try:
        policy = parse_policy(text)
    except PolicyError as exc:
        assert exc.kind == "invalid"
        return
    assert isinstance(policy, Policy)
    for rule in policy.registries:
        assert rule.pattern == rule.pattern.lower()


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=500),
        st.lists(st.one_of(st.sampled_from(YAML_FRAGMENTS), st.text(max_size=6)), max_size=50).map(
            "".join
        ),
    )
)
@counted
def test_parse_policy_on_arbitrary_text(text: str) -> None:
    check_policy(text)


@FUZZ
@given(doc=policy_docs)
@counted
def test_parse_policy_on_generated_yaml_structures(doc: dict[str, Any]) -> None:
    check_policy(yaml.safe_dump(doc, allow_unicode=True))


def test_parse_policy_on_deep_nesting_and_alias_bombs() -> None:
    """Fixed worst cases hypothesis would rarely reach on its own."""
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    )
    for text in ("[" * 100_000, "{a: " * 50_000, "- " * 50_000 + "x", bomb):
        check_policy(text)


# --- host names become directory names ---------------------------------------------------

HOST_FRAGMENTS = [
    ".",
    "..",
    "/",
    "\\",
    "\0",
    "[",
    "]",
    ":",
    "%",
    "@",
    "_",
    "-",
    "*",
    " ",
    "\t",
    "::1",
    "::ffff:127.0.0.1",
    "fe80::1%eth0",
    "127.0.0.1",
    "0x7f.1",
    "registry",
    "test",
    "a" * 63,
    "b" * 64,
    "İ",
    "é",
    "\u2024",  # ONE DOT LEADER, looks like "."
    "\uff0e",  # FULLWIDTH FULL STOP
    "443",
    "0",
    "65535",
    "65536",
    "99999",
    "-1",
    "00443",
]
host_candidates = st.one_of(
    st.lists(
        st.one_of(st.sampled_from(HOST_FRAGMENTS), st.text(max_size=4)), min_size=1, max_size=12
    ).map("".join),
    st.text(max_size=40),
)
label = st.from_regex(r"\A[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\Z")
dns_names = st.lists(label, min_size=1, max_size=5).map(".".join).filter(lambda h: len(h) <= 253)
valid_hosts = st.one_of(
    dns_names,
    st.ip_addresses().map(str),
)
accepted_endpoints = st.builds(
    lambda host, port: HostPort(host, port) if port else HostPort(host),
    valid_hosts,
    st.one_of(st.none(), st.integers(min_value=1, max_value=65535)),
)


def check_hostport(hp: HostPort) -> None:
    one_component(hp.reference)
    one_component(hp.key)
    for name in (safe(hp.key), safe(hp.reference)):
        one_component(name)
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789._-")
    assert 1 <= hp.port <= 65535
    # The ledger stores `key` and reads it back with parse_hostport: it must round-trip.
    assert parse_hostport(hp.key) == hp
    assert parse_hostport(hp.reference) == hp


@FUZZ
@given(text=st.one_of(host_candidates, valid_hosts))
@counted
def test_parse_hostport_accepts_only_names_that_are_one_safe_path_component(text: str) -> None:
    try:
        hp = parse_hostport(text)
    except InputError:
        return
    check_hostport(hp)


@FUZZ
@given(host=valid_hosts, port=st.integers(min_value=-(1 << 20), max_value=1 << 20))
@counted
def test_ports_out_of_range_are_refused(host: str, port: int) -> None:
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        hp = parse_hostport(text)
    except InputError:
        assert not 1 <= port <= 65535 or len(str(port)) > 5
        return
    assert 1 <= port <= 65535 and hp.port == port
    check_hostport(hp)


def _try_parse(text: str) -> HostPort | None:
    try:
        return parse_hostport(text)
    except InputError:
        return None


def _twin(hp: HostPort) -> HostPort | None:
    """A DNS-name endpoint spelled like `hp`'s file name, when one is valid."""
    host = safe(hp.bracketed)
    return None if host == hp.host else _try_parse(f"{host}:{hp.port}")


@FUZZ
@given(hp=st.one_of(accepted_endpoints, st.ip_addresses(v=6).map(lambda ip: HostPort(str(ip)))))
@counted
def test_distinct_endpoints_never_share_a_file_name(hp: HostPort) -> None:
    twin = _twin(hp)
    assume(twin is not None and twin != hp)
    assert twin is not None
    assert file_name(twin.key) != file_name(hp.key), (hp.key, twin.key)


# --- node files: os-release, containerd config.toml, docker daemon.json ------------------


def host_tree(files: dict[str, bytes]) -> tuple[tempfile.TemporaryDirectory[str], HostFS]:
    tmp = tempfile.TemporaryDirectory(prefix="fuzz-host-")
    for rel, data in files.items():
        path = Path(tmp.name, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return tmp, HostFS(tmp.name)


OS_RELEASE_FRAGMENTS = [
    "ID=",
    "ID_LIKE=",
    "debian",
    "rhel fedora",
    '"',
    "'",
    "\\",
    "#",
    "=",
    "\n",
    " ",
    "$(reboot)",
    "`id`",
    "\0",
    "ÿ",
]


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=300),
        st.lists(
            st.one_of(st.sampled_from(OS_RELEASE_FRAGMENTS), st.text(max_size=5)), max_size=40
        ).map("".join),
    )
)
@counted
def test_os_release_parsing_never_raises_and_picks_a_known_layout(text: str) -> None:
    fields = parse_os_release(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    tmp, fs = host_tree({"etc/os-release": text.encode("utf-8", "surrogatepass")})
    with tmp:
        try:
            store = system_store(fs)
        except StoreError as exc:
            assert exc.kind == "unsupported-os"
            return
    assert store.anchor_dir == LAYOUTS[store.family].anchor_dir


TOML_FRAGMENTS = [
    '[plugins."io.containerd.grpc.v1.cri".registry]\n',
    '[plugins."io.containerd.cri.v1.images".registry]\n',
    "[grpc]\n",
    "address = ",
    "config_path = ",
    '"/etc/containerd/certs.d"',
    '"../../etc"',
    '"/a/../b"',
    '"relative"',
    '"/x:/y"',
    '"/\\u0000"',
    "version = 2\n",
    "[",
    "]",
    "{",
    "}",
    "=",
    "\n",
    '"',
    "'''",
    "#",
]


def check_containerd(fs: HostFS) -> None:
    try:
        config = load_containerd_config(fs)
    except StoreError as exc:
        assert exc.kind == "unavailable"
    else:
        assert config is None or isinstance(config, dict)
    try:
        store = registry_store(fs, "containerd")
    except StoreError as exc:
        assert exc.kind == "unavailable"
    else:
        assert store.certs_dir.startswith("/")
        assert ".." not in store.certs_dir.split("/") and "\0" not in store.certs_dir
    assert isinstance(containerd_socket(fs), str)  # a broken config falls back to the default


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=300),
        st.lists(st.one_of(st.sampled_from(TOML_FRAGMENTS), st.text(max_size=5)), max_size=40).map(
            "".join
        ),
        st.builds(
            lambda table, path: f"{table}config_path = {json.dumps(path)}\n",
            st.sampled_from(TOML_FRAGMENTS[:2]),
            st.text(max_size=40),
        ),
    )
)
@counted
def test_containerd_config_toml_parsing_is_store_error_or_a_safe_directory(text: str) -> None:
    tmp, fs = host_tree({"etc/containerd/config.toml": text.encode("utf-8", "surrogatepass")})
    with tmp:
        check_containerd(fs)


def test_deeply_nested_containerd_config_is_a_store_error() -> None:
    """Hypothesis rarely builds 100,000 brackets: TOML parsing recurses, and a
    RecursionError must end as the store's own error, not crash detect_runtimes."""
    tmp, fs = host_tree({"etc/containerd/config.toml": b"a = " + b"[" * 100_000})
    with tmp:
        check_containerd(fs)


class _NoRunner:
    def run(self, argv: Sequence[str], *, timeout: float = 120.0) -> CommandResult:
        raise AssertionError(f"no command expected, got {argv}")


def check_daemon_json(data: bytes) -> None:
    tmp, fs = host_tree({"etc/docker/daemon.json": data})
    with tmp:
        manager = RuntimeManager(fs, _NoRunner())
        try:
            manager.check_restart_allowed("docker", allow_docker_without_live_restore=False)
        except RuntimeRestartError as exc:
            assert exc.kind == "refused"
            return
    doc = json.loads(data)
    assert isinstance(doc, dict) and doc.get("live-restore") is True


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n + b"{" * n),
        st.dictionaries(
            st.sampled_from(["live-restore", "Live-Restore", "debug"]), json_values, max_size=3
        ).map(lambda v: json.dumps(v).encode()),
    )
)
@counted
def test_docker_daemon_json_allows_a_restart_only_with_live_restore_true(data: bytes) -> None:
    check_daemon_json(data)


def test_deeply_nested_daemon_json_is_a_refusal() -> None:
    """json.loads recurses too: a nesting bomb in daemon.json is a refusal, not a crash."""
    check_daemon_json(b"[" * 100_000)


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n),
    )
)
@counted
def test_a_ledger_we_cannot_read_is_a_ledger_error(data: bytes) -> None:
    tmp, fs = host_tree({"var/lib/ca-trust-agent/ledger.json": data})
    with tmp:
        try:
            entries = Ledger(fs).entries()
        except LedgerError as exc:
            assert exc.kind == "corrupt"
            return
    assert isinstance(entries, dict)


# A node file can be anything an admin (or an attacker with a hostPath) put there.
SPECIAL_FILES = ("fifo", "directory", "symlink-loop", "2-GiB-sparse", "link-out-of-the-root")
NODE_FILE_READERS: dict[str, Callable[[HostFS], object]] = {
    "/etc/os-release": system_store,
    "/etc/containerd/config.toml": lambda fs: (
        containerd_socket(fs),
        detect_runtimes(fs),
        registry_store(fs, "containerd"),
    ),
    "/etc/docker/daemon.json": lambda fs: RuntimeManager(fs, _NoRunner()).check_restart_allowed(
        "docker", allow_docker_without_live_restore=False
    ),
    "/var/lib/ca-trust-agent/ledger.json": lambda fs: Ledger(fs).entries(),
}
EXPECTED_ERRORS = {
    "/etc/os-release": StoreError,
    "/etc/containerd/config.toml": StoreError,
    "/etc/docker/daemon.json": RuntimeRestartError,
    "/var/lib/ca-trust-agent/ledger.json": (StoreError, LedgerError),
}


def plant(root: Path, host_path: str, kind: str) -> None:
    path = root / host_path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink-loop":
        path.symlink_to(path.name)
    elif kind == "2-GiB-sparse":
        with path.open("wb") as fh:
            fh.truncate(2 << 30)
    else:  # an absolute link is resolved inside the host root, as chroot would
        path.symlink_to("/proc/self/environ")


def _special_cases() -> list[object]:
    cases = []
    for host_path in NODE_FILE_READERS:
        for kind in SPECIAL_FILES:
            marks: list[pytest.MarkDecorator] = []
            cases.append(pytest.param(host_path, kind, marks=marks, id=f"{host_path}-{kind}"))
    return cases


@pytest.mark.parametrize(("host_path", "kind"), _special_cases())
def test_a_special_file_where_a_node_file_should_be_is_the_modules_error(
    tmp_path: Path, host_path: str, kind: str
) -> None:
    """Never a hang (a FIFO), never a huge read, never a crash: the owner's error or a value."""
    plant(tmp_path, host_path, kind)
    with contextlib.suppress(EXPECTED_ERRORS[host_path]):
        NODE_FILE_READERS[host_path](HostFS(str(tmp_path)))


# --- the engine writes only where it may ------------------------------------------------

ALLOWED_TREES = (
    "etc/containerd/certs.d",
    "usr/local/share/ca-certificates",
    "var/lib/ca-trust-agent",
)
LEDGER_REL = "var/lib/ca-trust-agent/ledger.json"
PRESET = {
    "etc/containerd/config.toml": b'[plugins."io.containerd.grpc.v1.cri".registry]\n'
    b'config_path = "/etc/containerd/certs.d"\n',
    "etc/os-release": b"ID=debian\n",
    "usr/local/share/ca-certificates/.keep": b"",
    # the bundle the real tool rebuilds: the engine reads it back after every refresh
    "etc/ssl/certs/ca-certificates.crt": b"",
}


class RecordingRunner:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], *, timeout: float = 120.0) -> CommandResult:
        self.calls.append(tuple(argv))
        return CommandResult(tuple(argv), 0, "", "", 0.0, False)


def everything_under(root: str) -> set[str]:
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return found


def within_allowed(rel: str) -> bool:
    return any(
        rel == t or rel.startswith(t + "/") or t.startswith(rel + "/") for t in ALLOWED_TREES
    )


def _anchor_pem() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        ca = pki.make_pki(Path(tmp))
    return ca.root.pem


REAL_ANCHOR_PEM = _anchor_pem()


@FUZZ
@given(
    endpoint=st.one_of(
        accepted_endpoints,
        host_candidates.map(_try_parse).filter(lambda hp: hp is not None),
    ),
    registry=st.one_of(st.none(), accepted_endpoints),
    scope=st.sampled_from(["registry", "system"]),
)
@counted
def test_engine_install_and_remove_touch_only_the_agents_own_trees(
    endpoint: HostPort | None, registry: HostPort | None, scope: str
) -> None:
    assert endpoint is not None
    tmp, fs = host_tree(dict(PRESET))
    with tmp:
        before = everything_under(tmp.name)
        engine = Engine(fs, BundleRebuildingRunner(tmp.name), runtimes=("containerd",))
        req = InstallRequest(
            endpoint=endpoint,
            registry=registry,
            scope=scope,
            restart="never",
            ca_pem=REAL_ANCHOR_PEM,
            source="policy",
        )
        result = engine.install(req)
        assert result.status == "installed"
        created = everything_under(tmp.name) - before
        assert created, "install wrote nothing"
        for rel in created:
            assert within_allowed(rel), f"install created {rel} outside the agent's trees"
            real = os.path.realpath(os.path.join(tmp.name, rel))
            assert real.startswith(os.path.realpath(tmp.name) + os.sep)
        ours = [r for r in created if os.path.basename(r).startswith("ca-trust-agent-")]
        assert len(ours) == 1 and ours[0].endswith(".crt")
        one_component(os.path.basename(ours[0]))
        engine.remove(endpoint, restart="never")
        left = everything_under(tmp.name) - before
        assert left <= {"var", "var/lib", "var/lib/ca-trust-agent", LEDGER_REL}, left
        assert engine.entries() == {}
