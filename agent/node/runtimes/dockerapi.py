"""dockerd's Engine API, for one question: does a pull of this image get past TLS now?

`POST /images/create?fromImage=REF` over the daemon's unix socket, as `docker pull` does. The
answer streams JSON lines; a failure arrives either as an HTTP error with `{"message": ...}`
or, once the stream has started, as a line with `"error"`.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse

from agent.core.pull_verdict import PULLED, PullVerdict, classify_pull_error, short

_API = "/v1.41"  # dockerd 20.10 speaks 1.41; newer daemons accept it


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("docker", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _split_reference(image: str) -> tuple[str, str]:
    """`host:5000/lab/tiny:v1` -> (`host:5000/lab/tiny`, `v1`); digests stay whole."""
    if "@" in image:
        return image, ""
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :]
    return image, "latest"


def _stream_error(body: bytes) -> str | None:
    for line in body.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("error"):
            return str(item["error"])
    return None


def pull(socket_path: str, image: str, *, timeout: float = 30.0) -> PullVerdict:
    """Pull through dockerd and classify the answer (see agent.core.pull_verdict)."""
    name, tag = _split_reference(image)
    query = {"fromImage": name} | ({"tag": tag} if tag else {})
    started = time.monotonic()
    conn = _UnixConnection(socket_path, timeout)
    try:
        conn.request("POST", f"{_API}/images/create?{urllib.parse.urlencode(query)}", body=b"")
        response = conn.getresponse()
        body = response.read(1 << 20)
    except OSError as exc:
        return PullVerdict(
            classify_pull_error(str(exc)),
            "docker",
            image,
            short(str(exc)),
            time.monotonic() - started,
        )
    finally:
        conn.close()
    seconds = time.monotonic() - started
    if response.status >= 400:
        try:
            message = str(json.loads(body).get("message", ""))
        except (ValueError, AttributeError):
            message = body.decode("utf-8", "replace")
        text = f"HTTP {response.status}: {message}"
        return PullVerdict(classify_pull_error(text), "docker", image, short(text), seconds)
    error = _stream_error(body)
    if error is not None:
        return PullVerdict(classify_pull_error(error), "docker", image, short(error), seconds)
    return PullVerdict(PULLED, "docker", image, name + (f":{tag}" if tag else ""), seconds)
