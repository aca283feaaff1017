"""A compiled protobuf codec for betterproto2 messages: strict, single-pass, byte-for-byte theirs.

Theory of operation. betterproto2 encodes and parses by interpreting its field metadata on every
call (and opens a ``warnings.catch_warnings`` block per field to compute each default), which
makes a 2 KB ``Connection`` cost about 250 µs each way; its parser is also lenient, so the
carriers used to check the bytes first (``_codec.check_wire``) and then parse them again. Here
each message class is compiled once into a :class:`Plan` (per field: name, number, kind, tag
bytes, wire type, nested class) and

* :func:`encode_message` writes exactly the bytes ``bytes(message)`` writes: fields in declaration
  order, defaults and None skipped, sub-messages (also empty ones) and map entries written in
  full, unknown fields kept and appended last;
* :func:`decode_message` parses and checks in one pass: every tag, varint and length must fit its
  message, field 0 and the wire types proto3 does not use are refused, a known field must arrive
  with its wire type, strings must be UTF-8, nesting is bounded; the result equals
  ``cls.parse(data)`` (values converted as betterproto2 does, unknown fields kept in
  ``_unknown_fields``, a repeated non-repeated field keeps its last value). Problems raise
  ``ValueError``.

A class using a feature the plans do not cover (floating point, fixed-width, zig-zag, packed
repeated numbers, bytes maps...) has no plan: :func:`plan_for` returns None and the caller falls
back to betterproto2. The NSM API needs none of those.
"""

from __future__ import annotations

from typing import Any, Final, cast

import betterproto2

__all__ = ["MAX_DEPTH", "Plan", "decode_message", "encode_message", "plan_for", "size_bound"]

MAX_DEPTH: Final = 100
"""Deepest nesting of messages accepted (the protobuf runtimes' recursion limit)."""

# field kinds (_WRAPPED: a message betterproto2 unwraps, as Timestamp into datetime)
_STRING, _BYTES, _BOOL, _INT32, _INT64, _UINT32, _UINT64, _ENUM = range(8)
_MESSAGE, _WRAPPED, _MAP = range(8, 11)
_SCALARS: Final = {
    betterproto2.TYPE_STRING: _STRING,
    betterproto2.TYPE_BYTES: _BYTES,
    betterproto2.TYPE_BOOL: _BOOL,
    betterproto2.TYPE_INT32: _INT32,
    betterproto2.TYPE_INT64: _INT64,
    betterproto2.TYPE_UINT32: _UINT32,
    betterproto2.TYPE_UINT64: _UINT64,
    betterproto2.TYPE_ENUM: _ENUM,
}
_VARINTS: Final = frozenset({_BOOL, _INT32, _INT64, _UINT32, _UINT64, _ENUM})
_WIRE_NAMES: Final = {0: "varint", 1: "fixed64", 2: "length-delimited", 5: "fixed32"}
_BYTE: Final = [bytes((n,)) for n in range(128)]


class _Unsupported(Exception):
    """A field the plans do not cover."""


class Plan:
    """One message class, compiled.

    Attributes:
        cls: the class.
        by_number: ``{number: (name, kind, wire type, repeated, extra)}`` for decoding.
        fields: ``(name, kind, tag bytes, repeated, extra)`` in declaration order, for encoding.
    """

    def __init__(self, cls: type[betterproto2.Message]) -> None:
        self.cls = cls
        self.by_number: dict[int, tuple[str, int, int, bool, Any]] = {}
        self.fields: list[tuple[str, int, bytes, bool, Any]] = []
        proto: Any = cast(Any, cls)._betterproto  # betterproto2's per-class metadata
        for name, meta in proto.meta_by_field_name.items():
            kind, extra = _kind(proto, name, meta)
            if meta.repeated and kind not in (_STRING, _BYTES, _MESSAGE):
                raise _Unsupported(f"repeated {meta.proto_type}")  # packed on the wire
            if (meta.optional or meta.group) and kind not in (_MESSAGE, _WRAPPED):
                raise _Unsupported("a scalar with presence")  # written even when 0
            wire = 0 if kind in _VARINTS else 2
            tag = _varint_bytes(meta.number << 3 | wire)
            self.by_number[meta.number] = (name, kind, wire, bool(meta.repeated), extra)
            self.fields.append((name, kind, tag, bool(meta.repeated), extra))
        # size_bound: every single varint field costs at most 20 bytes; the rest is walked
        self.fixed_bound = sum(20 for _n, kind, _t, rep, _e in self.fields if kind in _VARINTS)
        self.walked = [
            (name, kind, repeated, extra)
            for name, kind, _tag, repeated, extra in self.fields
            if kind not in _VARINTS
        ]


def _kind(proto: Any, name: str, meta: Any) -> tuple[int, Any]:
    if meta.map_meta:
        key_meta, value_meta = meta.map_meta
        key_kind = _SCALARS.get(key_meta.proto_type)
        value_kind = _SCALARS.get(value_meta.proto_type)
        value_cls = None
        if value_meta.proto_type == betterproto2.TYPE_MESSAGE and value_meta.unwrap is None:
            value_kind, value_cls = _MESSAGE, proto.cls_by_field[f"{name}.value"]
        if key_kind not in (_STRING, _INT32, _INT64, _UINT32, _UINT64, _BOOL) or value_kind in (
            None,
            _ENUM,
        ):
            raise _Unsupported(f"map<{key_meta.proto_type}, {value_meta.proto_type}>")
        entry = proto.cls_by_field[name]._betterproto.default_gen
        return _MAP, (key_kind, value_kind, value_cls, entry["key"](), entry["value"]())
    if meta.proto_type == betterproto2.TYPE_MESSAGE:
        if meta.unwrap is not None:
            return _WRAPPED, meta.unwrap()
        return _MESSAGE, proto.cls_by_field[name]
    kind = _SCALARS.get(meta.proto_type)
    if kind is None:
        raise _Unsupported(meta.proto_type)
    return kind, (proto.cls_by_field[name] if kind == _ENUM else None)


_PLANS: dict[type, Plan | None] = {}
_COMPILING: set[type] = set()


def plan_for(cls: type[betterproto2.Message]) -> Plan | None:
    """The compiled plan of ``cls`` (cached), or None if it or a class it nests is unsupported."""
    try:
        return _PLANS[cls]
    except KeyError:
        pass
    if not issubclass(cast(type, cls), betterproto2.Message):  # a None map value, say
        return None  # betterproto2 will complain about it
    if cls in _COMPILING:  # a cycle: decided by the outermost class being compiled
        return None
    _COMPILING.add(cls)
    try:
        plan: Plan | None = Plan(cls)
        assert plan is not None
        for _name, kind, _wire, _repeated, extra in plan.by_number.values():
            nested = extra[2] if kind == _MAP else extra if kind in (_MESSAGE, _WRAPPED) else None
            if nested is not None and nested is not cls and plan_for(nested) is None:
                plan = None
                break
    except _Unsupported:
        plan = None
    finally:
        _COMPILING.discard(cls)
    _PLANS[cls] = plan
    return plan


# -- encoding ------------------------------------------------------------------------------------


def _varint_bytes(value: int) -> bytes:
    if 0 <= value < 128:
        return _BYTE[value]
    if value < 0:
        if value < -(1 << 63):
            raise ValueError(f"{value} does not fit in 64 bits")
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_message(message: betterproto2.Message, plan: Plan) -> bytes:
    """``bytes(message)``, from ``plan`` (the plan of ``type(message)``)."""
    out = bytearray()
    _encode_into(out, message, plan)
    return bytes(out)


def _encode_into(out: bytearray, message: Any, plan: Plan) -> None:
    values = message.__dict__
    for name, kind, tag, repeated, extra in plan.fields:
        value = values[name]
        if value is None:
            continue
        if kind == _MESSAGE:
            if repeated:
                for item in value:
                    _put_message(out, tag, item, extra)
            else:
                _put_message(out, tag, value, extra)
            continue
        if not value:  # the default: "", 0, False, an empty list or map
            continue
        if repeated:
            for item in value:
                out += tag
                _put_scalar(out, kind, item)
        elif kind == _MAP:
            for key, item in value.items():
                _put_entry(out, tag, extra, key, item)
        elif kind == _WRAPPED:
            _put_message(out, tag, extra.from_wrapped(value), extra)
        else:
            out += tag
            _put_scalar(out, kind, value)
    out += message._unknown_fields


def _put_scalar(out: bytearray, kind: int, value: Any) -> None:
    if kind == _STRING:
        data = value.encode("utf-8")
        out += _varint_bytes(len(data))
        out += data
    elif kind == _BYTES:
        out += _varint_bytes(len(value))
        out += value
    else:
        out += _varint_bytes(int(value))


def _put_message(out: bytearray, tag: bytes, value: Any, cls: Any) -> None:
    plan = plan_for(type(value))
    data = encode_message(value, plan) if plan is not None else bytes(value)
    out += tag
    out += _varint_bytes(len(data))
    out += data


def _put_entry(out: bytearray, tag: bytes, spec: Any, key: Any, value: Any) -> None:
    key_kind, value_kind, _value_cls, _key_default, _value_default = spec
    entry = bytearray()
    entry += b"\x08" if key_kind != _STRING else b"\x0a"
    _put_scalar(entry, key_kind, key)
    if value_kind == _MESSAGE:
        plan = plan_for(type(value))
        data = encode_message(value, plan) if plan is not None else bytes(value)
        entry += b"\x12"
        entry += _varint_bytes(len(data))
        entry += data
    else:
        entry += b"\x12" if value_kind in (_STRING, _BYTES) else b"\x10"
        _put_scalar(entry, value_kind, value)
    out += tag
    out += _varint_bytes(len(entry))
    out += entry


# -- measuring -----------------------------------------------------------------------------------

_FIELD: Final = 10  # a field's tag (up to 5 bytes) and length prefix (up to 5 bytes)


def size_bound(message: Any, plan: Plan) -> int:
    """An upper bound of ``len(encode_message(message, plan))``, without encoding it.

    Strings count 1 byte per character if ASCII, else 4; varints their longest; a wrapped
    Timestamp 30 bytes.
    """
    values = message.__dict__
    total = plan.fixed_bound + len(values["_unknown_fields"])
    for name, kind, repeated, extra in plan.walked:
        value = values[name]
        if value is None:
            continue
        if kind == _STRING:
            if repeated:
                for item in value:
                    total += _FIELD + (len(item) if item.isascii() else 4 * len(item))
            else:
                total += _FIELD + (len(value) if value.isascii() else 4 * len(value))
        elif kind == _MESSAGE:
            for item in value if repeated else (value,):
                nested = plan_for(type(item))
                total += _FIELD + (size_bound(item, nested) if nested else _encoded_len(item))
        elif kind == _MAP:
            total += len(value) * 3 * _FIELD
            for key, item in value.items():
                total += _scalar_bound(key)
                if extra[1] == _MESSAGE:
                    nested = plan_for(type(item))
                    total += size_bound(item, nested) if nested else _encoded_len(item)
                else:
                    total += _scalar_bound(item)
        elif kind == _WRAPPED:
            total += _FIELD + 2 * (_FIELD + 10)
        else:  # bytes
            for item in value if repeated else (value,):
                total += _FIELD + len(item)
    return total


def _encoded_len(message: Any) -> int:
    try:
        return len(bytes(message))
    except Exception:  # not encodable: the encoder will say so; measure it as nothing here
        return 0


def _scalar_bound(value: Any) -> int:
    if type(value) is str:
        return len(value) if value.isascii() else 4 * len(value)
    if isinstance(value, bytes):
        return len(value)
    return 10


# -- decoding ------------------------------------------------------------------------------------


def decode_message(cls: type[betterproto2.Message], data: bytes, plan: Plan) -> Any:
    """``cls.parse(data)`` after checking ``data`` strictly (ValueError naming the problem)."""
    return _decode(plan, data, 0, len(data), 0)


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


def _decode(plan: Plan, data: bytes, pos: int, end: int, depth: int) -> Any:
    cls = plan.cls
    message = cls()
    values = message.__dict__
    fields = plan.by_number
    while pos < end:
        start = pos
        key = data[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0 is not valid")
        if wire not in _WIRE_NAMES:
            raise ValueError(f"field {number} has wire type {wire}, which proto3 does not use")
        field = fields.get(number)
        if field is None:
            pos = _skip(data, pos, end, wire, number, cls)
            message._unknown_fields += data[start:pos]
            continue
        name, kind, want, repeated, extra = field
        if wire != want:
            raise ValueError(f"field {number} of {cls.__name__} arrived as {_WIRE_NAMES[wire]}")
        if wire == 0:
            raw, pos = _varint(data, pos, end)
            value: Any = _convert(kind, raw, extra)
        else:
            if pos < end and data[pos] < 0x80:
                length, pos = data[pos], pos + 1
            else:
                length, pos = _varint(data, pos, end)
            stop = pos + length
            if stop > end:
                raise ValueError(
                    f"field {number} of {cls.__name__} needs {length} bytes, {end - pos} remain"
                )
            if kind == _STRING:
                value = _shared(data[pos:stop].decode("utf-8"))
            elif kind == _BYTES:
                value = data[pos:stop]
            else:
                if depth >= MAX_DEPTH:
                    raise ValueError(f"messages nested more than {MAX_DEPTH} deep")
                if kind == _MAP:
                    key_value = _entry(extra, data, pos, stop, depth + 1)
                    values[name][key_value[0]] = key_value[1]
                    pos = stop
                    continue
                value = _nested(extra, data, pos, stop, depth + 1)
                if kind == _WRAPPED:
                    value = value.to_wrapped()
            pos = stop
        if repeated:
            values[name].append(value)
        else:
            values[name] = value
    return message


_SHARED_MAX: Final = 4096  # strings remembered
_SHARED_LONGEST: Final = 1024  # characters of the longest one
_recent: dict[str, str] = {}


def _shared(value: str) -> str:
    """An equal string decoded recently, else ``value`` (remembered, the oldest forgotten).

    Decoded messages repeat strings (segment names, the service, tokens issued in the same
    second, mechanism types, labels): a hop holding thousands of connections holds one copy.
    """
    if len(value) > _SHARED_LONGEST:
        return value
    known = _recent.get(value)
    if known is not None:
        return known
    _recent[value] = value
    if len(_recent) > _SHARED_MAX:
        del _recent[next(iter(_recent))]
    return value


def _nested(cls: Any, data: bytes, pos: int, end: int, depth: int) -> Any:
    plan = plan_for(cls)
    assert plan is not None  # plan_for checked the nested classes
    return _decode(plan, data, pos, end, depth)


def _convert(kind: int, raw: int, extra: Any) -> Any:
    if kind == _BOOL:
        return raw > 0
    if kind == _UINT32:
        return raw & 0xFFFFFFFF
    if kind == _UINT64:
        return raw & 0xFFFFFFFFFFFFFFFF
    if kind == _INT32:
        raw &= 0xFFFFFFFF
        return raw - (1 << 32) if raw & 0x80000000 else raw
    raw &= 0xFFFFFFFFFFFFFFFF
    value = raw - (1 << 64) if raw & 0x8000000000000000 else raw
    return extra(value) if kind == _ENUM else value


def _skip(data: bytes, pos: int, end: int, wire: int, number: int, cls: Any) -> int:
    if wire == 0:
        return _varint(data, pos, end)[1]
    if wire == 2:
        length, pos = _varint(data, pos, end)
    else:
        length = 8 if wire == 1 else 4
    if pos + length > end:
        raise ValueError(
            f"field {number} of {cls.__name__} needs {length} bytes, {end - pos} remain"
        )
    return pos + length


def _entry(spec: Any, data: bytes, pos: int, end: int, depth: int) -> tuple[Any, Any]:
    """A map entry's key and value, as betterproto2's entry class would hold them."""
    key_kind, value_kind, value_cls, key, value = spec
    while pos < end:
        tag = data[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _varint(data, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0 or wire not in _WIRE_NAMES:
            raise ValueError(f"a map entry has field {number} of wire type {wire}")
        kind = key_kind if number == 1 else value_kind if number == 2 else None
        if kind is None:
            pos = _skip(data, pos, end, wire, number, _MapEntry)
            continue
        want = 0 if kind in _VARINTS else 2
        if wire != want:
            raise ValueError(f"field {number} of a map entry arrived as {_WIRE_NAMES[wire]}")
        if wire == 0:
            raw, pos = _varint(data, pos, end)
            item: Any = _convert(kind, raw, None)
        else:
            length, pos = _varint(data, pos, end)
            stop = pos + length
            if stop > end:
                raise ValueError(f"a map entry needs {length} bytes, {end - pos} remain")
            if kind == _STRING:
                item = data[pos:stop].decode("utf-8")
            elif kind == _BYTES:
                item = data[pos:stop]
            else:
                if depth >= MAX_DEPTH:
                    raise ValueError(f"messages nested more than {MAX_DEPTH} deep")
                item = _nested(value_cls, data, pos, stop, depth + 1)
            pos = stop
        if number == 1:
            key = item
        else:
            value = item
    if value is None and value_cls is not None:  # protobuf: an absent value is the default
        value = value_cls()  # (betterproto2 keeps None, which it then cannot encode)
    return key, value


class _MapEntry:
    """Names a map entry in errors."""
