"""The CRI, as kubelet speaks it: `runtime.v1.ImageService/PullImage` and `RuntimeService/Version`.

Used to let the runtime itself judge an install (containerd, CRI-O). grpcio and protobuf load
only here, with the first verification: the idle daemon never holds them. The four messages
needed are declared at run time from their upstream field numbers (k8s.io/cri-api
runtime/v1), so no generated code ships and no protoc runs on a node.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

from agent.core.pull_verdict import PULLED, PullVerdict, classify_pull_error, short

# the judge's logger, as before the runtimes had modules of their own
log = logging.getLogger("agent.node.judge")

_PACKAGE = "runtime.v1"
# message name -> ((field name, number, type, message type or ""), ...)
_MESSAGES: dict[str, tuple[tuple[str, int, str, str], ...]] = {
    "VersionRequest": (("version", 1, "string", ""),),
    "VersionResponse": (
        ("version", 1, "string", ""),
        ("runtime_name", 2, "string", ""),
        ("runtime_version", 3, "string", ""),
        ("runtime_api_version", 4, "string", ""),
    ),
    "ImageSpec": (("image", 1, "string", ""),),
    "PullImageRequest": (("image", 1, "message", "ImageSpec"),),
    "PullImageResponse": (("image_ref", 1, "string", ""),),
}


@dataclass(frozen=True)
class RuntimeVersion:
    name: str  # "containerd", "cri-o"
    version: str  # "v1.6.20", "2.1.9+unknown", "1.30.2"


@functools.cache
def _classes() -> dict[str, Any]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    types = {
        "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        "message": descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
    }
    proto = descriptor_pb2.FileDescriptorProto(
        name="ca_trust_agent_cri_min.proto", package=_PACKAGE, syntax="proto3"
    )
    for name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind, type_name in fields:
            field = message.field.add(
                name=field_name,
                number=number,
                type=types[kind],
                label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
            )
            if type_name:
                field.type_name = f".{_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()  # private: never clashes with another CRI proto
    pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
        for name in _MESSAGES
    }


class CriClient:
    """One unix-socket channel to a CRI runtime. Close it (or use `with`)."""

    def __init__(self, socket_path: str, *, timeout: float = 30.0) -> None:
        import grpc

        self._grpc = grpc
        self.timeout = timeout
        self._channel = grpc.insecure_channel(f"unix://{socket_path}")

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: Any, response: str, timeout: float) -> Any:
        stub = self._channel.unary_unary(
            f"/{_PACKAGE}.{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=_classes()[response].FromString,
        )
        return stub(request, timeout=timeout)

    def version(self) -> RuntimeVersion:
        reply = self._call(
            "RuntimeService/Version",
            _classes()["VersionRequest"](version="v1"),
            "VersionResponse",
            min(self.timeout, 5.0),
        )
        return RuntimeVersion(str(reply.runtime_name), str(reply.runtime_version))

    def pull(self, image: str, *, runtime: str, timeout: float | None = None) -> PullVerdict:
        """Pull as kubelet does (no auth) and classify the answer; never raises for an
        answer the runtime gave, only for a socket that is not a CRI runtime at all."""
        c = _classes()
        request = c["PullImageRequest"](image=c["ImageSpec"](image=image))
        started = time.monotonic()
        try:
            reply = self._call(
                "ImageService/PullImage", request, "PullImageResponse", timeout or self.timeout
            )
        except self._grpc.RpcError as exc:
            details = exc.details() if hasattr(exc, "details") else str(exc)
            text = f"{exc.code().name if hasattr(exc, 'code') else 'error'}: {details}"
            return PullVerdict(
                classify_pull_error(str(details)),
                runtime,
                image,
                short(text),
                time.monotonic() - started,
            )
        return PullVerdict(PULLED, runtime, image, str(reply.image_ref), time.monotonic() - started)


def cri_pull(real_socket: str, image: str, *, runtime: str, timeout: float) -> PullVerdict:
    """One PullImage through a fresh channel (containerd, CRI-O)."""
    with CriClient(real_socket, timeout=timeout) as cri:
        return cri.pull(image, runtime=runtime, timeout=timeout)


def cri_version(real_socket: str, timeout: float = 2.0) -> str | None:
    """`RuntimeService/Version` of a CRI runtime, or None when nothing answers."""
    try:
        with CriClient(real_socket, timeout=timeout) as cri:
            return cri.version().version
    except Exception as exc:  # any gRPC failure: the version stays unknown
        log.debug("no CRI version from %s: %s", real_socket, exc)
        return None
