"""One call of the ZeroMQ client as its caller sees it: its mailbox, its state and its stream.

The channel's owner task fills a call's :class:`Mailbox` (reply payloads, then :data:`END` or an
error) and never blocks doing so; the caller is the mailbox's only reader. What a caller sends goes
to the owner as :class:`Frame` items on the owner's bounded mailbox. Flow control of streams: the
reader grants the server credit every ``WINDOW // 2`` messages it consumes; a writer of requests
waits for the server's credit (see ``_zmq_envelope``).
"""

from __future__ import annotations

import collections
import math
from collections.abc import AsyncIterator
from typing import Any, Final

import attrs
import betterproto2
import trio

from trionsm.errors import Internal, InvalidArgument, TrionsmError, Unavailable

from ._channel import as_caller_sees_it
from ._codec import encode, parse_strict
from ._limits import MAX_MESSAGE_BYTES, check_message_size
from ._services import MethodSpec
from ._zmq_envelope import WINDOW, encode_credit, encode_data, encode_end

__all__ = [
    "END",
    "FAREWELL",
    "Call",
    "Cancel",
    "Frame",
    "Mailbox",
    "Start",
    "ZmqClientStream",
    "encode_message",
    "parse_reply",
]

END: Final = object()
"""The last item of a stream that ended cleanly."""
FAREWELL: Final = object()
"""Asks the owner to send ``cancel`` for the calls ``aclose`` failed."""


class Mailbox:
    """What the owner hands one call. ``put`` never blocks; one task reads with ``get``."""

    def __init__(self) -> None:
        self._items: collections.deque[object] = collections.deque()
        self._arrived = trio.Event()

    def put(self, item: object) -> None:
        self._items.append(item)
        self._arrived.set()

    async def get(self) -> object:
        """The next item; blocks until there is one. Cancellable, nothing lost."""
        while not self._items:
            self._arrived = trio.Event()
            await self._arrived.wait()
        await trio.lowlevel.checkpoint()
        return self._items.popleft()


@attrs.define(eq=False)
class Call:
    """One call's state, shared by its caller and the owner (one Trio thread, no locks).

    Attributes:
        frame: the encoded ``call`` envelope.
        dispatched: set once the call is sent, or failed before it could be.
        credit: requests the server will still accept (client-streaming calls).
        allowance: stream messages the server may still send before our next credit.
        done: the call is over for both: the owner forgot it, or the caller left.
        scope: a unary caller's scope; the owner sets its deadline to ``deadline`` on sending.
        limit: the largest message this client sends or takes on the call.
    """

    call_id: int
    method: MethodSpec
    frame: bytes
    mailbox: Mailbox = attrs.field(factory=Mailbox)
    dispatched: trio.Event = attrs.field(factory=trio.Event)
    credit: int = WINDOW
    allowance: int = WINDOW
    credit_changed: trio.Event = attrs.field(factory=trio.Event)
    done: bool = False
    scope: trio.CancelScope | None = None
    deadline: float = math.inf
    limit: int = MAX_MESSAGE_BYTES


@attrs.frozen(eq=False)
class Start:
    """To the owner: send ``call`` as soon as there is a connection."""

    call: Call


@attrs.frozen(eq=False)
class Frame:
    """To the owner: send ``frame`` (data, end or credit) if ``call`` is still in flight."""

    call: Call
    frame: bytes


@attrs.frozen(eq=False)
class Cancel:
    """To the owner: the caller left ``call``; tell the server if it was sent."""

    call: Call


def encode_message(message: betterproto2.Message) -> bytes:
    """Protobuf bytes of ``message``; InvalidArgument if it cannot be encoded."""
    try:
        return encode(message)
    except ValueError as exc:
        raise InvalidArgument(f"{exc}: it does not survive the wire") from exc


def parse_reply(call: Call, item: object, target: str) -> betterproto2.Message:
    """The reply a mailbox item stands for; raises the error it carries."""
    if isinstance(item, TrionsmError):
        raise as_caller_sees_it(item, call.method, target, call.deadline)
    if not isinstance(item, bytes):
        raise Internal(f"{call.method.path}: the call ended without a reply", hop=target)
    check_message_size(len(item), call.limit, what="reply", path=call.method.path, hop=target)
    try:
        return parse_strict(call.method.reply, item)
    except Exception as exc:
        raise Internal(
            f"{call.method.path}: the reply is not a valid {call.method.reply.__name__} "
            f"({type(exc).__name__}: {exc})",
            hop=target,
        ) from None


class ZmqClientStream:
    """One streaming call as its caller sees it (see :class:`ClientStream`).

    Args:
        call: the call.
        owner: the channel owner's mailbox.
        target: the server's URL, for errors.
    """

    def __init__(self, call: Call, owner: trio.MemorySendChannel[Any], target: str) -> None:
        self._call = call
        self._owner = owner
        self._target = target
        self._consumed = 0
        self._ended = False
        self._finished = False

    async def _post(self, frame: bytes) -> None:
        try:
            await self._owner.send(Frame(self._call, frame))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            path = self._call.method.path
            raise Unavailable(f"{path}: channel closed", hop=self._target) from None

    async def send(self, message: betterproto2.Message) -> None:
        """Send one request; blocks while the server has no credit for it. Cancellable.

        Raises:
            TypeError: the method is not client-streaming.
            Unavailable: the stream is over (or ``end`` was called).
        """
        call, method = self._call, self._call.method
        if not method.cardinality.client_streams:
            raise TypeError(f"{method.path} is not a client-streaming method")
        payload = encode_message(message)
        check_message_size(
            len(payload), call.limit, what="request", path=method.path, hop=self._target
        )
        while call.credit <= 0 and not call.done:
            call.credit_changed = trio.Event()
            await call.credit_changed.wait()
        if call.done or self._ended:
            raise Unavailable(f"{method.path}: stream closed", hop=self._target)
        call.credit -= 1
        await self._post(encode_data(call.call_id, payload))

    async def end(self) -> None:
        """No more requests (client-streaming calls); later ``send`` calls fail."""
        if self._call.method.cardinality.client_streams and not self._ended:
            self._ended = True
            await self._post(encode_end(self._call.call_id))

    def __aiter__(self) -> AsyncIterator[betterproto2.Message]:
        return self

    async def __anext__(self) -> betterproto2.Message:
        """The next reply; blocks until it arrives. Raises the error that ended the stream."""
        if self._finished:
            raise StopAsyncIteration
        item = await self._call.mailbox.get()
        if not isinstance(item, bytes):
            self._finished = True
            if item is END:
                raise StopAsyncIteration
        try:
            reply = parse_reply(self._call, item, self._target)
        except TrionsmError:
            self._finished = True  # a reply we refuse ends the stream (leaving it cancels it)
            raise
        self._consumed += 1
        if self._consumed >= WINDOW // 2 and not self._call.done:
            credit = encode_credit(self._call.call_id, self._consumed)
            self._call.allowance += self._consumed
            self._consumed = 0
            await self._post(credit)
        return reply
