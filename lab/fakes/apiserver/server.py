"""`FakeApiServer`: the store, the verbs and the HTTP side wired together, with the test's
controls and direct state access on top."""

from __future__ import annotations

import ssl
import threading
import time
from typing import Any

from lab.fakes.apiserver import verbs
from lab.fakes.apiserver.controls import Faults, RequestRecord, Traffic
from lab.fakes.apiserver.handler import Handler, Server
from lab.fakes.apiserver.kinds import JSON
from lab.fakes.apiserver.routes import Route
from lab.fakes.apiserver.store import Store
from lab.fakes.apiserver.watch import DROP, STOP


class FakeApiServer:
    """In-memory apiserver on 127.0.0.1:<ephemeral>. Use as a context manager."""

    def __init__(self, *, history: int = 1000, bookmark_interval: float = 1.0,
                 tls: tuple[str, str] | None = None) -> None:
        """`tls=(certfile, keyfile)` serves HTTPS, as in-cluster clients insist on."""
        self.bookmark_interval = bookmark_interval
        self.store = Store(history)
        self.faults = Faults(self.store.lock)
        self.traffic = Traffic(self.store.lock)
        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.api = self
        self._scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            self._scheme = "https"
        self._thread: threading.Thread | None = None

    # lifecycle
    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FakeApiServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.faults.resume()
        self.store.signal_watches(STOP)
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # the verbs: a subclass may override this to watch or alter what requests do
    def handle(self, method: str, route: Route, query: dict[str, str], body: Any,
               content_type: str) -> tuple[int, JSON]:
        return verbs.handle(self.store, self.faults, method, route, query, body, content_type)

    # test controls
    def expire_history(self) -> None:
        """Compact: every resourceVersion before now is gone (410); open watches get the 410."""
        self.store.expire_history()

    def drop_watches(self) -> None:
        """Cut every open watch stream mid-flight, without the terminating chunk."""
        self.store.signal_watches(DROP)

    def pause(self, mode: str = "drop") -> None:
        """API outage. "drop": open watches are cut and every request's connection is closed
        without an answer. "stall": requests and watch streams hang until resume()."""
        self.faults.pause(mode)
        if mode == "drop":
            self.store.signal_watches(DROP)

    def resume(self) -> None:
        self.faults.resume()

    def inject_errors(self, code: int, count: int = 1) -> None:
        """Answer the next `count` requests with this HTTP error (429 carries Retry-After: 1)."""
        self.faults.inject_errors(code, count)

    def refuse_evictions(
        self,
        count: int = 1,
        *,
        pod: tuple[str, str] | None = None,
        budget: str = "test-pdb",
        retry_after: int = 10,
    ) -> None:
        """Refuse the next `count` evictions (of `pod`=(namespace, name) only, when given)
        as kube-apiserver does for a PodDisruptionBudget: 429 TooManyRequests, a
        DisruptionBudget cause, and Retry-After (the real server says 10 s)."""
        self.faults.refuse_evictions(count, pod, budget, retry_after)

    @property
    def paused(self) -> bool:
        return self.faults.paused

    def bytes_sent(self, client: str) -> int:
        """Bytes the server wrote (headers and bodies) to one client."""
        return self.traffic.bytes_sent(client)

    def bytes_by_client(self) -> dict[str, int]:
        return self.traffic.bytes_by_client()

    def watch_bytes(self, plural: str | None = None) -> int:
        """Bytes of watch events (each framed as a chunk) sent on the watches of `plural`
        (every watch: None), summed over all watchers: the apiserver's fan-out cost."""
        return self.traffic.watch_bytes(plural)

    def requests(self) -> list[RequestRecord]:
        return self.traffic.requests()

    def clear_requests(self) -> None:
        self.traffic.clear_requests()

    def watch_count(self, plural: str | None = None) -> int:
        return self.store.watch_count(plural)

    def wait_for_watches(self, n: int, plural: str | None = None, timeout: float = 10.0) -> None:
        """Block until at least n watches (of that resource) are open."""
        deadline = time.monotonic() + timeout
        while self.watch_count(plural) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.watch_count(plural)} watches open, wanted {n}")
            time.sleep(0.02)

    @property
    def resource_version(self) -> int:
        return self.store.resource_version

    # direct state access (no HTTP): what kubelet or a controller would write
    def put_object(self, obj: JSON) -> JSON:
        """Create or replace, status included; returns the stored object."""
        return self.store.put_object(obj)

    def get_object(self, plural: str, namespace: str | None, name: str) -> JSON | None:
        return self.store.get_object(plural, namespace, name)

    def delete_object(self, plural: str, namespace: str | None, name: str) -> None:
        self.store.delete_object(plural, namespace, name)

    def objects(self, plural: str) -> list[JSON]:
        return self.store.list_objects(plural)
