"""The limits every carrier enforces the same way: message size and gRPC's metadata rules (pure).

One message-size limit, :data:`MAX_MESSAGE_BYTES` by default (gRPC's default receive limit), applies
to every protobuf message on every carrier, in both directions: the sender refuses to send a larger
message and the receiver refuses to read one (in case the sender is not ours or was configured with
a larger limit). Either way the caller gets :class:`ResourceExhausted` naming the hop, the method
and the size. ``serve(..., max_message_bytes=...)`` and ``open_client(..., max_message_bytes=...)``
change it per server and per client.

Metadata follows gRPC's rules on every carrier (:func:`check_metadata`), so that metadata working
over inproc or ZeroMQ can never fail only over gRPC: keys are lower-cased ``[0-9a-z_.-]``, not
reserved (``grpc-*``, HTTP/2's own headers) and not binary (``*-bin``: trionsm metadata maps text to
text); values are printable ASCII; everything together stays under :data:`MAX_METADATA_BYTES`.

The inproc carrier shares message objects instead of encoding them; :func:`encoded_size_over`
measures such a message without encoding it, from a cheap upper bound of its encoded size, and
encodes it only when that bound is over the limit.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import Any, Final

import betterproto2

from trionsm.errors import InvalidArgument, ResourceExhausted

from ._protobuf import plan_for, size_bound

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_METADATA_BYTES",
    "check_message_limit",
    "check_message_size",
    "check_metadata",
    "encoded_size_over",
]

MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
"""The default largest protobuf message, in bytes, on every carrier (gRPC's default)."""

MAX_METADATA_BYTES: Final = 8 * 1024
"""The largest metadata of one call: the sum of its keys and values plus 32 bytes per entry
(HTTP/2's way of counting a header list; gRPC's default metadata limit is 8 KiB)."""

_KEY = re.compile(r"[0-9a-z_.\-]+")
_VALUE = re.compile(r"[ -~]+")  # printable ASCII, space included; grpclib refuses empty values
_RESERVED = frozenset({"te", "content-type", "user-agent", "host"})


def check_message_limit(limit: int) -> int:
    """``limit`` if it is a usable message-size limit; ValueError otherwise."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_message_bytes must be a positive int, not {limit!r}")
    return limit


def check_message_size(size: int, limit: int, *, what: str, path: str, hop: str | None) -> None:
    """Raise :class:`ResourceExhausted` if a ``size``-byte message is over ``limit``.

    Args:
        size: the message's encoded size in bytes.
        limit: the largest size allowed.
        what: the message as the reason names it (``request``, ``reply``).
        path: the method.
        hop: where the limit was hit.
    """
    if size > limit:
        raise ResourceExhausted(
            f"{path}: a {what} of {size} bytes is over the {limit}-byte message limit", hop=hop
        )


def check_metadata(metadata: Mapping[str, str], *, path: str, hop: str | None) -> None:
    """Raise :class:`InvalidArgument` naming the key unless gRPC can carry ``metadata``.

    Keys arrive lower-cased (:class:`CallOptions` and :class:`CallContext` fold them).
    """
    total = 0
    for key, value in metadata.items():
        problem = _key_problem(key)
        if problem is None and not _VALUE.fullmatch(value):
            problem = "its value must be 1 or more printable ASCII characters"
        if problem is not None:
            raise InvalidArgument(f"{path}: metadata key {key!r}: {problem}", hop=hop)
        total += len(key) + len(value) + 32
    if total > MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"{path}: metadata of {total} bytes (keys {', '.join(sorted(metadata))}) is over "
            f"the {MAX_METADATA_BYTES}-byte limit",
            hop=hop,
        )


def _key_problem(key: str) -> str | None:
    if not _KEY.fullmatch(key):
        return "keys are made of 0-9 a-z _ . - only"
    if key.startswith("grpc-") or key in _RESERVED:
        return "the key is reserved by gRPC and HTTP/2"
    if key.endswith("-bin"):
        return "binary (-bin) metadata is not supported: metadata maps text to text"
    return None


def encoded_size_over(message: betterproto2.Message, limit: int) -> int | None:
    """The encoded size of ``message`` if it is over ``limit`` bytes, else None.

    Cheap for messages well under the limit: it adds up an upper bound of the encoded size from
    the field values and encodes the message only when that bound exceeds ``limit``.
    """
    plan = plan_for(type(message))
    bound = size_bound(message, plan) if plan is not None else _bound(message)
    if bound <= limit:
        return None
    try:
        size = len(bytes(message))
    except Exception:  # not encodable at all: the wire would refuse it anyway, not our concern
        return None
    return size if size > limit else None


_FIELD = 10  # a field's tag (up to 5 bytes) and length prefix (up to 5 bytes)
_ENTRY = 3 * _FIELD  # a map entry: its own field, the key's and the value's
_SCALAR = 10  # the longest varint; fixed64 and fixed32 are shorter
_TIME = 24  # a Timestamp or Duration message
_UNKNOWN = 1 << 62  # a value of a type we do not know: measure it by encoding


def _bound(message: betterproto2.Message) -> int:
    """An upper bound of the encoded size (the field values, and ``_unknown_fields`` bytes)."""
    total = 0
    for value in vars(message).values():
        kind = type(value)  # exact types first: this runs for every field of every message
        if kind is str:
            total += _FIELD + (len(value) if value.isascii() else 4 * len(value))
        elif value is None:
            continue
        elif kind is bytes:
            total += _FIELD + len(value)
        elif kind is list:
            total += _FIELD * len(value)
            for item in value:
                total += len(item) if type(item) is str and item.isascii() else _one(item)
        elif kind is dict:
            total += _ENTRY * len(value)
            for key, item in value.items():
                total += len(key) if type(key) is str and key.isascii() else _one(key)
                total += len(item) if type(item) is str and item.isascii() else _one(item)
        else:
            total += _FIELD + _one(value)
    return total


def _one(value: Any) -> int:
    kind = type(value)
    if kind is str:
        return len(value) if value.isascii() else 4 * len(value)
    if isinstance(value, betterproto2.Message):
        return _bound(value)
    if kind is bytes or kind is bytearray:
        return len(value)
    if isinstance(value, int | float):  # bool and enums are ints
        return _SCALAR
    if isinstance(value, datetime.datetime | datetime.timedelta):
        return _TIME
    return _UNKNOWN
