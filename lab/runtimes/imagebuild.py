"""Build the agent's image from the project's Dockerfile with a real dockerd and BuildKit.

The Dockerfile's base, `python:3.11-slim-bookworm`, cannot be pulled on these machines (no
registry but Debian's and PyPI), so the lab makes a stand-in of it with `mmdebstrap`:
Debian bookworm (minbase) with python3 3.11, pip, venv, ca-certificates and util-linux,
`python` on PATH, no PEP 668 marker (the upstream image has none), and pip configured like
this machine (its CA bundle, so pip inside the build reaches PyPI through the same path
pip outside it does). The root filesystem tarball is cached under `.lab-cache/` (about
25 s to make); `docker import` turns it into an image in the test's own dockerd, and the
build gets it through the Dockerfile's `PYTHON_IMAGE` build argument.

The build runs with `--network host` (dockerd runs with `--bridge=none`) and
`DOCKER_BUILDKIT=1`, through the Debian docker CLI of the same release as dockerd.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from lab.procs import LabError, clean_env
from lab.runtimes.dockerd import DOCKER_CLI, Dockerd

REPO = Path(__file__).resolve().parents[2]
# The runtime dependencies the Dockerfile installs, hash-pinned (scripts/lock writes it).
IMAGE_LOCK = REPO / "requirements" / "image.lock"
CACHE = REPO / ".lab-cache"
STANDIN_TAG = "ca-trust-agent-lab/python:3.11-slim-bookworm-standin"
STANDIN_PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates", "util-linux")
# Where the stand-in keeps this machine's CA bundle for pip (and only pip): the image's own
# /etc/ssl/certs stays Debian's, like the upstream base.
PIP_CA_IN_IMAGE = "/etc/pip-build-ca.crt"
MACHINE_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def have_image_tools() -> str | None:
    """None when the image can be built here, else what is missing."""
    missing = [tool for tool in ("mmdebstrap", "dockerd") if shutil.which(tool) is None]
    if not Path(DOCKER_CLI).exists():
        missing.append(DOCKER_CLI)
    return f"missing {', '.join(missing)} (scripts/bootstrap installs them)" if missing else None


def _pip_conf() -> str:
    lines = ["[global]", f"cert = {PIP_CA_IN_IMAGE}", "disable-pip-version-check = true"]
    return "\n".join(lines) + "\n"


def standin_rootfs(cache: Path = CACHE) -> Path:
    """The stand-in base's root filesystem as a tarball, made once and cached."""
    out = cache / "python-3.11-bookworm-standin.tar"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="standin-") as tmp:
        conf = Path(tmp) / "pip.conf"
        conf.write_text(_pip_conf())
        partial = Path(tmp) / "rootfs.tar"
        hooks = [
            'ln -sf python3 "$1/usr/bin/python"',
            # the upstream python image installs with pip freely; Debian's marker would not
            'rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
            f"upload {conf} /etc/pip.conf",
            f"upload {MACHINE_CA_BUNDLE} {PIP_CA_IN_IMAGE}",
            # apt lists and caches: the upstream slim image ships without them too
            'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
        ]
        argv = [
            "mmdebstrap",
            "--quiet",
            "--mode=root",
            "--variant=minbase",
            f"--include={','.join(STANDIN_PACKAGES)}",
            *(f"--customize-hook={hook}" for hook in hooks),
            "bookworm",
            str(partial),
        ]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
        if result.returncode != 0:
            raise LabError(f"mmdebstrap failed ({result.returncode}):\n{result.stderr[-3000:]}")
        shutil.move(str(partial), out)
    return out


def docker(daemon: Dockerd, *args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    """The docker CLI against the lab dockerd, BuildKit on, nothing from the caller's env."""
    env = clean_env({"HOME": str(daemon.layout.home), "DOCKER_BUILDKIT": "1"})
    return subprocess.run(
        [DOCKER_CLI, "-H", f"unix://{daemon.layout.socket}", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _checked(result: subprocess.CompletedProcess[str], what: str) -> str:
    if result.returncode != 0:
        raise LabError(f"{what} failed ({result.returncode}):\n{result.stdout[-2000:]}"
                       f"\n{result.stderr[-4000:]}")
    return result.stdout


def import_standin(daemon: Dockerd, rootfs: Path) -> str:
    """`docker import` the stand-in with the upstream image's PATH and CMD."""
    _checked(
        docker(
            daemon,
            "import",
            "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change", "ENV LANG=C.UTF-8",
            "--change", 'CMD ["python3"]',
            str(rootfs),
            STANDIN_TAG,
        ),
        "docker import",
    )
    return STANDIN_TAG


@dataclass(frozen=True)
class Layer:
    size: int  # bytes, as `docker history` reports them
    created_by: str


@dataclass(frozen=True)
class Built:
    tag: str
    base: str
    seconds: float
    output: str  # BuildKit's plain progress: the steps, pip's output

    def describe(self) -> str:
        return f"{self.tag} from {self.base} in {self.seconds:.1f}s"


def build_image(
    daemon: Dockerd, base: str, tag: str = "ca-trust-agent:lab", context: Path = REPO
) -> Built:
    """`docker build` of the project's Dockerfile on `base`, as CI and operators run it."""
    began = time.monotonic()
    out = _checked(
        docker(
            daemon,
            "build",
            "--progress=plain",
            "--network=host",
            "--build-arg", f"PYTHON_IMAGE={base}",
            "--tag", tag,
            str(context),
        ),
        "docker build",
    )
    return Built(tag, base, time.monotonic() - began, out)


def export_stage(
    daemon: Dockerd, base: str, stage: str, dest: Path, context: Path = REPO
) -> float:
    """The files of one Dockerfile stage written into `dest`, as a release exports the SBOM
    (`docker build --target STAGE --output type=local,dest=DEST`); the seconds it took."""
    began = time.monotonic()
    _checked(
        docker(
            daemon,
            "build",
            "--progress=plain",
            "--network=host",
            "--build-arg", f"PYTHON_IMAGE={base}",
            "--target", stage,
            "--output", f"type=local,dest={dest}",
            str(context),
        ),
        f"docker build --target {stage}",
    )
    return time.monotonic() - began


def locked(lock: Path = IMAGE_LOCK) -> dict[str, str]:
    """A lock's pins: normalized distribution name -> version."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", lock.read_text(), re.MULTILINE)
    return {canonicalize_name(name): version for name, version in pins}


def image_size(daemon: Dockerd, ref: str) -> int:
    out = _checked(docker(daemon, "image", "inspect", "--format", "{{.Size}}", ref), "inspect")
    return int(out.strip())


def layers(daemon: Dockerd, ref: str) -> list[Layer]:
    """The image's layers, newest first, with what created each (no truncation)."""
    out = _checked(
        docker(daemon, "history", "--no-trunc", "--human=false", "--format", "{{json .}}", ref),
        "docker history",
    )
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [Layer(int(r.get("Size") or 0), str(r.get("CreatedBy") or "")) for r in rows]

