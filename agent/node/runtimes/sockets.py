"""Runtime API sockets: how one is found and reached, and the gRPC readiness probe."""

from __future__ import annotations

import contextlib
import os
import socket

from agent.core.errors import StoreError
from agent.node.host import HostFS

# HTTP/2 connection preface followed by an empty SETTINGS frame (RFC 9113 §3.4, §6.5).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
H2_SETTINGS = 0x4


def strip_unix(address: str) -> str:
    return address.removeprefix("unix://")


def first_existing(fs: HostFS, paths: tuple[str, ...]) -> str:
    for path in paths:
        with contextlib.suppress(StoreError):
            if fs.is_socket(path):
                return path
    return paths[0]


def connect(real_path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if len(real_path.encode()) < 100:
            sock.connect(real_path)
        else:
            # sun_path holds ~107 bytes; a deep host root is reached through a directory fd.
            dfd = os.open(os.path.dirname(real_path), os.O_PATH | os.O_CLOEXEC)
            try:
                sock.connect(f"/proc/self/fd/{dfd}/{os.path.basename(real_path)}")
            finally:
                os.close(dfd)
    except BaseException:
        sock.close()
        raise
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def probe_grpc(real_path: str, timeout: float = 2.0) -> None:
    """Raise OSError unless an HTTP/2 server (gRPC) answers our preface with SETTINGS."""
    with connect(real_path, timeout) as sock:
        sock.sendall(H2_PREFACE)
        header = recv_exactly(sock, 9)
    if len(header) < 9 or header[3] != H2_SETTINGS:
        raise OSError(f"no HTTP/2 SETTINGS frame from {real_path} (got {header!r})")
