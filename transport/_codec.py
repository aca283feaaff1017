"""Protobuf encoding and strict decoding shared by the carriers that use bytes (pure, no I/O).

betterproto2 parses leniently: truncated or mistyped bytes come out as a partial message without
complaint. Every listening carrier therefore decodes strictly, checking the wire format against
the message's schema (tags, varints, lengths, wire types, UTF-8, nesting), so bad input is
INVALID_ARGUMENT naming the method and the type instead of a half-empty request reaching a
handler. The NSM messages go through the compiled codec of ``_protobuf`` (one strict pass, the
same bytes and messages as betterproto2, several times faster); any other class is checked with
:func:`check_wire` and then parsed and encoded by betterproto2.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import betterproto2

from trionsm.errors import InvalidArgument

from ._protobuf import MAX_DEPTH, _varint, decode_message, encode_message, plan_for

__all__ = ["check_wire", "decode", "encode", "parse_strict"]

_MAX_DEPTH = MAX_DEPTH


def encode(message: betterproto2.Message) -> bytes:
    """The message's wire bytes; ValueError (with the reason) if it cannot be encoded."""
    try:
        plan = plan_for(type(message))
        return encode_message(message, plan) if plan is not None else bytes(message)
    except Exception as exc:  # whatever a field's value makes the encoder raise
        raise ValueError(
            f"{type(message).__name__} cannot be encoded: {type(exc).__name__}: {exc}"
        ) from exc


def decode(
    cls: type[betterproto2.Message], data: bytes, *, what: str, hop: str | None = None
) -> betterproto2.Message:
    """Parse ``data`` as ``cls``, strictly.

    Raises:
        InvalidArgument: ``{what}: malformed {cls}: {problem}``, naming ``hop``.
    """
    try:
        return parse_strict(cls, data)
    except (ValueError, EOFError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidArgument(f"{what}: malformed {cls.__name__}: {exc}", hop=hop) from None


def parse_strict(cls: type[betterproto2.Message], data: bytes) -> betterproto2.Message:
    """``data`` as ``cls``, checked strictly; ValueError (or EOFError, TypeError) if malformed."""
    plan = plan_for(cls)
    if plan is not None:
        return cast(betterproto2.Message, decode_message(cls, data, plan))
    check_wire(data, cls)
    return cls.parse(data)


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
