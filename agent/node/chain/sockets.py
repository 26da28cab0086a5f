"""Socket plumbing under one deadline: resolve, connect, send and receive on a
non-blocking socket, so a server that accepts and never speaks ends on time.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import threading
import time
from collections.abc import Sequence

from agent.core.errors import FetchError

_RECV = 65536


# --- deadline ------------------------------------------------------------------------


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def left_or_timeout(self, what: str) -> float:
        left = self.remaining()
        if left <= 0:
            raise FetchError(f"{what}: no answer within {self.seconds:g} s", kind="timeout")
        return left


# --- sockets -------------------------------------------------------------------------


def _fmt_addr(addr: tuple[object, ...]) -> str:
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_AddrInfo = Sequence[tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[object, ...]]]


def _resolve(host: str, port: int, deadline: _Deadline) -> _AddrInfo:
    """getaddrinfo within the deadline: it blocks in libc (a dead DNS server holds it for
    many seconds), so a name is resolved in a daemon thread we stop waiting for."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    outcome: list[_AddrInfo | OSError] = []

    def lookup() -> None:
        try:
            outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
    worker.start()
    worker.join(deadline.left_or_timeout(f"resolving {host}"))
    if not outcome:
        raise FetchError(
            f"resolving {host}: no answer within {deadline.seconds:g} s", kind="timeout"
        )
    result = outcome[0]
    if isinstance(result, OSError):
        reason = result.strerror if isinstance(result, socket.gaierror) else str(result)
        raise FetchError(f"cannot resolve {host}: {reason}", kind="resolve") from result
    return result


def _connect(host: str, port: int, deadline: _Deadline) -> tuple[socket.socket, str]:
    """Non-blocking connect to each resolved address in order, sharing the deadline."""
    infos = _resolve(host, port, deadline)
    failures: list[str] = []
    timed_out = False
    for i, (family, kind, proto, _, addr) in enumerate(infos):
        # later addresses keep a fair share of the time: a black-holed first address
        # (typically IPv6) must not eat the whole deadline
        budget = deadline.left_or_timeout(f"connecting to {host}:{port}") / (len(infos) - i)
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:  # e.g. an IPv6 address on a host without IPv6
            failures.append(f"{_fmt_addr(addr)} {exc.strerror}")
            continue
        sock.setblocking(False)
        err = sock.connect_ex(addr)
        if err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            _, ready, _ = select.select([], [sock], [], budget)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if ready else -1
        if err == 0:
            return sock, _fmt_addr(addr)
        sock.close()
        if err == -1:
            timed_out = True
            failures.append(f"{_fmt_addr(addr)} timed out")
        else:
            failures.append(f"{_fmt_addr(addr)} {os.strerror(err).lower()}")
    detail = "; ".join(failures) or "no address"
    if timed_out and deadline.remaining() <= 0:
        raise FetchError(
            f"connecting to {host}:{port} timed out after {deadline.seconds:g} s ({detail})",
            kind="timeout",
        )
    raise FetchError(f"cannot connect to {host}:{port}: {detail}", kind="unreachable")


def _send_all(sock: socket.socket, data: bytes, deadline: _Deadline, what: str) -> None:
    view = memoryview(data)
    while view:
        _, ready, _ = select.select([], [sock], [], deadline.left_or_timeout(what))
        if not ready:
            continue
        try:
            sent = sock.send(view)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise FetchError(f"{what}: connection lost ({exc.strerror})", kind="not-tls") from exc
        view = view[sent:]


def _recv(sock: socket.socket, deadline: _Deadline, what: str) -> bytes:
    while True:
        ready, _, _ = select.select([sock], [], [], deadline.left_or_timeout(what))
        if not ready:
            continue
        try:
            return sock.recv(_RECV)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            return b""  # reported like a close: the caller knows what it was waiting for
        except OSError as exc:
            raise FetchError(f"{what}: connection lost ({exc.strerror})", kind="not-tls") from exc
