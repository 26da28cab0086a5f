"""A TLS-inspecting CONNECT proxy: the corporate proxy (Zscaler, Squid ssl-bump) in the lab.

A runtime started with `HTTPS_PROXY=http://127.0.0.1:PORT` never resolves a registry's name
itself: it sends `CONNECT name:443` here (shared/LAB.md). The proxy answers every name from a
routing table of its own and nothing else, so no pull can leave the machine:

- a name in `routes` is answered `200`, the client's TLS is terminated with a leaf for that
  name signed by the proxy's own CA (or, for a name in `presents`, with a chain given by the
  test: the defective certificates whose Go wordings the fixtures capture), and the bytes
  inside are relayed over a second TLS connection to the route's upstream (a lab registry in
  its network namespace, verified against the upstream's CA);
- any other name gets `502` and is recorded: a test can tell that a pull asked for a host the
  lab does not serve.

Every CONNECT is one `Tunnel` record (target, whether the client accepted our certificate),
which is how a test proves that a pull really went through the proxy. The server runs its
own asyncio loop in a thread of the test process, on loopback: the runtime's connection to a
proxy is plain HTTP and never subject to the loopback-registry rules of containerd 2.x.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from lab.tls.pki import Issued, make_ca, make_leaf, write_key, write_pem

_HEAD_LIMIT = 16384
_CHUNK = 65536


@dataclass(frozen=True)
class Upstream:
    """Where the bytes for one name really go: a lab server and the TLS name it presents."""

    address: str
    port: int
    server_name: str
    cafile: Path  # what the proxy trusts for that server


@dataclass(frozen=True)
class Tunnel:
    target: str  # host:port as CONNECT named it
    status: int  # what the proxy answered the CONNECT (200, or 502 for a name it has not)
    accepted: bool  # the client finished the TLS handshake with our certificate


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _target_key(target: str) -> str:
    host, _, port = target.rpartition(":")
    return f"{host.lower().strip('[]')}:{port}"


class InterceptingProxy:
    """The proxy; `start()` binds and returns at once, `stop()` closes everything."""

    def __init__(
        self,
        workdir: Path,
        routes: Mapping[str, Upstream],
        *,
        ca: Issued | None = None,
        presents: Mapping[str, tuple[Issued, ...]] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.workdir = workdir
        self.routes = {_target_key(t): u for t, u in routes.items()}
        # the chain a proxy re-signs with: its root; leaves come straight from it
        self.ca = ca or make_ca("Lab Intercepting Proxy CA")
        self.presents = {_target_key(t): c for t, c in (presents or {}).items()}
        self.host = host
        self.port = 0
        self.tunnels: list[Tunnel] = []
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca_file = write_pem(workdir / "proxy-ca.crt", self.ca)

    @property
    def url(self) -> str:
        """The value of HTTPS_PROXY for a runtime."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> InterceptingProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, self.host, 0), self._loop
        )
        self._server = future.result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            server = self._server

            async def close() -> None:
                server.close()
                for task in asyncio.all_tasks():
                    if task is not asyncio.current_task():
                        task.cancel()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def accepted(self) -> list[str]:
        """Targets whose TLS the client accepted from us, in order."""
        return [t.target for t in self.tunnels if t.accepted]

    def refused(self) -> list[str]:
        """Targets where the client gave up during our handshake (it did not trust us)."""
        return [t.target for t in self.tunnels if t.status == 200 and not t.accepted]

    def _context(self, key: str) -> ssl.SSLContext:
        """The server side for one name: a leaf made on first use, as a real proxy does."""
        if key not in self._contexts:
            host = key.rpartition(":")[0]
            chain = self.presents.get(key)
            if chain is None:
                ip = _is_ip(host)
                leaf = make_leaf(self.ca, names=() if ip else (host,), ips=(host,) if ip else ())
                chain = (leaf,)
            safe = key.replace(":", "_")
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(
                write_pem(self.workdir / f"{safe}-chain.pem", *chain),
                write_key(self.workdir / f"{safe}.key", chain[0]),
            )
            self._contexts[key] = ctx
        return self._contexts[key]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._tunnel(reader, writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the runtime hung up or refused our certificate: recorded already
        finally:
            writer.close()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request = head[:_HEAD_LIMIT].split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(request) != 3 or request[0] != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        target = request[1]
        key = _target_key(target)
        upstream = self.routes.get(key)
        if upstream is None:
            self.tunnels.append(Tunnel(target, 502, False))
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        record = len(self.tunnels)
        self.tunnels.append(Tunnel(target, 200, False))
        await writer.start_tls(self._context(key))
        self.tunnels[record] = Tunnel(target, 200, True)
        client_ctx = ssl.create_default_context(cafile=str(upstream.cafile))
        client_ctx.set_alpn_protocols(["http/1.1"])
        # lab servers' anchors are often their intermediate (what the agent trusts)
        client_ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        up_reader, up_writer = await asyncio.open_connection(
            upstream.address, upstream.port, ssl=client_ctx, server_hostname=upstream.server_name
        )
        pumps = [
            asyncio.ensure_future(_pump(reader, up_writer)),
            asyncio.ensure_future(_pump(up_reader, writer)),
        ]
        try:
            # TLS has no half-close: when one side is done, the tunnel is
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            up_writer.close()


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ssl.SSLError):
        while data := await src.read(_CHUNK):
            dst.write(data)
            await dst.drain()


@contextlib.contextmanager
def intercepting_proxy(
    workdir: Path,
    routes: Mapping[str, Upstream],
    *,
    ca: Issued | None = None,
    presents: Mapping[str, tuple[Issued, ...]] | None = None,
) -> Iterator[InterceptingProxy]:
    proxy = InterceptingProxy(workdir, routes, ca=ca, presents=presents).start()
    try:
        yield proxy
    finally:
        proxy.stop()
