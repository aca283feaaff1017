"""The ZeroMQ carrier's wire envelope: one msgpack map per ZeroMQ message (pure, no I/O).

Every ZeroMQ message of the carrier is a single frame holding a msgpack map with short string keys;
protobuf messages travel as opaque bytes inside it (``p``). The ROUTER adds and strips the routing
id frame, so both sides see exactly one frame. Unknown keys are ignored (a later version may add
some); a different ``v`` is refused.

* ``call`` (client to server): ``id``, ``m`` method path, ``md`` metadata, ``dl`` seconds left
  before the deadline or nil, ``p`` the request (nil for client-streaming), ``w`` reply window;
* ``data`` (both ways): ``id``, ``p``: a unary reply (it ends the call) or one stream message;
* ``end`` (both ways): ``id``: the reply stream ended cleanly, or the client's requests ended;
* ``error`` (server to client): ``id``, ``st`` status code, ``r`` reason, ``h`` hop, ``s``
  service; it ends the call;
* ``cancel`` (client to server): ``id``: the caller left; the server cancels the handler;
* ``credit`` (both ways): ``id``, ``n``: the receiver consumed ``n`` stream messages, so the
  sender may send ``n`` more;
* ``bye`` (server to client): the server is going away; every call on the connection is
  Unavailable;
* ``ping`` (server to client): the liveness sweep's probe; ignored.

Every map carries ``v`` (:data:`VERSION`) and ``k``. Call ids are chosen by the client, unique per
connection, and encoded first, so even a truncated or mangled envelope usually still names its
call. Flow control: a stream's sender may have at most ``window`` messages not yet credited (the
client's reply window is ``w`` in its call; the server's request window is :data:`WINDOW`).

:func:`decode` raises :class:`EnvelopeError` carrying the call id whenever one could be read, so the
server can answer an error instead of dropping the message.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any, Final

import attrs
import msgpack

from trionsm.errors import TrionsmError, error_for_status

from ._limits import MAX_MESSAGE_BYTES

__all__ = [
    "BYE",
    "ENVELOPE_ROOM",
    "MAX_FRAME",
    "PING",
    "VERSION",
    "WINDOW",
    "Envelope",
    "EnvelopeError",
    "Kind",
    "decode",
    "encode_call",
    "encode_cancel",
    "encode_credit",
    "encode_data",
    "encode_end",
    "encode_error",
    "frame_cap",
    "to_error",
]

VERSION: Final = 1
ENVELOPE_ROOM: Final = 64 * 1024
"""Bytes an envelope may take beyond its protobuf payload (metadata, method path, fields)."""


def frame_cap(max_message_bytes: int) -> int:
    """The largest envelope a socket takes (``ZMQ_MAXMSGSIZE``; libzmq drops a connection that
    sends more) for messages of at most ``max_message_bytes``.

    Four times the message limit: a message over the limit but under the cap is refused for its
    own call only (``ResourceExhausted``, as gRPC does), and one message can never hold more than
    the cap in memory.
    """
    return 4 * max_message_bytes + ENVELOPE_ROOM


MAX_FRAME: Final = frame_cap(MAX_MESSAGE_BYTES)
"""The envelope cap for the default message limit (16 MiB and 64 KiB)."""
WINDOW: Final = 64
"""Stream messages a sender may have outstanding before the receiver's credit."""
_MAX_ID = 2**64 - 1


class Kind(enum.Enum):
    """What an envelope is (the ``k`` field)."""

    CALL = "call"
    DATA = "data"
    END = "end"
    ERROR = "error"
    CANCEL = "cancel"
    CREDIT = "credit"
    BYE = "bye"
    PING = "ping"


_KINDS = {kind.value: kind for kind in Kind}
_WITHOUT_ID = (Kind.BYE, Kind.PING)


@attrs.frozen
class Envelope:
    """A decoded envelope; fields a kind does not use keep their defaults."""

    kind: Kind
    call_id: int = 0
    method: str = ""
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    timeout: float | None = None
    payload: bytes | None = None
    window: int = 0
    status: int = 0
    reason: str = ""
    hop: str | None = None
    service: str | None = None


class EnvelopeError(ValueError):
    """A frame that is not a valid envelope.

    Attributes:
        call_id: the call it belongs to, when that much could be read; else None.
        reason: what is wrong, for the error reply or the log.
    """

    def __init__(self, reason: str, call_id: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.call_id = call_id


def _pack(fields: dict[str, Any]) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)  # type: ignore[no-any-return]


def encode_call(
    call_id: int,
    method: str,
    payload: bytes | None,
    *,
    metadata: Mapping[str, str],
    timeout: float | None,
    window: int,
) -> bytes:
    """A ``call`` envelope; ``timeout`` is the seconds left before the deadline (None: none)."""
    return _pack(
        {
            "id": call_id,
            "v": VERSION,
            "k": "call",
            "m": method,
            "md": dict(metadata),
            "dl": timeout,
            "p": payload,
            "w": window,
        }
    )


def encode_data(call_id: int, payload: bytes) -> bytes:
    return _pack({"id": call_id, "v": VERSION, "k": "data", "p": payload})


def encode_end(call_id: int) -> bytes:
    return _pack({"id": call_id, "v": VERSION, "k": "end"})


def encode_cancel(call_id: int) -> bytes:
    return _pack({"id": call_id, "v": VERSION, "k": "cancel"})


def encode_credit(call_id: int, count: int) -> bytes:
    return _pack({"id": call_id, "v": VERSION, "k": "credit", "n": count})


def encode_error(call_id: int, error: TrionsmError) -> bytes:
    """An ``error`` envelope carrying the status, reason, hop and service of ``error``."""
    return _pack(
        {
            "id": call_id,
            "v": VERSION,
            "k": "error",
            "st": int(error.status),
            "r": error.reason,
            "h": error.hop,
            "s": error.service,
        }
    )


BYE: Final = _pack({"v": VERSION, "k": "bye"})
PING: Final = _pack({"v": VERSION, "k": "ping"})


def to_error(envelope: Envelope) -> TrionsmError:
    """The error an ``error`` envelope stands for: the same class, reason, hop and service."""
    return error_for_status(
        envelope.status, envelope.reason, hop=envelope.hop, service=envelope.service
    )


def decode(frame: bytes, max_frame: int = MAX_FRAME) -> Envelope:
    """Decode and check one envelope (at most ``max_frame`` bytes).

    Raises:
        EnvelopeError: not msgpack, not a map, a wrong version, an unknown kind or a missing or
            mistyped field; ``call_id`` is set when the map had a usable ``id``.
    """
    if len(frame) > max_frame:
        raise EnvelopeError(f"envelope of {len(frame)} bytes exceeds {max_frame}")
    try:
        fields = msgpack.unpackb(frame, raw=False, use_list=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        reason = f"not a msgpack envelope ({type(exc).__name__})"
        raise EnvelopeError(reason, _salvage_id(frame)) from None
    if not isinstance(fields, dict):
        raise EnvelopeError(f"envelope is a msgpack {type(fields).__name__}, not a map")
    raw_id = fields.get("id")
    call_id = raw_id if type(raw_id) is int and 0 <= raw_id <= _MAX_ID else None
    version = fields.get("v")
    if version != VERSION:
        raise EnvelopeError(f"envelope version {version!r} is not {VERSION}", call_id)
    kind = _KINDS.get(fields.get("k"))  # type: ignore[arg-type]
    if kind is None:
        raise EnvelopeError(f"unknown envelope kind {fields.get('k')!r}", call_id)
    if kind in _WITHOUT_ID:
        return Envelope(kind)
    if call_id is None:
        raise EnvelopeError(f"{kind.value} envelope without a valid call id")
    return _decode_fields(kind, call_id, fields)


def _salvage_id(frame: bytes) -> int | None:
    """The call id at the head of a map that does not decode as a whole (truncated, mangled)."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=len(frame) + 1)
    unpacker.feed(frame)
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            value = unpacker.unpack()
            if key == "id":
                return value if type(value) is int and 0 <= value <= _MAX_ID else None
    except Exception:  # the damage came before the id
        return None
    return None


def _decode_fields(kind: Kind, call_id: int, fields: dict[Any, Any]) -> Envelope:
    def need(key: str, types: tuple[type, ...], what: str) -> Any:
        value = fields.get(key)
        if type(value) not in types:
            raise EnvelopeError(f"{kind.value} envelope: {key!r} must be {what}", call_id)
        return value

    if kind is Kind.CALL:
        metadata = fields.get("md") or {}
        if not isinstance(metadata, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()
        ):
            raise EnvelopeError("call envelope: 'md' must map str to str", call_id)
        timeout = need("dl", (int, float, type(None)), "a number of seconds or nil")
        if timeout is not None and math.isnan(timeout):
            raise EnvelopeError("call envelope: 'dl' is not a number", call_id)
        if timeout == math.inf:
            timeout = None
        window = need("w", (int,), "an int")
        if window < 0:
            raise EnvelopeError("call envelope: 'w' must not be negative", call_id)
        return Envelope(
            kind,
            call_id,
            method=need("m", (str,), "a str"),
            metadata=metadata,
            timeout=None if timeout is None else float(timeout),
            payload=need("p", (bytes, type(None)), "bytes or nil"),
            window=window,
        )
    if kind is Kind.DATA:
        return Envelope(kind, call_id, payload=need("p", (bytes,), "bytes"))
    if kind is Kind.CREDIT:
        count = need("n", (int,), "an int")
        if not 0 < count <= _MAX_ID:
            raise EnvelopeError("credit envelope: 'n' must be positive", call_id)
        return Envelope(kind, call_id, window=count)
    if kind is Kind.ERROR:
        return Envelope(
            kind,
            call_id,
            status=need("st", (int,), "an int"),
            reason=need("r", (str,), "a str"),
            hop=need("h", (str, type(None)), "a str or nil"),
            service=need("s", (str, type(None)), "a str or nil"),
        )
    return Envelope(kind, call_id)  # end, cancel
