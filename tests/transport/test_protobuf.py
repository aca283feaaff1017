"""The compiled codec (``_protobuf``) against betterproto2, on every message class of the NSM API.

Encoding must give exactly ``bytes(message)``; decoding must accept exactly what the strict check
plus betterproto2's parse accepted (``check_wire`` then ``cls.parse``) and give an equal message,
unknown fields included. Property-based, over random messages and random damage to their bytes.
"""

from __future__ import annotations

import datetime
import importlib
import inspect
import pkgutil
from typing import Any

import betterproto2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trionsm.api
from trionsm.api.connection import Connection, ConnectionEvent
from trionsm.errors import InvalidArgument
from trionsm.samples import sample_connection
from trionsm.transport._codec import check_wire, decode, encode
from trionsm.transport._protobuf import decode_message, encode_message, plan_for, size_bound


def _classes() -> list[type[betterproto2.Message]]:
    found: set[type[betterproto2.Message]] = set()
    for info in pkgutil.walk_packages(trionsm.api.__path__, "trionsm.api."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, betterproto2.Message)
                and obj is not betterproto2.Message
                and obj.__module__.startswith("trionsm.api")
            ):
                found.add(obj)
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


CLASSES = _classes()
_INTS = {
    betterproto2.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    betterproto2.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    betterproto2.TYPE_UINT32: st.integers(0, 2**32 - 1),
    betterproto2.TYPE_UINT64: st.integers(0, 2**64 - 1),
}
_TIMES = st.datetimes(
    min_value=datetime.datetime(1970, 1, 1),
    max_value=datetime.datetime(2200, 1, 1),
    timezones=st.just(datetime.UTC),
)


def _scalar(proto: Any, name: str, proto_type: str) -> st.SearchStrategy[Any]:
    if proto_type == betterproto2.TYPE_STRING:
        return st.text(max_size=12)
    if proto_type == betterproto2.TYPE_BYTES:
        return st.binary(max_size=12)
    if proto_type == betterproto2.TYPE_BOOL:
        return st.booleans()
    if proto_type == betterproto2.TYPE_ENUM:
        enum = proto.cls_by_field[name]
        return st.sampled_from(list(enum)) | st.integers(-5, 300).map(enum)
    return _INTS[proto_type]


def messages(cls: type[betterproto2.Message], depth: int = 3) -> st.SearchStrategy[Any]:
    """Random instances of ``cls`` (sub-messages to ``depth`` levels)."""
    proto: Any = cls._betterproto  # type: ignore[attr-defined]
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, meta in proto.meta_by_field_name.items():
        if meta.map_meta:
            key = _scalar(proto, f"{name}.key", meta.map_meta[0].proto_type)
            if meta.map_meta[1].proto_type == betterproto2.TYPE_MESSAGE:
                if depth == 0:
                    continue
                value: st.SearchStrategy[Any] = messages(
                    proto.cls_by_field[f"{name}.value"], depth - 1
                )
            else:
                value = _scalar(proto, f"{name}.value", meta.map_meta[1].proto_type)
            fields[name] = st.dictionaries(key, value, max_size=3)
            continue
        if meta.proto_type == betterproto2.TYPE_MESSAGE:
            if meta.unwrap is not None:
                item: st.SearchStrategy[Any] = _TIMES
            elif depth == 0:
                continue
            else:
                item = messages(proto.cls_by_field[name], depth - 1)
        else:
            item = _scalar(proto, name, meta.proto_type)
        if meta.repeated:
            fields[name] = st.lists(item, max_size=3)
        elif meta.proto_type == betterproto2.TYPE_MESSAGE:
            fields[name] = st.none() | item
        else:
            fields[name] = item
    return st.fixed_dictionaries({}, optional=fields).map(lambda kwargs: cls(**kwargs))


def reference_decode(cls: type[betterproto2.Message], data: bytes) -> Any:
    """What the carriers did before: the strict check, then betterproto2's parse, with a map
    entry's absent message value read as the empty message, as protobuf says (betterproto2
    keeps None there, which it then cannot encode)."""
    check_wire(data, cls)
    return with_map_defaults(cls.parse(data))


def with_map_defaults(message: Any) -> Any:
    if not isinstance(message, betterproto2.Message):
        return message
    proto = message._betterproto
    for name, meta in proto.meta_by_field_name.items():
        value = getattr(message, name)
        if meta.map_meta and meta.map_meta[1].proto_type == betterproto2.TYPE_MESSAGE:
            empty = proto.cls_by_field[f"{name}.value"]
            for key, item in value.items():
                value[key] = empty() if item is None else with_map_defaults(item)
        elif isinstance(value, list):
            for item in value:
                with_map_defaults(item)
        else:
            with_map_defaults(value)
    return message


def test_a_map_entry_without_its_message_value_holds_the_empty_message() -> None:
    wire = bytes([0x12, 0x02, 0x0A, 0x00])  # ConnectionEvent.connections: {"": <absent>}
    plan = plan_for(ConnectionEvent)
    assert plan is not None
    decoded = decode_message(ConnectionEvent, wire, plan)
    assert decoded.connections == {"": Connection()}
    assert bytes(decoded) == bytes(ConnectionEvent(connections={"": Connection()}))


def same(left: Any, right: Any) -> bool:
    return bool(left == right) and bytes(left) == bytes(right)


def test_every_nsm_message_has_a_plan() -> None:
    assert CLASSES
    assert [cls.__name__ for cls in CLASSES if plan_for(cls) is None] == []


def test_the_sample_connection() -> None:
    message = sample_connection()
    plan = plan_for(type(message))
    assert plan is not None
    data = bytes(message)
    assert encode_message(message, plan) == data
    assert same(decode_message(type(message), data, plan), type(message).parse(data))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
@settings(max_examples=60)
@given(data=st.data())
def test_encoding_is_betterproto2s(cls: type[betterproto2.Message], data: st.DataObject) -> None:
    message = data.draw(messages(cls))
    plan = plan_for(cls)
    assert plan is not None
    wire = bytes(message)
    assert encode_message(message, plan) == wire
    decoded = decode_message(cls, wire, plan)
    assert same(decoded, cls.parse(wire))
    assert size_bound(message, plan) >= len(wire)  # what inproc measures shared messages by


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
@settings(max_examples=80)
@given(data=st.data())
def test_decoding_accepts_and_refuses_as_before(
    cls: type[betterproto2.Message], data: st.DataObject
) -> None:
    wire = bytearray(bytes(data.draw(messages(cls, depth=2))))
    damage = data.draw(st.sampled_from(["none", "flip", "cut", "insert", "unknown"]))
    if damage == "flip" and wire:
        at = data.draw(st.integers(0, len(wire) - 1))
        wire[at] ^= data.draw(st.integers(1, 255))
    elif damage == "cut" and wire:
        del wire[data.draw(st.integers(0, len(wire) - 1)) :]
    elif damage == "insert":
        at = data.draw(st.integers(0, len(wire)))
        wire[at:at] = data.draw(st.binary(min_size=1, max_size=6))
    elif damage == "unknown":  # an unknown field, kept as betterproto2 keeps it
        wire += bytes([0xF8, 0x07, 0x2A])  # field 127, varint 42
    plan = plan_for(cls)
    assert plan is not None
    try:
        expected = reference_decode(cls, bytes(wire))
    except (ValueError, EOFError, TypeError):
        with pytest.raises(ValueError):  # noqa: PT011  # whatever problem the reference saw
            decode_message(cls, bytes(wire), plan)
        return
    decoded = decode_message(cls, bytes(wire), plan)
    assert same(decoded, expected)
    assert decoded._unknown_fields == expected._unknown_fields


def test_decode_and_encode_name_what_is_wrong() -> None:
    with pytest.raises(InvalidArgument, match=r"Request: malformed Connection: field 1 .* needs"):
        decode(Connection, b"\x0a\x05ab", what="Request", hop="nse")
    with pytest.raises(InvalidArgument, match="arrived as varint"):
        decode(Connection, b"\x08\x01", what="Request")
    with pytest.raises(InvalidArgument, match="utf-8"):
        decode(Connection, b"\x0a\x01\xff", what="Request")
    with pytest.raises(ValueError, match="cannot be encoded"):
        encode(Connection(labels={"k": 3}))  # type: ignore[dict-item]
    assert encode(Connection(id="x")) == bytes(Connection(id="x"))
