"""The agent's Kubernetes API access: JSON dicts over the raw ApiClient, no typed models.

Why not CoreV1Api and kubernetes.watch: touching them imports the pydantic models and takes
the process from ~45 MB to ~67 MB RSS, on a DaemonSet that runs on every node and is idle
almost always. `ApiClient.param_serialize` + `call_api` give us the client's configuration,
auth (service-account token refresh, client certificates, exec plugins) and TLS, and
`call_api` hands back the urllib3 response unread, so a watch is read line by line.

Every call has connect/read timeouts and is retried on its own (tenacity, jittered
exponential, bounded): on connection errors, 429 and 5xx; never on other 4xx. A POST is
retried on a connection error only when the request never left (connect failure), so a
create is not sent twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import tenacity
import urllib3
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException as KubernetesApiException
from kubernetes.config import incluster_config, kube_config

from agent import __version__
from agent.core.errors import AgentError

JSON = dict[str, Any]
Items = list[JSON]
Query = list[tuple[str, str]]

_MAX_LINE = 16 << 20  # one watch event; a Pod is a few KiB, a huge ConfigMap at most 1 MiB
_MAX_ERROR_BODY = 64 << 10


class ApiError(AgentError):
    """An API call failed. `status` is the HTTP code, 0 when no answer came back
    (reason "ConnectFailed": never sent; "ConnectionError": broken or timed out midway)."""

    def __init__(self, status: int, reason: str, body: JSON | str = "",
                 retry_after: float | None = None) -> None:
        message = body.get("message", "") if isinstance(body, dict) else body
        super().__init__(f"kubernetes API: {status} {reason}: {message}".rstrip(": "),
                         kind=reason or f"http-{status}")
        self.status = status
        self.reason = reason
        self.body = body
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return self.status in (0, 429) or self.status >= 500


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float = 30.0
    watch_slack: float = 15.0  # a watch's socket read timeout is timeoutSeconds + this


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    initial: float = 0.2  # seconds; jittered exponential up to max_wait
    max_wait: float = 5.0


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def load_config(kubeconfig: str | None = None, *,
                service_account_dir: str = SERVICE_ACCOUNT_DIR) -> Configuration:
    """In-cluster service account when running in a pod (the token is re-read every minute,
    so projected token rotation works), else a kubeconfig (the argument, $KUBECONFIG,
    ~/.kube/config). Loads no API models."""
    config = Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        make_loader: Any = incluster_config.InClusterConfigLoader  # untyped upstream
        loader = make_loader(
            token_filename=os.path.join(service_account_dir, "token"),
            cert_filename=os.path.join(service_account_dir, "ca.crt"),
        )
        loader.load_and_set(config)
    else:
        path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        load_kube: Any = kube_config.load_kube_config
        load_kube(config_file=os.path.expanduser(path), client_configuration=config)
    return config


def resource_path(api: str, plural: str, namespace: str | None = None,
                  name: str | None = None, subresource: str | None = None) -> str:
    """`resource_path("v1", "pods", "ns", "p")` -> "/api/v1/namespaces/ns/pods/p"."""
    parts = ["/api/v1" if api == "v1" else f"/apis/{api}"]
    if namespace is not None:
        parts += ["namespaces", quote(namespace, safe="")]
    parts.append(plural)
    if name is not None:
        parts.append(quote(name, safe=""))
    if subresource is not None:
        parts.append(subresource)
    return "/".join(parts)


class WatchStream:
    """One open watch response, iterated as parsed event dicts.

    `close()` may be called from another thread: it shuts the socket down so a reader blocked
    in recv returns at once, and the iteration then ends quietly. The response itself is
    closed by the iterating thread (closing it under a concurrent read races in urllib3)."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self._closed = threading.Event()
        self._iterating = False

    def __iter__(self) -> Iterator[JSON]:
        self._iterating = True
        buf = bytearray()
        try:
            for chunk in self._response.stream(amt=64 << 10, decode_content=True):
                buf += chunk
                while (end := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:end])
                    del buf[: end + 1]
                    if line.strip():
                        yield _parse_event(line)
                if len(buf) > _MAX_LINE:
                    raise ApiError(0, "ConnectionError", "watch event larger than 16 MiB")
            if buf.strip() and not self._closed.is_set():
                yield _parse_event(bytes(buf))
        except ApiError:
            raise
        except Exception as exc:  # urllib3 fails in several ways when the socket goes away
            if not self._closed.is_set():
                raise ApiError(0, "ConnectionError", f"watch stream broken: {exc}") from exc
        finally:
            self._iterating = False
            self._closed.set()
            self._release()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if not self._iterating:
            self._release()
            return
        sock = getattr(getattr(self._response, "connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _release(self) -> None:
        with contextlib.suppress(Exception):
            self._response.close()
            self._response.release_conn()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_event(line: bytes) -> JSON:
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise ApiError(0, "ConnectionError", f"undecodable watch line: {line[:200]!r}") from exc
    if not isinstance(event, dict) or "type" not in event:
        raise ApiError(0, "ConnectionError", f"not a watch event: {line[:200]!r}")
    return event


class KubeClient:
    """JSON-dict access to the API paths the agent uses (see `resource_path`)."""

    def __init__(self, configuration: Configuration, *, timeouts: Timeouts = Timeouts(),
                 retry: RetryPolicy = RetryPolicy(), user_agent: str | None = None) -> None:
        # urllib3 must not retry on its own: tenacity does, with backoff and bounds.
        configuration.retries = False
        self._api = ApiClient(configuration)
        self._api.user_agent = user_agent or f"ca-trust-agent/{__version__}"
        self.timeouts = timeouts
        self._retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(retry.attempts),
            wait=_wait(retry),
            reraise=True,
        )

    @classmethod
    def from_config(cls, kubeconfig: str | None = None, **kwargs: Any) -> KubeClient:
        return cls(load_config(kubeconfig), **kwargs)

    def close(self) -> None:
        close: Any = self._api.close  # untyped upstream
        close()

    # verbs
    def get(self, path: str) -> JSON:
        return self._json("GET", path)

    def list(self, path: str, *, field_selector: str | None = None,
             label_selector: str | None = None, resource_version: str | None = None,
             limit: int | None = None, continue_token: str | None = None) -> JSON:
        """One page of a LIST: {"metadata": {"resourceVersion", "continue"?}, "items": [...]}."""
        query = _query(fieldSelector=field_selector, labelSelector=label_selector,
                       resourceVersion=resource_version, limit=limit)
        if continue_token:
            query.append(("continue", continue_token))
        return self._json("GET", path, query=query)

    def list_all(self, path: str, *, field_selector: str | None = None,
                 label_selector: str | None = None, page_size: int = 500) -> tuple[Items, str]:
        """All items (following `continue`) and the list's resourceVersion."""
        items: Items = []
        token: str | None = None
        while True:
            page = self.list(path, field_selector=field_selector, label_selector=label_selector,
                             limit=page_size, continue_token=token)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion", ""))

    def create(self, path: str, body: JSON) -> JSON:
        return self._json("POST", path, body=body)

    def replace(self, path: str, body: JSON) -> JSON:
        return self._json("PUT", path, body=body)

    def patch_merge(self, path: str, body: JSON) -> JSON:
        return self._json("PATCH", path, body=body, content_type="application/merge-patch+json")

    def delete(self, path: str, *, resource_version: str | None = None) -> JSON:
        """DELETE; with resource_version, only if the object is still at that version."""
        body = None
        if resource_version:
            body = {"preconditions": {"resourceVersion": resource_version}}
        return self._json("DELETE", path, body=body)

    def watch_lines(self, path: str, *, resource_version: str | None,
                    field_selector: str | None = None, label_selector: str | None = None,
                    timeout_seconds: int = 300, allow_bookmarks: bool = True) -> WatchStream:
        """Open a watch; iterate the result for event dicts {"type", "object"} as they arrive.
        ERROR events are passed through (the caller decides: 410 means relist). Opening is
        retried like any call; a break mid-stream raises ApiError(0, "ConnectionError")."""
        query = _query(watch="true", resourceVersion=resource_version,
                       fieldSelector=field_selector, labelSelector=label_selector,
                       timeoutSeconds=timeout_seconds,
                       allowWatchBookmarks="true" if allow_bookmarks else None)
        read_timeout = timeout_seconds + self.timeouts.watch_slack
        response = self._retry("GET")(
            lambda: self._send("GET", path, query=query, read_timeout=read_timeout)
        )
        return WatchStream(response)

    # plumbing
    def _json(self, method: str, path: str, *, query: Query | None = None,
              body: JSON | None = None, content_type: str | None = None) -> JSON:
        def call() -> JSON:
            response = self._send(method, path, query=query or [], body=body,
                                  content_type=content_type, read_timeout=self.timeouts.read)
            try:
                data = response.read()
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise ApiError(0, "ConnectionError", f"{method} {path}: {exc}") from exc
            finally:
                response.release_conn()
            try:
                parsed = json.loads(data) if data else {}
            except ValueError as exc:
                raise ApiError(0, "ConnectionError", f"{method} {path}: not JSON") from exc
            if not isinstance(parsed, dict):
                raise ApiError(0, "ConnectionError", f"{method} {path}: not a JSON object")
            return parsed

        result: JSON = self._retry(method)(call)
        return result

    def _retry(self, method: str) -> tenacity.Retrying:
        def retryable(exc: BaseException) -> bool:
            if not isinstance(exc, ApiError) or not exc.transient:
                return False
            # a create that may have reached the server is not sent again
            return not (method == "POST" and exc.status == 0 and exc.reason != "ConnectFailed")

        return self._retrying.copy(retry=tenacity.retry_if_exception(retryable))

    def _send(self, method: str, path: str, *, query: Query, read_timeout: float,
              body: JSON | None = None, content_type: str | None = None) -> Any:
        """One HTTP exchange up to the response headers; a non-2xx answer raises ApiError."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        method, url, headers, payload, post = self._api.param_serialize(
            method=method, resource_path=path, query_params=query, header_params=headers,
            body=body, auth_settings=["BearerToken"],
        )
        try:
            rest = self._api.call_api(method, url, headers, payload, post,
                                      _request_timeout=(self.timeouts.connect, read_timeout))
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError,
                ConnectionRefusedError) as exc:
            raise ApiError(0, "ConnectFailed", f"{method} {path}: {exc}") from exc
        except KubernetesApiException as exc:  # the client's wrapper for TLS failures
            raise ApiError(0, "ConnectFailed", f"{method} {path}: {exc.reason}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, "ConnectionError", f"{method} {path}: {exc}") from exc
        response = rest.response
        if 200 <= response.status < 300:
            return response
        raise _error_from(response)


def _error_from(response: Any) -> ApiError:
    try:
        raw = response.read(_MAX_ERROR_BODY)
        response.drain_conn()  # the connection goes back to the pool clean
    except (urllib3.exceptions.HTTPError, OSError):
        raw = b""
    finally:
        response.release_conn()
    body: JSON | str
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")
    reason = (body.get("reason") if isinstance(body, dict) else None) or response.reason or ""
    retry_after = None
    with contextlib.suppress(TypeError, ValueError):
        retry_after = float(response.headers.get("Retry-After"))
    return ApiError(response.status, reason, body if isinstance(body, dict) else body[:2000],
                    retry_after)


def _wait(policy: RetryPolicy) -> Any:
    backoff = tenacity.wait_random_exponential(multiplier=policy.initial, max=policy.max_wait)

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ApiError) and exc.retry_after is not None:
            return min(exc.retry_after, policy.max_wait)
        return float(backoff(state))

    return wait


def _query(**params: object) -> Query:
    return [(k, str(v)) for k, v in params.items() if v is not None and v != ""]
