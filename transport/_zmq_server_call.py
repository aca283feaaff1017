"""One call on the ZeroMQ server: the task that runs its handler and posts its frames.

A call task never touches the ROUTER: it posts :class:`Out` items (encoded envelopes) to the
owner's mailbox, the last one with ``last=True`` so the owner forgets the call as it sends it. The
task runs inside the call's cancel scope, which the owner cancels on ``cancel``, on the loss of
the client's connection, and which the server's nursery cancels on shutdown; a cancelled call
posts nothing. Stream replies wait for the client's credit; requests of a client-streaming call
arrive through a memory channel bounded by the window the server granted.
"""

from __future__ import annotations

from typing import Any

import attrs
import betterproto2
import trio

from trionsm.errors import Internal, InvalidArgument, TrionsmError

from ._codec import encode, parse_strict
from ._context import CallContext
from ._dispatch import Dispatcher
from ._limits import MAX_MESSAGE_BYTES, check_message_size
from ._services import Cardinality, MethodSpec
from ._zmq_envelope import WINDOW, encode_credit, encode_data, encode_end, encode_error

__all__ = ["Out", "ServerCall", "parse_request", "serve_call"]


@attrs.define(eq=False)
class ServerCall:
    """One call's state, shared by the owner and the call task.

    Attributes:
        peer: the routing id of the client's connection.
        credit: reply messages the client will still accept (streams).
        requests: where the owner puts a client-streaming call's request payloads.
    """

    peer: bytes
    call_id: int
    credit: int
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    credit_changed: trio.Event = attrs.field(factory=trio.Event)
    requests: trio.MemorySendChannel[bytes] | None = None


@attrs.frozen(eq=False)
class Out:
    """To the owner: send ``frame`` for ``call``; ``last`` ends the call."""

    call: ServerCall
    frame: bytes
    last: bool


def parse_request(
    method: MethodSpec, payload: bytes, hop: str, limit: int = MAX_MESSAGE_BYTES
) -> betterproto2.Message:
    """The request a payload encodes; InvalidArgument naming the method and the type if not.

    Raises:
        ResourceExhausted: the payload is over ``limit`` bytes.
        InvalidArgument: the payload is not a valid request.
    """
    check_message_size(len(payload), limit, what="request", path=method.path, hop=hop)
    try:
        return parse_strict(method.request, payload)
    except Exception as exc:
        raise InvalidArgument(
            f"{method.path}: request is not a valid {method.request.__name__} "
            f"({type(exc).__name__}: {exc})",
            hop=hop,
        ) from None


def _encode_reply(
    method: MethodSpec, call_id: int, reply: betterproto2.Message, hop: str, limit: int
) -> bytes:
    try:
        payload = encode(reply)
    except ValueError as exc:
        raise Internal(f"{method.path}: {exc}", hop=hop) from None
    check_message_size(len(payload), limit, what="reply", path=method.path, hop=hop)
    return encode_data(call_id, payload)


async def serve_call(
    call: ServerCall,
    method: MethodSpec,
    handler: Any,
    payload: bytes | None,
    requests: trio.MemoryReceiveChannel[bytes] | None,
    ctx: CallContext,
    dispatcher: Dispatcher,
    owner: trio.MemorySendChannel[Any],
    limit: int = MAX_MESSAGE_BYTES,
) -> None:
    """Run one call and post its last frame (``data``, ``end`` or ``error``).

    ``limit`` bounds the request and reply messages (``ResourceExhausted`` above it).

    Blocks while the handler runs and while the client has no credit for a reply. Cancelled by
    the call's scope; then posts nothing.
    """
    hop = dispatcher.hop
    with call.scope:
        try:
            if method.cardinality is Cardinality.UNARY_UNARY:
                assert payload is not None
                request = parse_request(method, payload, hop, limit)
                reply = await dispatcher.unary(method, handler, request, ctx)
                frame = _encode_reply(method, call.call_id, reply, hop, limit)
            else:

                async def send(reply: betterproto2.Message) -> None:
                    frame = _encode_reply(method, call.call_id, reply, hop, limit)
                    while call.credit <= 0:
                        call.credit_changed = trio.Event()
                        await call.credit_changed.wait()
                    call.credit -= 1
                    await owner.send(Out(call, frame, last=False))

                argument: Any
                if requests is not None:
                    argument = _Requests(call, method, requests, hop, owner, limit)
                else:
                    assert payload is not None
                    argument = parse_request(method, payload, hop, limit)
                await dispatcher.stream(method, handler, argument, ctx, send)
                frame = encode_end(call.call_id)
        except TrionsmError as error:
            frame = encode_error(call.call_id, error)
        finally:
            if requests is not None:
                requests.close()
        await owner.send(Out(call, frame, last=True))


class _Requests:
    """A client-streaming call's requests as the handler iterates them; grants credit as it goes."""

    def __init__(
        self,
        call: ServerCall,
        method: MethodSpec,
        receive: trio.MemoryReceiveChannel[bytes],
        hop: str,
        owner: trio.MemorySendChannel[Any],
        limit: int,
    ) -> None:
        self._limit = limit
        self._call = call
        self._method = method
        self._receive = receive
        self._hop = hop
        self._owner = owner
        self._consumed = 0

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> betterproto2.Message:
        try:
            payload = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        self._consumed += 1
        if self._consumed >= WINDOW // 2:
            credit = encode_credit(self._call.call_id, self._consumed)
            self._consumed = 0
            await self._owner.send(Out(self._call, credit, last=False))
        return parse_request(self._method, payload, self._hop, self._limit)
