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

import functools
from collections.abc import Mapping
from typing import Any, Final, cast

import betterproto2
from grpclib.config import Configuration
from grpclib.const import Cardinality as GrpcCardinality
from grpclib.encoding.base import CodecBase

from trionsm.errors import InvalidArgument, TrionsmError, error_for_status

from ._services import Cardinality

__all__ = [
    "CARDINALITY",
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

MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
"""The largest message a server accepts (gRPC's default receive limit): RESOURCE_EXHAUSTED above."""

MAX_CONCURRENT_STREAMS: Final = 2**31 - 1
"""What our servers advertise in SETTINGS_MAX_CONCURRENT_STREAMS (h2's default is 100, and a
grpclib client silently queues every stream past the server's limit)."""

KEEPALIVE_INTERVAL: Final = 1.0
"""Seconds between HTTP/2 PINGs while a connection has streams open (servers, and clients of a
server that welcomes them: see :data:`PINGS_WELCOME`)."""

KEEPALIVE_TIMEOUT: Final = 1.0
"""Seconds to wait for a PING's ack before closing the connection: a dead or partitioned peer
breaks every stream on it within about ``KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT``."""

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
_MAX_DEPTH = 100  # nesting, as the protobuf runtimes' recursion limit


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


def encode(message: betterproto2.Message) -> bytes:
    """The message's wire bytes; ValueError (with the reason) if betterproto2 cannot encode it."""
    try:
        return bytes(message)
    except Exception as exc:  # betterproto2 raises whatever its field encoders raise
        raise ValueError(
            f"{type(message).__name__} cannot be encoded: {type(exc).__name__}: {exc}"
        ) from exc


def decode(
    cls: type[betterproto2.Message], data: bytes, *, what: str, hop: str | None = None
) -> betterproto2.Message:
    """Parse ``data`` as ``cls`` after checking it strictly.

    Raises:
        InvalidArgument: ``{what}: malformed {cls}: {problem}``, naming ``hop``.
    """
    try:
        check_wire(data, cls)
        return cls.parse(data)
    except (ValueError, EOFError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidArgument(f"{what}: malformed {cls.__name__}: {exc}", hop=hop) from None


def check_wire(data: bytes, cls: type[betterproto2.Message]) -> None:
    """Raise ValueError unless ``data`` is well-formed protobuf wire format for ``cls``.

    Checks every tag, varint and length (nothing may run past the end of its message), that each
    known field uses a wire type its declared type allows, and recurses into nested messages and
    map entries. Unknown fields are skipped, as protobuf requires.
    """
    _check(data, 0, len(data), cls, 0)


_WIRE_NAMES = {0: "varint", 1: "fixed64", 2: "length-delimited", 5: "fixed32"}


@functools.cache
def _schema(cls: type[betterproto2.Message]) -> dict[int, tuple[frozenset[int], Any]]:
    """``{field number: (allowed wire types, nested message class or None)}``."""
    proto = cast(Any, cls)._betterproto  # betterproto2's per-class metadata
    schema: dict[int, tuple[frozenset[int], Any]] = {}
    for name, meta in proto.meta_by_field_name.items():
        kind = meta.proto_type
        nested: Any = None
        if kind in betterproto2.WIRE_VARINT_TYPES:
            wires = {betterproto2.WIRE_VARINT}
        elif kind in betterproto2.WIRE_FIXED_64_TYPES:
            wires = {betterproto2.WIRE_FIXED_64}
        elif kind in betterproto2.WIRE_FIXED_32_TYPES:
            wires = {betterproto2.WIRE_FIXED_32}
        else:
            wires = {betterproto2.WIRE_LEN_DELIM}
            if kind in (betterproto2.TYPE_MESSAGE, betterproto2.TYPE_MAP):
                nested = meta.unwrap() if meta.unwrap else proto.cls_by_field[name]
        if meta.repeated and kind in betterproto2.PACKED_TYPES:
            wires.add(betterproto2.WIRE_LEN_DELIM)
        schema[meta.number] = (frozenset(wires), nested)
    return schema


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while shift < 70:
        if pos >= end:
            raise ValueError("a varint is cut short")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise ValueError("a varint is longer than 10 bytes")


def _check(data: bytes, pos: int, end: int, cls: type[betterproto2.Message], depth: int) -> None:
    schema = _schema(cls)
    while pos < end:
        key = data[pos]  # tags of fields 1..15 fit in one byte: skip the general decoder
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0 is not valid")
        if wire not in _WIRE_NAMES:
            raise ValueError(f"field {number} has wire type {wire}, which proto3 does not use")
        allowed, nested = schema.get(number, (None, None))
        if allowed is not None and wire not in allowed:
            raise ValueError(f"field {number} of {cls.__name__} arrived as {_WIRE_NAMES[wire]}")
        if wire == betterproto2.WIRE_VARINT:
            _, pos = _varint(data, pos, end)
            continue
        if wire == betterproto2.WIRE_LEN_DELIM:
            if pos < end and data[pos] < 0x80:
                length, pos = data[pos], pos + 1
            else:
                length, pos = _varint(data, pos, end)
        else:
            length = 8 if wire == betterproto2.WIRE_FIXED_64 else 4
        if pos + length > end:
            raise ValueError(
                f"field {number} of {cls.__name__} needs {length} bytes, {end - pos} remain"
            )
        if nested is not None:
            if depth >= _MAX_DEPTH:
                raise ValueError(f"messages nested more than {_MAX_DEPTH} deep")
            _check(data, pos, pos + length, nested, depth + 1)
        pos += length


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
