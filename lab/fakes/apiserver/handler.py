"""The HTTP side: routing a request, JSON answers and errors, chunked watch streams.

Every answer goes through `CountingWriter`, which charges its bytes to the client the
request named (`X-Fake-Client`, else the User-Agent). Before a request reaches the verbs it
may meet a test's outage (`pause`: cut, or held until `resume`) or an injected error; a
request for a discovery document is answered here.
"""

from __future__ import annotations

import contextlib
import copy
import json
import queue
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from lab.fakes.apiserver.controls import RequestRecord
from lab.fakes.apiserver.kinds import JSON, ApiFailure, status_object
from lab.fakes.apiserver.routes import Route, discovery, parse_route
from lab.fakes.apiserver.watch import DROP, EXPIRE, STOP, Change, Watch

if TYPE_CHECKING:
    from lab.fakes.apiserver.server import FakeApiServer


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # kube-apiserver (Go) listens with the kernel's somaxconn backlog; socketserver's default
    # of 5 resets connections when a fleet of clients connects at once
    request_queue_size = 4096
    api: FakeApiServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client that hung up is not news
            super().handle_error(request, client_address)


class CountingWriter:
    """Wraps the handler's wfile so every byte sent is charged to the request's client."""

    def __init__(self, raw: Any, handler: Handler) -> None:
        self._raw = raw
        self._handler = handler

    def write(self, data: bytes) -> int:
        self._handler.server.api.traffic.count(self._handler.client, len(data))
        written: int = self._raw.write(data)
        return written

    def flush(self) -> None:
        self._raw.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server
    client = "unknown"

    def setup(self) -> None:
        super().setup()
        # Go's net package (so kube-apiserver) sets TCP_NODELAY; without it the body written
        # after the headers waits ~40 ms for the client's delayed ACK (Nagle).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.wfile = CountingWriter(self.wfile, self)  # type: ignore[assignment]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        api = self.server.api
        self.client = self.headers.get("X-Fake-Client") or self.headers.get("User-Agent") or ""
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        api.traffic.log(RequestRecord(method, url.path, query, self.client,
                               self.headers.get("Authorization")))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if api.faults.paused:
            if api.faults.mode == "drop":
                self._abort()
                return
            api.faults.wait_resumed()
        if (injected := api.faults.take_injected()) is not None:
            reason = {429: "TooManyRequests", 503: "ServiceUnavailable"}.get(injected, "Injected")
            self._send_json(injected, status_object(injected, reason, "injected by the test"),
                            retry_after="1" if injected == 429 else None)
            return
        if method == "GET" and (found := discovery(url.path)) is not None:
            self._send_json(200, found)  # what kubectl reads to map `configmap` to a path
            return
        try:
            body = json.loads(raw) if raw else None
            route = parse_route(url.path)
            if method == "GET" and route.name is None and query.get("watch") in ("1", "true"):
                self._watch(route, query)
                return
            code, payload = api.handle(
                method, route, query, body, self.headers.get("Content-Type", "")
            )
        except ApiFailure as failure:
            code, payload = failure.code, failure.status()
        except (ValueError, KeyError) as exc:
            code, payload = 400, status_object(400, "BadRequest", f"bad request: {exc}")
        # the apiserver turns a Status's retryAfterSeconds into the Retry-After header
        retry = (payload.get("details") or {}).get("retryAfterSeconds") if code >= 400 else None
        self._send_json(code, payload, retry_after=None if retry is None else str(retry))

    def _send_json(self, code: int, payload: JSON, retry_after: str | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _abort(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _chunk(self, event: JSON, plural: str) -> None:
        line = json.dumps(event).encode() + b"\n"
        framed = b"%x\r\n%s\r\n" % (len(line), line)
        self.wfile.write(framed)
        self.server.api.traffic.count_watch(plural, len(framed))

    def _watch(self, route: Route, query: dict[str, str]) -> None:
        api = self.server.api
        w, first = api.store.open_watch(route, query)  # may raise ApiFailure before any header
        timeout = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in first:
                self._chunk(event, route.kind.plural)
            if w is not None and not self._stream(w, time.monotonic() + timeout, bookmarks):
                return
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
        finally:
            if w is not None:
                api.store.close_watch(w)

    def _stream(self, w: Watch, deadline: float, bookmarks: bool) -> bool:
        """Send events until the deadline; False when the stream was cut (no final chunk)."""
        api = self.server.api
        last_bookmark = time.monotonic()
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = w.queue.get(timeout=min(left, api.bookmark_interval))
            except queue.Empty:
                item = None
            if api.faults.paused and api.faults.mode == "stall" and item != STOP:
                api.faults.wait_resumed()
            if item == DROP:
                self._abort()
                return False
            if item == STOP:
                return True
            if item == EXPIRE:
                message = "too old resource version: the watch cache was compacted"
                expired = {"type": "ERROR", "object": status_object(410, "Expired", message)}
                self._chunk(expired, w.kind.plural)
                return True
            if isinstance(item, Change):
                event = w.translate(item)
                if event is not None:
                    self._chunk(copy.deepcopy(event), w.kind.plural)
            if bookmarks and time.monotonic() - last_bookmark >= api.bookmark_interval:
                mark = api.store.bookmark(w)
                if mark is not None:
                    self._chunk(mark, w.kind.plural)
                    last_bookmark = time.monotonic()
        return True
