"""A registry that sends part of every pull to other hosts: the vendor document's case.

Docker Hub answers a blob GET with a redirect to its CDN (production.cloudflare.docker.com)
and sends clients for a token to auth.docker.io: a node can trust the registry and still fail
x509 on a host the image reference never names. The lab builds both with three small HTTPS
servers, each with a name of its own:

- the *front* (`role front`): presents a certificate from the registry's private CA and
  proxies `/v2/` to the real distribution registry (lab/registry/distribution.py), except
  `GET /v2/<name>/blobs/<digest>`, answered with `307 Location: <cdn>/registry-v2/<name>/
  blobs/<digest>/data?verify=...` (with `--cdn`); with `--realm` every `/v2/` request
  without the realm's token gets `401` and `WWW-Authenticate: Bearer realm=...`;
- the *CDN* (`role cdn`), with its own private CA: serves those blob URLs, fetching the blob
  from the registry;
- the *auth host* (`role auth`), with its own private CA: issues the anonymous token.

They listen on network-namespace addresses (containerd 2.x never verifies TLS for loopback
registries): the test side starts each as
`ip netns exec NS python -m lab.registry.redirects ROLE ...`, a child process it stops by PID.
The server side is standard library only, and every request it answers is one line of its log
(`<role> <METHOD> <path> -> <status>`), which is how a test knows that a blob really came
from the CDN.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import socket
import ssl
import sys
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lab.tls.pki import PKI

REPO = Path(__file__).resolve().parents[2]
ROLES = ("front", "cdn", "auth")
# Request headers a registry needs to answer as it would answer the client itself.
_FORWARD = ("Accept", "Range", "User-Agent", "If-None-Match")
# Hop-by-hop headers (RFC 9110 7.6.1) and the length, which the proxy sets itself.
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer"}
_BLOB_PREFIX = "/registry-v2/"


# -- server side: runs inside the network namespace ----------------------------------------
@dataclass(frozen=True)
class Settings:
    role: str
    upstream_name: str  # the registry's TLS name (its certificate has no IP SAN for the netns)
    upstream_address: str
    upstream_port: int
    upstream_ca: str  # PEM file the proxy trusts for the registry
    cdn: str | None  # front: base URL blob GETs are redirected to
    realm: str | None  # front: token realm URL clients are sent to
    token: str  # the one token the auth host issues and the front accepts


def _upstream(
    settings: Settings, method: str, path: str, headers: dict[str, str]
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request to the registry: status, headers, whole body (lab blobs are tiny)."""
    ctx = ssl.create_default_context(cafile=settings.upstream_ca)
    raw = socket.create_connection((settings.upstream_address, settings.upstream_port), 10)
    conn = http.client.HTTPSConnection(settings.upstream_name, settings.upstream_port)
    conn.sock = ctx.wrap_socket(raw, server_hostname=settings.upstream_name)
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real registry: every answer has a length
    server: _Server

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def _dispatch(self, method: str) -> None:
        settings = self.server.settings
        url = urllib.parse.urlsplit(self.path)
        if settings.role == "auth":
            self._token(url)
        elif settings.role == "cdn":
            self._cdn_blob(method, url.path)
        else:
            self._front(method, url)

    def _front(self, method: str, url: urllib.parse.SplitResult) -> None:
        settings = self.server.settings
        if not url.path.startswith("/v2/"):
            self._reply(404, [], b"not a registry path\n")
            return
        if settings.realm and self.headers.get("Authorization") != f"Bearer {settings.token}":
            challenge = (
                f'Bearer realm="{settings.realm}",service="{self.server.name}",'
                f'scope="{_scope(url.path)}"'
            )
            body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}\n'
            self._reply(401, [("WWW-Authenticate", challenge)], body)
            return
        name, digest = _blob(url.path)
        if settings.cdn and method == "GET" and name and digest:
            location = f"{settings.cdn}{_BLOB_PREFIX}{name}/blobs/{digest}/data?verify=lab"
            self._reply(307, [("Location", location)], b"")
            return
        self._proxy(method, self.path)

    def _cdn_blob(self, method: str, path: str) -> None:
        # /registry-v2/<name>/blobs/<digest>/data, the shape of Docker Hub's CDN URLs
        if not (path.startswith(_BLOB_PREFIX) and path.endswith("/data")):
            self._reply(404, [], b"no such blob\n")
            return
        self._proxy(method, "/v2/" + path[len(_BLOB_PREFIX) : -len("/data")])

    def _token(self, url: urllib.parse.SplitResult) -> None:
        if url.path != "/token":
            self._reply(404, [], b"no such endpoint\n")
            return
        token = self.server.settings.token
        body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
        self._reply(200, [("Content-Type", "application/json")], body)

    def _proxy(self, method: str, path: str) -> None:
        headers = {k: v for k in _FORWARD if (v := self.headers.get(k)) is not None}
        try:
            status, got, body = _upstream(self.server.settings, method, path, headers)
        except OSError as exc:
            self._reply(502, [], f"registry unreachable: {exc}\n".encode())
            return
        kept = [(k, v) for k, v in got if k.lower() not in _HOP]
        self._reply(status, kept, body, length=int(dict(got).get("Content-Length", len(body))))

    def _reply(
        self,
        status: int,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        # a HEAD answer carries the length of the body a GET would get, and no body
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        print(f"{self.server.settings.role} {self.command} {self.path} -> {code}", flush=True)

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.server.settings.role} {format % args}", flush=True)


def _blob(path: str) -> tuple[str, str]:
    """(name, digest) of /v2/<name>/blobs/<digest>, else ("", "")."""
    head, sep, digest = path.rpartition("/blobs/")
    if not sep or "/" in digest or not head.startswith("/v2/"):
        return "", ""
    return head[len("/v2/") :], digest


def _scope(path: str) -> str:
    name = path[len("/v2/") :].partition("/manifests/")[0].partition("/blobs/")[0]
    return f"repository:{name}:pull" if name else "registry:catalog:*"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], settings: Settings, tls: ssl.SSLContext, name: str
    ) -> None:
        super().__init__(address, _Handler)
        self.settings = settings
        self.tls = tls
        self.name = name

    def finish_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        # the handshake runs in the connection's thread: a client that refuses our
        # certificate (the x509 failure under test) never stalls the accept loop
        try:
            tls = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            print(f"{self.settings.role} handshake refused by {client_address}: {exc}", flush=True)
            return
        with tls:
            _Handler(tls, client_address, self)

    def handle_error(self, request: object, client_address: object) -> None:
        print(f"{self.settings.role} error with {client_address}: {sys.exc_info()[1]}", flush=True)


def serve(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.registry.redirects")
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--name", required=True, help="this server's TLS name")
    parser.add_argument("--listen", required=True, help="ADDRESS:PORT")
    parser.add_argument("--chain", required=True, help="leaf then intermediate, PEM")
    parser.add_argument("--key", required=True)
    parser.add_argument("--upstream", default="", help="registry NAME:PORT")
    parser.add_argument("--upstream-address", default="")
    parser.add_argument("--upstream-ca", default="")
    parser.add_argument("--cdn", help="front: redirect blob GETs to this base URL")
    parser.add_argument("--realm", help="front: demand a token from this realm URL")
    parser.add_argument("--token", default="lab-anonymous-token")
    args = parser.parse_args(argv)
    up_name, _, up_port = args.upstream.rpartition(":")
    settings = Settings(
        role=args.role,
        upstream_name=up_name,
        upstream_address=args.upstream_address,
        upstream_port=int(up_port or 0),
        upstream_ca=args.upstream_ca,
        cdn=args.cdn,
        realm=args.realm,
        token=args.token,
    )
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(args.chain, args.key)
    address, _, port = args.listen.rpartition(":")
    with _Server((address, int(port)), settings, tls, args.name) as server:
        print(f"{args.role} {args.name} listening on {args.listen}", flush=True)
        server.serve_forever()
    return 0


# -- test side ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Served:
    """One of the servers, running: where it is, what it presents, what it answered."""

    role: str
    name: str
    address: str
    port: int
    anchor: Path  # the CA a client must trust for it (the intermediate its chain ends with)
    log: Path
    pid: int

    @property
    def target(self) -> str:
        """name:port, as the agent's CLI and certs.d take it."""
        return f"{self.name}:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.target}"

    def requests(self) -> list[str]:
        """The request lines it answered so far (`GET /path -> 200`)."""
        prefix = f"{self.role} "
        return [
            line[len(prefix) :]
            for line in self.log.read_text().splitlines()
            if line.startswith(prefix) and " -> " in line
        ]


@dataclass(frozen=True)
class ServerTLS:
    chain: Path  # leaf then intermediate: what the server presents
    key: Path
    anchor: Path  # the intermediate: the topmost CA sent, what the agent trusts


def issued_by(directory: Path, name: str, issuer: PKI) -> ServerTLS:
    """A leaf for `name` from an existing private CA (the registry's, for its front)."""
    from lab.tls.pki import make_leaf, write_key, write_pem

    directory.mkdir(parents=True, exist_ok=True)
    assert issuer.intermediate is not None, "the lab's registry PKI has an intermediate"
    leaf = make_leaf(issuer.intermediate, names=(name,))
    return ServerTLS(
        chain=write_pem(directory / f"{name}-chain.pem", leaf, issuer.intermediate),
        key=write_key(directory / f"{name}.key", leaf),
        anchor=write_pem(directory / f"{name}-ca.pem", issuer.intermediate),
    )


def own_ca(directory: Path, name: str) -> ServerTLS:
    """A private CA of its own (root -> intermediate -> leaf for `name`): a CDN's, an auth
    host's, which the node has never seen."""
    from lab.tls.pki import make_pki

    pki = make_pki(directory, names=(name,), prefix=f"{name}-")
    assert pki.paths.intermediate is not None
    return ServerTLS(pki.paths.chain, pki.paths.key, pki.paths.intermediate)


@contextlib.contextmanager
def run_server(
    role: str,
    name: str,
    *,
    netns: str,
    address: str,
    port: int,
    tls: ServerTLS,
    workdir: Path,
    options: Sequence[str] = (),
) -> Iterator[Served]:
    """`ip netns exec NETNS python -m lab.registry.redirects ROLE ...`; stopped by PID on exit."""
    from lab.procs import clean_env, running, tcp_ready

    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{role}-{name}.log"
    argv = [
        "ip", "netns", "exec", netns,  # ip execs: the PID stays the server's
        sys.executable, "-m", "lab.registry.redirects", role,
        "--name", name, "--listen", f"{address}:{port}",
        "--chain", str(tls.chain), "--key", str(tls.key), *options,
    ]  # fmt: skip
    env = clean_env({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
    with running(
        f"lab.registry.redirects {role}", argv, log=log, ready=tcp_ready(address, port), env=env
    ) as daemon:
        yield Served(role, name, address, port, tls.anchor, log, daemon.pid)


if __name__ == "__main__":
    sys.exit(serve())
