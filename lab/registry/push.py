"""Push a tiny one-layer image to a registry over the /v2/ API, without docker.

One gzipped tar layer holding one file, a config JSON and a schema2 manifest; blobs go up
as monolithic uploads (POST, then PUT ?digest=). The TLS context trusts only the lab's
root CA, never the machine's bundle, so a push proves the registry's chain is complete.
Everything is deterministic: the same content always has the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import socket
import ssl
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


class PushError(RuntimeError):
    pass


@dataclass(frozen=True)
class ImageBlobs:
    layer: bytes  # gzipped tar
    config: bytes
    manifest: bytes

    @property
    def manifest_digest(self) -> str:
        return digest(self.manifest)


@dataclass(frozen=True)
class PushedImage:
    reference: str  # host:port/repository:tag, as a pod spec writes it
    manifest_digest: str


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tiny_image(text: str = "hello from the ca-trust-agent lab\n") -> ImageBlobs:
    """A linux/amd64 image whose only layer holds /hello.txt."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        body = text.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime, info.mode = len(body), 0, 0o644
        tar.addfile(info, io.BytesIO(body))
    tar_bytes = raw.getvalue()
    layer = gzip.compress(tar_bytes, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/hello.txt"]},
            "rootfs": {"type": "layers", "diff_ids": [digest(tar_bytes)]},
            "history": [{"created_by": "ca-trust-agent lab"}],
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {"mediaType": CONFIG_V1, "size": len(config), "digest": digest(config)},
            "layers": [{"mediaType": LAYER_GZIP, "size": len(layer), "digest": digest(layer)}],
        },
        sort_keys=True,
    ).encode()
    return ImageBlobs(layer, config, manifest)


def trust_only(cafile: Path) -> ssl.SSLContext:
    """A client context whose only anchor is `cafile` (no default paths, no env vars)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(cafile))
    return ctx


class _Connection(http.client.HTTPSConnection):
    """HTTPS to `host` (SNI and name check) at `connect_to` (no DNS needed for the lab)."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, connect_to: str) -> None:
        super().__init__(host, port, context=context, timeout=30)
        self._connect_to = connect_to
        self._ctx = context

    def connect(self) -> None:
        raw = socket.create_connection((self._connect_to, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(raw, server_hostname=self.host)


class RegistryClient:
    def __init__(
        self, host: str, port: int, cafile: Path, *, connect_to: str | None = None
    ) -> None:
        self.host, self.port = host, port
        self._ctx = trust_only(cafile)
        self._connect_to = connect_to or host

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = _Connection(self.host, self.port, self._ctx, self._connect_to)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def put_blob(self, repository: str, data: bytes) -> str:
        """Monolithic upload; a blob the registry already has is not sent again."""
        blob = digest(data)
        status, _, _ = self.request("HEAD", f"/v2/{repository}/blobs/{blob}")
        if status == 200:
            return blob
        status, headers, body = self.request("POST", f"/v2/{repository}/blobs/uploads/")
        if status != 202 or "location" not in headers:
            raise PushError(f"upload start: HTTP {status} {body[:200]!r}")
        location = urlsplit(headers["location"])
        query = f"{location.query}&digest={blob}" if location.query else f"digest={blob}"
        target = f"{location.path}?{query}"
        status, _, body = self.request(
            "PUT",
            target,
            data,
            {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
        )
        if status != 201:
            raise PushError(f"upload {blob}: HTTP {status} {body[:200]!r}")
        return blob

    def put_manifest(self, repository: str, tag: str, manifest: bytes) -> str:
        status, headers, body = self.request(
            "PUT", f"/v2/{repository}/manifests/{tag}", manifest, {"Content-Type": MANIFEST_V2}
        )
        if status != 201:
            raise PushError(f"manifest {repository}:{tag}: HTTP {status} {body[:200]!r}")
        return headers.get("docker-content-digest", digest(manifest))


def push_tiny_image(
    host: str,
    port: int,
    cafile: Path,
    *,
    repository: str = "lab/tiny",
    tag: str = "v1",
    connect_to: str | None = None,
) -> PushedImage:
    """Push `tiny_image()` as host:port/repository:tag; returns the pullable reference."""
    blobs = tiny_image()
    client = RegistryClient(host, port, cafile, connect_to=connect_to)
    client.put_blob(repository, blobs.layer)
    client.put_blob(repository, blobs.config)
    manifest_digest = client.put_manifest(repository, tag, blobs.manifest)
    return PushedImage(f"{host}:{port}/{repository}:{tag}", manifest_digest)
