"""A minimal CRI client: what kubelet asks containerd, over its gRPC socket.

Pulls are tested through the CRI and never through `ctr`: ctr resolves and fetches in a
new process of its own, so it sees a freshly added CA while the containerd daemon (and
kubelet through it) still fails. The proto is a subset of k8s.io/cri-api runtime/v1 with
the upstream field numbers (cri-runtime-v1-min.proto beside this module, a copy of the one in
shared/, kept in the repo because CI only has the repo); it is compiled on first use into
lab/runtimes/_proto/ (git-ignored).
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self

import grpc

_HERE = Path(__file__).resolve().parent
PROTO = _HERE / "cri-runtime-v1-min.proto"
OUT = _HERE / "_proto"
_MODULE = "cri_runtime_v1_min"  # protoc maps '-' in the file name to '_'
_lock = threading.Lock()


def _compile() -> None:
    from grpc_tools import protoc  # only needed when the stubs are stale

    OUT.mkdir(exist_ok=True)
    # compile beside, then rename file by file: a concurrent importer never sees half a file
    with tempfile.TemporaryDirectory(dir=OUT) as work:
        rc = protoc.main(
            [
                "protoc",
                f"-I{_HERE}",
                f"--python_out={work}",
                f"--grpc_python_out={work}",
                str(PROTO),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed on {PROTO} (exit {rc})")
        for name in os.listdir(work):
            os.replace(os.path.join(work, name), OUT / name)


def stubs() -> tuple[ModuleType, ModuleType]:
    """(messages, services) modules, compiled when missing or older than the proto."""
    with _lock:
        target = OUT / f"{_MODULE}_pb2_grpc.py"
        if not target.exists() or target.stat().st_mtime < PROTO.stat().st_mtime:
            _compile()
        if str(OUT) not in sys.path:
            sys.path.insert(0, str(OUT))  # the generated _grpc module imports _pb2 top-level
        return importlib.import_module(f"{_MODULE}_pb2"), importlib.import_module(
            f"{_MODULE}_pb2_grpc"
        )


@dataclass(frozen=True)
class RuntimeVersion:
    runtime_name: str  # "containerd"
    runtime_version: str  # "1.6.20"
    runtime_api_version: str  # "v1"


@dataclass(frozen=True)
class PullResult:
    image: str
    ok: bool
    image_ref: str  # sha256:... image id when ok
    error: str  # the gRPC status details when not ok (what kubelet puts in the pod event)
    code: str  # gRPC status code name, "OK" on success


class CriClient:
    """Blocking CRI calls over a unix socket; a context manager closing the channel."""

    def __init__(self, socket_path: str | Path, *, timeout: float = 60.0) -> None:
        self._pb, grpc_mod = stubs()
        self.socket_path = str(socket_path)
        self.timeout = timeout
        self._channel = grpc.insecure_channel(f"unix://{os.path.abspath(self.socket_path)}")
        self._runtime: Any = grpc_mod.RuntimeServiceStub(self._channel)
        self._images: Any = grpc_mod.ImageServiceStub(self._channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def version(self, *, timeout: float | None = None) -> RuntimeVersion:
        reply = self._runtime.Version(
            self._pb.VersionRequest(version="v1"), timeout=timeout or self.timeout
        )
        return RuntimeVersion(
            reply.runtime_name, reply.runtime_version, reply.runtime_api_version
        )

    def pull(self, image: str) -> PullResult:
        """PullImage as kubelet sends it; a refusal is a result, not an exception."""
        request = self._pb.PullImageRequest(image=self._pb.ImageSpec(image=image))
        try:
            reply = self._images.PullImage(request, timeout=self.timeout)
        except grpc.RpcError as err:
            return PullResult(image, False, "", str(err.details()), err.code().name)
        return PullResult(image, True, reply.image_ref, "", "OK")

    def image_id(self, image: str) -> str | None:
        """The image's id when containerd has it, else None."""
        request = self._pb.ImageStatusRequest(image=self._pb.ImageSpec(image=image))
        reply = self._images.ImageStatus(request, timeout=self.timeout)
        return str(reply.image.id) if reply.HasField("image") and reply.image.id else None

    def remove(self, image: str) -> None:
        """RemoveImage; removing an image that is not there is not an error (as in CRI)."""
        request = self._pb.RemoveImageRequest(image=self._pb.ImageSpec(image=image))
        self._images.RemoveImage(request, timeout=self.timeout)


def cri_ready(socket_path: str | Path) -> bool:
    """True when the CRI answers Version (the socket existing is not enough)."""
    if not os.path.exists(socket_path):
        return False
    try:
        with CriClient(socket_path, timeout=2.0) as client:
            client.version()
    except grpc.RpcError:
        return False
    return True
