"""Runtime API sockets: where each runtime listens by default, and how one is reached."""

from __future__ import annotations

import contextlib
import os
import socket

from agent.core.errors import StoreError
from agent.node.host import HostFS

DEFAULT_SOCKETS: dict[str, tuple[str, ...]] = {
    "containerd": ("/run/containerd/containerd.sock",),
    "docker": ("/var/run/docker.sock", "/run/docker.sock"),
    "crio": ("/var/run/crio/crio.sock", "/run/crio/crio.sock"),
}


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
