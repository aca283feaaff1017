"""The ZeroMQ carrier's pure parts: envelope framing, CurveZMQ keys and ZAP replies (no I/O)."""

from __future__ import annotations

import contextlib
import math

import msgpack
import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st
from zmq.utils import z85

from trionsm.errors import DeadlineExceeded, NotFound, StatusCode, Unknown
from trionsm.transport._zmq_curve import CurveKeys, check_curve, zap_reply
from trionsm.transport._zmq_envelope import (
    BYE,
    MAX_FRAME,
    PING,
    VERSION,
    Envelope,
    EnvelopeError,
    Kind,
    decode,
    encode_call,
    encode_cancel,
    encode_credit,
    encode_data,
    encode_end,
    encode_error,
    to_error,
)


def pack(fields: object) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)  # type: ignore[no-any-return]


def test_a_call_round_trips() -> None:
    frame = encode_call(7, "/a.B/C", b"\x0a\x01x", metadata={"k": "v"}, timeout=1.5, window=64)
    assert decode(frame) == Envelope(
        Kind.CALL,
        7,
        method="/a.B/C",
        metadata={"k": "v"},
        timeout=1.5,
        payload=b"\x0a\x01x",
        window=64,
    )


def test_a_call_without_deadline_or_payload() -> None:
    envelope = decode(encode_call(1, "/a.B/C", None, metadata={}, timeout=None, window=0))
    assert (envelope.timeout, envelope.payload) == (None, None)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (encode_data(3, b"abc"), Envelope(Kind.DATA, 3, payload=b"abc")),
        (encode_end(3), Envelope(Kind.END, 3)),
        (encode_cancel(3), Envelope(Kind.CANCEL, 3)),
        (encode_credit(3, 32), Envelope(Kind.CREDIT, 3, window=32)),
        (BYE, Envelope(Kind.BYE)),
        (PING, Envelope(Kind.PING)),
    ],
)
def test_small_envelopes_round_trip(frame: bytes, expected: Envelope) -> None:
    assert decode(frame) == expected


def test_an_error_crosses_as_its_own_class_with_hop_and_service() -> None:
    error = to_error(decode(encode_error(9, NotFound("gone", hop="nse", service="icmp"))))
    assert type(error) is NotFound
    assert (error.reason, error.hop, error.service) == ("gone", "nse", "icmp")
    fields = {"v": 1, "k": "error", "id": 1, "st": 99, "r": "?", "h": None, "s": None}
    unknown = to_error(decode(pack(fields)))
    assert type(unknown) is Unknown


def test_unknown_keys_are_ignored() -> None:
    assert decode(pack({"v": VERSION, "k": "end", "id": 4, "future": [1, 2]})).kind is Kind.END


def test_an_infinite_deadline_is_none_and_nan_is_refused() -> None:
    fields = {"v": 1, "k": "call", "id": 2, "m": "/a.B/C", "p": b"", "w": 0}
    assert decode(pack(fields | {"dl": math.inf})).timeout is None
    with pytest.raises(EnvelopeError, match="not a number") as info:
        decode(pack(fields | {"dl": math.nan}))
    assert info.value.call_id == 2


@pytest.mark.parametrize(
    ("frame", "call_id", "match"),
    [
        (b"\xc1garbage", None, "not a msgpack envelope"),
        (encode_call(5, "/a.B/C", b"", metadata={}, timeout=None, window=0)[:-4], 5, "msgpack"),
        (encode_data(5, b"x")[:3], None, "not a msgpack envelope"),
        (pack([1, "call", 3]), None, "not a map"),
        (pack({"v": 1, "k": "call"}), None, "without a valid call id"),
        (pack({"v": 1, "k": "call", "id": -1}), None, "without a valid call id"),
        (pack({"v": 2, "k": "call", "id": 5}), 5, "version 2 is not 1"),
        (pack({"v": 1, "k": "teleport", "id": 5}), 5, "unknown envelope kind"),
        (pack({"v": 1, "k": "call", "id": 5, "dl": None, "p": b"", "w": 0}), 5, "'m' must be"),
        (pack({"v": 1, "k": "call", "id": 5, "m": "/x", "md": {"a": 1}, "w": 0}), 5, "'md'"),
        (pack({"v": 1, "k": "call", "id": 5, "m": "/x", "dl": "soon", "w": 0}), 5, "'dl'"),
        (pack({"v": 1, "k": "call", "id": 5, "m": "/x", "p": "str", "w": 0}), 5, "'p'"),
        (pack({"v": 1, "k": "call", "id": 5, "m": "/x", "p": b"", "w": -1}), 5, "'w'"),
        (pack({"v": 1, "k": "data", "id": 5}), 5, "'p' must be bytes"),
        (pack({"v": 1, "k": "credit", "id": 5, "n": 0}), 5, "positive"),
        (pack({"v": 1, "k": "error", "id": 5, "st": "bad"}), 5, "'st'"),
    ],
)
def test_bad_envelopes_say_why_and_keep_a_readable_call_id(
    frame: bytes, call_id: int | None, match: str
) -> None:
    with pytest.raises(EnvelopeError, match=match) as info:
        decode(frame)
    assert info.value.call_id == call_id


def test_an_oversized_envelope_is_refused_before_parsing() -> None:
    with pytest.raises(EnvelopeError, match="exceeds"):
        decode(b"\x00" * (MAX_FRAME + 1))


@given(st.binary(max_size=200))
def test_decode_raises_only_envelope_errors(frame: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        decode(frame)


@given(
    st.integers(0, 2**64 - 1),
    st.text(max_size=40),
    st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
    st.one_of(st.none(), st.floats(-1e6, 1e6)),
    st.one_of(st.none(), st.binary(max_size=100)),
    st.integers(0, 1000),
)
def test_calls_round_trip(
    call_id: int,
    method: str,
    metadata: dict[str, str],
    timeout: float | None,
    payload: bytes | None,
    window: int,
) -> None:
    frame = encode_call(call_id, method, payload, metadata=metadata, timeout=timeout, window=window)
    envelope = decode(frame)
    assert (envelope.call_id, envelope.method, dict(envelope.metadata)) == (
        call_id,
        method,
        metadata,
    )
    assert (envelope.timeout, envelope.payload, envelope.window) == (timeout, payload, window)


def test_error_status_values_are_the_grpc_ones() -> None:
    frame = encode_error(1, DeadlineExceeded("late"))
    assert msgpack.unpackb(frame)["st"] == StatusCode.DEADLINE_EXCEEDED == 4


# -- CurveZMQ keys and ZAP --------------------------------------------------------------------


def test_curve_keys_are_z85_and_hide_the_secret() -> None:
    keys = CurveKeys.generate()
    assert len(keys.public) == len(keys.secret) == 40
    assert keys.secret.decode() not in repr(keys)
    assert CurveKeys(keys.public.decode(), keys.secret.decode()) == keys  # str is accepted
    with pytest.raises(ValueError, match="40 Z85 characters"):
        CurveKeys(b"short", keys.secret)


def test_curve_keys_for_clients_need_the_server_key() -> None:
    server = CurveKeys.generate()
    client = CurveKeys.generate()
    with pytest.raises(ValueError, match="server_public"):
        check_curve(client, server=False)
    assert check_curve(client.dialing(server), server=False) is not None
    assert client.dialing(server).server_public == server.public
    with pytest.raises(TypeError, match="CurveKeys"):
        check_curve("secret", server=True)


def zap_request(public: bytes, mechanism: bytes = b"CURVE") -> list[bytes]:
    return [b"1.0", b"7", b"trionsm", b"127.0.0.1", b"", mechanism, z85.decode(public)]


def test_zap_maps_allowed_keys_to_identities_and_refuses_others() -> None:
    alice, mallory = zmq.curve_keypair()[0], zmq.curve_keypair()[0]
    keys = CurveKeys.generate(clients={alice: "spiffe://example.org/ns/default/sa/nsc"})
    assert zap_reply(zap_request(alice), keys) == [
        b"1.0",
        b"7",
        b"200",
        b"OK",
        b"spiffe://example.org/ns/default/sa/nsc",
        b"",
    ]
    assert zap_reply(zap_request(mallory), keys)[2] == b"400"
    assert zap_reply(zap_request(alice, b"PLAIN"), keys)[2] == b"400"
    assert zap_reply([b"2.0", b"7"], keys)[2] == b"500"


def test_zap_without_a_client_list_names_clients_by_key() -> None:
    alice = zmq.curve_keypair()[0]
    reply = zap_reply(zap_request(alice), CurveKeys.generate())
    assert reply[2:5] == [b"200", b"OK", b"curve:" + alice]
