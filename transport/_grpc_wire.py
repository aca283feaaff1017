"""What both ends of the gRPC carrier agree on: HTTP/2 settings, message codec, error trailers.

Pure code, no I/O. The carrier passes raw bytes through grpclib (:class:`RawCodec`) so that it
decodes messages itself: betterproto2's parser accepts truncated or corrupt input without
complaint (a cut length-delimited field simply ends early), so :func:`decode` first checks the
bytes against the protobuf wire format and the message's schema (:func:`check_wire`) and turns
any problem into :class:`InvalidArgument` naming the message type.

Errors travel as gRPC statuses: code, ``grpc-message`` = the error's reason, and the hop and the
service in binary trailing metadata (``trionsm-hop-bin``, ``trionsm-service-bin``), so the client
rebuilds the same class with the same hop, service and reason (:func:`error_from_status`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from grpclib.config import Configuration
from grpclib.const import Cardinality as GrpcCardinality
from grpclib.encoding.base import CodecBase

from trionsm.errors import TrionsmError, error_for_status

from ._codec import check_wire, decode, encode
from ._limits import MAX_MESSAGE_BYTES
from ._services import Cardinality

__all__ = [
    "CARDINALITY",
    "HANDSHAKE_TIMEOUT",
    "HOP_KEY",
    "KEEPALIVE_INTERVAL",
    "KEEPALIVE_TIMEOUT",
    "MAX_CONCURRENT_STREAMS",
    "MAX_MESSAGE_BYTES",
    "PINGS_WELCOME",
    "SERVICE_KEY",
    "RawCodec",
    "check_wire",
    "configuration",
    "decode",
    "encode",
    "error_from_status",
    "error_metadata",
    "wire_reason",
]

MAX_CONCURRENT_STREAMS: Final = 2**31 - 1
"""What our servers advertise in SETTINGS_MAX_CONCURRENT_STREAMS (h2's default is 100, and a
grpclib client silently queues every stream past the server's limit)."""

KEEPALIVE_INTERVAL: Final = 1.0
"""Seconds between HTTP/2 PINGs while a connection has streams open (servers, and clients of a
server that welcomes them: see :data:`PINGS_WELCOME`)."""

KEEPALIVE_TIMEOUT: Final = 1.0
"""Seconds to wait for a PING's ack before closing the connection: a dead or partitioned peer
breaks every stream on it within about ``KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT``."""

HANDSHAKE_TIMEOUT: Final = 5.0
"""Seconds a new connection may stay silent before it is closed: an HTTP/2 peer sends its SETTINGS
preface at once, so silence means a frozen process or another service on the port."""

PINGS_WELCOME: Final = 0x7A
"""A SETTINGS parameter of our own (HTTP/2 peers ignore unknown ones): a trionsm server sends it
with value 1 to say it accepts a PING every ``KEEPALIVE_INTERVAL``. Our clients PING only such
servers: grpcio and grpc-go servers close a connection PINGed more often than every 5 minutes
while they send nothing (GOAWAY ``too_many_pings``). The identifier is unassigned in IANA's
registry and fits in 8 bits, because hyperframe 6 truncates setting identifiers when it sends
them."""

HOP_KEY: Final = "trionsm-hop-bin"
SERVICE_KEY: Final = "trionsm-service-bin"
CARDINALITY: Final = {
    Cardinality.UNARY_UNARY: GrpcCardinality.UNARY_UNARY,
    Cardinality.UNARY_STREAM: GrpcCardinality.UNARY_STREAM,
    Cardinality.STREAM_STREAM: GrpcCardinality.STREAM_STREAM,
}
"""Our cardinalities as grpclib's."""

_MAX_REASON = 4096  # characters of grpc-message: peers cap header lists (grpcio at 8 KiB)


def configuration() -> Configuration:
    """grpclib's configuration for our servers and channels: keepalive PINGs on both ends.

    These are grpclib's private knobs: PING every ``KEEPALIVE_INTERVAL`` while streams are open,
    with no cap on PINGs without data (grpclib's default cap of 2 would stop pinging a quiet
    monitor stream), and close the connection when an ack takes longer than
    ``KEEPALIVE_TIMEOUT``.
    """
    return Configuration(
        _keepalive_time=KEEPALIVE_INTERVAL,
        _keepalive_timeout=KEEPALIVE_TIMEOUT,
        _keepalive_permit_without_calls=False,
        _http2_max_pings_without_data=0,
        _http2_min_sent_ping_interval_without_data=KEEPALIVE_INTERVAL / 2,
    )


class RawCodec(CodecBase):
    """grpclib codec that moves bytes unchanged: the carrier encodes and decodes itself."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        if not isinstance(message, bytes):
            raise TypeError(f"RawCodec sends bytes, not {type(message).__name__}")
        return message

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


def error_metadata(error: TrionsmError) -> dict[str, bytes]:
    """The trailing metadata that carries an error's hop and service."""
    metadata = {}
    if error.hop is not None:
        metadata[HOP_KEY] = error.hop.encode()
    if error.service is not None:
        metadata[SERVICE_KEY] = error.service.encode()
    return metadata


def wire_reason(error: TrionsmError) -> str:
    """The error's reason as sent in ``grpc-message`` (cut to a size every peer accepts)."""
    reason = error.reason
    if len(reason) > _MAX_REASON:
        reason = f"{reason[:_MAX_REASON]}... ({len(reason)} characters)"
    return reason


def error_from_status(
    status: int,
    message: str | None,
    metadata: Mapping[str, Any] | None,
    *,
    target: str,
    path: str,
) -> TrionsmError:
    """The error a client raises for a non-OK status from ``target``.

    A trionsm server sent the hop (and maybe the service) in trailing metadata: the error is
    rebuilt exactly. Any other server's status becomes the same class with ``target`` as the hop
    and the method's path in the reason.
    """
    hop = _text(metadata, HOP_KEY)
    if hop is not None:
        service = _text(metadata, SERVICE_KEY)
        return error_for_status(status, message or "", hop=hop, service=service)
    what = message or f"status {status}"
    return error_for_status(status, f"{path}: {what}", hop=target)


def _text(metadata: Mapping[str, Any] | None, key: str) -> str | None:
    value = None if metadata is None else metadata.get(key)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None
