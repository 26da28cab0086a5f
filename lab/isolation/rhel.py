"""A RHEL-family node's OS trust store, run by the real p11-kit, inside a private mount namespace.

RHEL's `update-ca-trust` is not packaged for Debian, but its engine is: the script only runs
p11-kit's `extract` once per output file. `rhel_trust()` gives the current (private) mount
namespace the layout of RHEL 7-10, CentOS, EulerOS, openEuler and Fedora:

    /etc/pki/ca-trust/source/{anchors,blocklist}/     what the admin (and the agent) adds
    /usr/share/pki/ca-trust-source/                   the distribution's roots
    /etc/pki/ca-trust/extracted/{pem,openssl,java,edk2}/   what update-ca-trust writes
    /etc/pki/tls/certs/ca-bundle.crt -> .../extracted/pem/tls-ca-bundle.pem   (package link)

points Debian's p11-kit trust module at the two source trees (a module config in
/etc/pkcs11/modules, which overrides the packaged one of the same name), puts one of two
`update-ca-trust` drivers first on the clean PATH (/usr/local/sbin), empties
/etc/ssl/certs (so Go, like on RHEL, reads /etc/pki/tls/certs/ca-bundle.crt) and binds an
os-release of the family over /etc/os-release. The drivers run the `p11-kit extract`
commands the real scripts run:

- "el": RHEL 7/8/9.0-9.5 and openEuler: no `set -e`, every argument ignored, so a failed
  extract still exits 0;
- "fedora": later RHEL 9 minors, RHEL 10, Fedora: `set -eu`, only `extract` and `-o DIR`.

Everything is tmpfs or a bind mount of the test's own files; mountpoints that do not exist
on this machine (/etc/pki, /usr/share/pki, /etc/pkcs11) are created and removed again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lab.isolation.sandbox import HOW_TO_RUN, in_private_mount_namespace
from lab.procs import LabError, clean_env

ANCHORS = Path("/etc/pki/ca-trust/source/anchors")
EXTRACTED = Path("/etc/pki/ca-trust/extracted")
TLS_BUNDLE = EXTRACTED / "pem/tls-ca-bundle.pem"
CA_BUNDLE_LINK = Path("/etc/pki/tls/certs/ca-bundle.crt")
DISTRO_SOURCE = Path("/usr/share/pki/ca-trust-source")
MODULE_CONFIG = "x-init-reserved: paths=/etc/pki/ca-trust/source:/usr/share/pki/ca-trust-source\n"
MOZILLA_ROOTS = Path("/usr/share/ca-certificates/mozilla")
REPO = Path(__file__).resolve().parents[2]
OS_RELEASE_FIXTURES = REPO / "tests/fixtures/os-release"

# The outputs and flags of the real script (ca-certificates' update-ca-trust, EL8/9).
_EXTRACTS = """\
p11-kit extract --format=openssl-bundle --filter=certificates --overwrite --comment \
$DEST/openssl/ca-bundle.trust.crt
p11-kit extract --format=pem-bundle --filter=ca-anchors --overwrite --comment \
--purpose server-auth $DEST/pem/tls-ca-bundle.pem
p11-kit extract --format=pem-bundle --filter=ca-anchors --overwrite --comment \
--purpose email $DEST/pem/email-ca-bundle.pem
p11-kit extract --format=pem-bundle --filter=ca-anchors --overwrite --comment \
--purpose code-signing $DEST/pem/objsign-ca-bundle.pem
p11-kit extract --format=java-cacerts --filter=ca-anchors --overwrite \
--purpose server-auth $DEST/java/cacerts
p11-kit extract --format=edk2-cacerts --filter=ca-anchors --overwrite \
--purpose=server-auth $DEST/edk2/cacerts.bin
"""

EL_DRIVER = f"""#!/bin/sh
# Test driver in the style of RHEL 7/8/9 and openEuler's update-ca-trust: no `set -e`, and
# every argument is ignored ("enable", "-o DIR": the system store is rewritten anyway).
DEST=/etc/pki/ca-trust/extracted
export P11_KIT_NO_USER_CONFIG=1
{_EXTRACTS}"""

FEDORA_DRIVER = f"""#!/bin/sh
# Test driver in the style of Fedora / RHEL 10's update-ca-trust: strict, and only the
# `extract` command (or none) and `-o DIR` are accepted.
set -eu
DEST=/etc/pki/ca-trust/extracted
export P11_KIT_NO_USER_CONFIG=1
while [ $# -gt 0 ]; do
  case "$1" in
    extract) ;;
    -o) DEST="$2"; shift ;;
    --output=*) DEST="${{1#--output=}}" ;;
    *) echo "Error: unknown command: '$1', see 'update-ca-trust --help' for usage." >&2; exit 1 ;;
  esac
  shift
done
{_EXTRACTS}"""

DRIVERS = {"el": EL_DRIVER, "fedora": FEDORA_DRIVER}


@dataclass
class RhelStore:
    """The mounted layout; `extract()` runs the driver as the agent's runner would."""

    base: Path
    style: str
    mounts: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    lock_fd: int | None = None  # shared flock on /etc while our mountpoints are in use

    def update_ca_trust(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["update-ca-trust", *args],
            env=clean_env({"PATH": "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"}),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def extract(self) -> float:
        """Run `update-ca-trust extract`; LabError unless it exits 0. Returns the seconds."""
        began = time.monotonic()
        done = self.update_ca_trust("extract")
        if done.returncode != 0:
            raise LabError(f"update-ca-trust extract failed: {done.stderr.strip()}")
        return time.monotonic() - began


def _run(*argv: str) -> None:
    done = subprocess.run(list(argv), env=clean_env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


def _share_mountpoints(store: RhelStore) -> None:
    """Mountpoints we create (/etc/pki, ...) live on the machine's real file system, which
    every mount namespace shares: another test run's rmdir of /etc/pki would detach our
    tmpfs from it (Linux allows removing a mountpoint of another namespace). Every user holds
    a shared flock on /etc's inode; only the last one, alone, removes them."""
    store.lock_fd = os.open("/etc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(store.lock_fd, fcntl.LOCK_SH)


def _mount_tmpfs(store: RhelStore, path: str) -> None:
    if not os.path.lexists(path):
        os.makedirs(path)
        store.created.append(path)
    _run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", path)
    store.mounts.append(path)


def _bind(store: RhelStore, source: Path, path: str) -> None:
    _run("mount", "--bind", str(source), path)
    store.mounts.append(path)


def _undo(store: RhelStore) -> None:
    for path in reversed(store.mounts):
        if subprocess.run(["umount", path], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", path], capture_output=True, check=False)
    if store.lock_fd is None:
        return
    try:
        fcntl.flock(store.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass  # another run still uses the mountpoints: the last one removes them
    else:
        for path in reversed(store.created):
            with contextlib.suppress(OSError):
                os.rmdir(path)
    finally:
        os.close(store.lock_fd)


def _layout(store: RhelStore, roots: int) -> None:
    for sub in ("source/anchors", "source/blocklist", "extracted/pem", "extracted/openssl"):
        os.makedirs(f"/etc/pki/ca-trust/{sub}")
    for sub in ("extracted/java", "extracted/edk2"):
        os.makedirs(f"/etc/pki/ca-trust/{sub}")
    os.makedirs(DISTRO_SOURCE / "anchors")
    # The distribution's roots (RHEL ships them as one .p11-kit file; PEM files load alike).
    for src in sorted(MOZILLA_ROOTS.glob("*.crt"))[:roots]:
        (DISTRO_SOURCE / "anchors" / src.name).write_bytes(src.read_bytes())
    os.makedirs("/etc/pki/tls/certs")
    os.makedirs("/etc/pki/java")
    # Package-owned links, as ca-certificates.rpm ships them.
    os.symlink(TLS_BUNDLE, CA_BUNDLE_LINK)
    os.symlink(TLS_BUNDLE, "/etc/pki/tls/cert.pem")
    os.symlink(EXTRACTED / "java/cacerts", "/etc/pki/java/cacerts")
    os.makedirs("/etc/pkcs11/modules")
    Path("/etc/pkcs11/modules/p11-kit-trust.module").write_text(MODULE_CONFIG)


@contextlib.contextmanager
def rhel_trust(
    base: Path, *, style: str = "el", os_release: str = "euleros-2.0", roots: int = 145
) -> Iterator[RhelStore]:
    """Mount the RHEL-family store (module doc) for the duration; `roots` distro roots."""
    if os.geteuid() != 0 or not in_private_mount_namespace():
        raise LabError(f"refusing to mount a RHEL layout over this machine: {HOW_TO_RUN}")
    if style not in DRIVERS:
        raise LabError(f"unknown update-ca-trust style {style!r}: {sorted(DRIVERS)}")
    base.mkdir(parents=True, exist_ok=True)
    store = RhelStore(base=base, style=style)
    bin_dir = base / "sbin"
    bin_dir.mkdir(exist_ok=True)
    driver = bin_dir / "update-ca-trust"
    driver.write_text(DRIVERS[style])
    driver.chmod(0o755)
    release = base / "os-release"
    release.write_bytes((OS_RELEASE_FIXTURES / os_release).read_bytes())
    try:
        _share_mountpoints(store)
        for path in ("/etc/pki", "/usr/share/pki", "/etc/pkcs11", "/etc/ssl/certs"):
            _mount_tmpfs(store, path)
        _bind(store, bin_dir, "/usr/local/sbin")
        _bind(store, release, "/etc/os-release")
        _layout(store, roots)
        store.extract()  # a node comes with its bundles already extracted
        yield store
    finally:
        _undo(store)


# --- SUSE: the same engine, other paths -------------------------------------------------------

SUSE_ANCHORS = Path("/etc/pki/trust/anchors")
SUSE_BUNDLE = Path("/var/lib/ca-certificates/ca-bundle.pem")
SUSE_BUNDLE_LINK = Path("/etc/ssl/ca-bundle.pem")
SUSE_MODULE_CONFIG = "x-init-reserved: paths=/etc/pki/trust:/usr/share/pki/trust\n"

# SLES 15 / openSUSE's update-ca-certificates runs the hooks in
# /usr/lib/ca-certificates/update.d; the one for the bundle Go reads (certbundle.run) is a
# `trust extract` of the server-auth CA anchors into /var/lib/ca-certificates/ca-bundle.pem.
SUSE_DRIVER = """#!/bin/sh
# Test driver in the style of SUSE's update-ca-certificates (certbundle.run's extract).
set -e
export P11_KIT_NO_USER_CONFIG=1
trust extract --format=pem-bundle --filter=ca-anchors --overwrite --comment \
--purpose server-auth /var/lib/ca-certificates/ca-bundle.pem
"""


def _suse_layout(roots: int) -> None:
    os.makedirs(SUSE_ANCHORS)
    os.makedirs("/usr/share/pki/trust/anchors")
    for src in sorted(MOZILLA_ROOTS.glob("*.crt"))[:roots]:
        Path("/usr/share/pki/trust/anchors", src.name).write_bytes(src.read_bytes())
    os.makedirs("/etc/ssl/certs")
    os.symlink(SUSE_BUNDLE, SUSE_BUNDLE_LINK)  # as ca-certificates.rpm ships it
    os.makedirs("/etc/pkcs11/modules")
    Path("/etc/pkcs11/modules/p11-kit-trust.module").write_text(SUSE_MODULE_CONFIG)


@contextlib.contextmanager
def suse_trust(base: Path, *, os_release: str = "sles-15", roots: int = 145) -> Iterator[RhelStore]:
    """SUSE's store on the real p11-kit: /etc/pki/trust/anchors -> /var/lib/ca-certificates,
    Go reading /etc/ssl/ca-bundle.pem. /etc/ssl becomes a tmpfs holding only that link, an
    empty certs/ and the machine's openssl.cnf. `update_ca_trust()` runs the SUSE driver."""
    if os.geteuid() != 0 or not in_private_mount_namespace():
        raise LabError(f"refusing to mount a SUSE layout over this machine: {HOW_TO_RUN}")
    base.mkdir(parents=True, exist_ok=True)
    store = RhelStore(base=base, style="suse")
    bin_dir = base / "sbin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("update-ca-certificates", "update-ca-trust"):  # the second: RhelStore's API
        (bin_dir / name).write_text(SUSE_DRIVER)
        (bin_dir / name).chmod(0o755)
    release = base / "os-release"
    release.write_bytes((OS_RELEASE_FIXTURES / os_release).read_bytes())
    openssl_cnf = Path("/etc/ssl/openssl.cnf").read_bytes()
    try:
        _share_mountpoints(store)
        for path in (
            "/etc/pki",
            "/usr/share/pki",
            "/etc/pkcs11",
            "/etc/ssl",
            str(SUSE_BUNDLE.parent),
        ):
            _mount_tmpfs(store, path)
        Path("/etc/ssl/openssl.cnf").write_bytes(openssl_cnf)
        _bind(store, bin_dir, "/usr/local/sbin")
        _bind(store, release, "/etc/os-release")
        _suse_layout(roots)
        store.extract()
        yield store
    finally:
        _undo(store)
