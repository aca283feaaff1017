"""The inproc carrier: servers and clients in one Trio run, joined by direct calls.

Theory of operation. ``serve_inproc`` registers a server under its name in a per-run table (a
``RunVar``, so two ``trio.run`` calls never see each other's servers). A unary call runs the handler
in the caller's task, inside a cancel scope the server can cancel when it stops; a streaming call
runs the handler in a task of the server's nursery and hands replies over a small memory channel,
so backpressure, cancellation from either side and server death behave as on a real socket. Clients
look the server up on every call, so a server restarted on the same URL is found again.

Messages are shared read-only: a handler never mutates what it received. With
``roundtrip_bytes=True`` every request, reply and error is encoded and decoded as on the wire, so
the conformance suite catches what only a real socket would show. Either way the wire's limits
hold (``_limits``): a message over the sender's or the receiver's size limit is
``ResourceExhausted`` (a shared message is measured without being encoded), and metadata follows
gRPC's rules. :class:`InprocFaults` lets tests make the next calls fail or drop every stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import attrs
import betterproto2
import trio

from trionsm.errors import (
    AlreadyExists,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    TrionsmError,
    Unavailable,
    error_for_status,
)

from ._channel import (
    CallOptions,
    ClientStream,
    ReplyQueue,
    StreamEnd,
    as_caller_sees_it,
    deadline_exceeded,
)
from ._codec import encode, parse_strict
from ._context import CallContext, Peer
from ._dispatch import Dispatcher
from ._limits import (
    MAX_MESSAGE_BYTES,
    check_message_size,
    check_metadata,
    encoded_size_over,
)
from ._services import MethodSpec

__all__ = ["InprocChannel", "InprocFaults", "InprocServer", "serve_inproc"]

_SERVERS: trio.lowlevel.RunVar[dict[str, InprocServer]] = trio.lowlevel.RunVar("trionsm_inproc")
_STREAM_BUFFER = 16


def _servers() -> dict[str, InprocServer]:
    try:
        return _SERVERS.get()
    except LookupError:
        table: dict[str, InprocServer] = {}
        _SERVERS.set(table)
        return table


@attrs.define
class InprocFaults:
    """Fault hooks for tests: fail the next calls, drop the streams in flight, count calls."""

    calls: int = 0
    _fail: list[TrionsmError] = attrs.field(factory=list)

    def fail_next(self, count: int, error: TrionsmError) -> None:
        """Make the next ``count`` calls fail with ``error`` before reaching a handler."""
        self._fail.extend([error] * count)

    def _take(self) -> TrionsmError | None:
        self.calls += 1
        return self._fail.pop(0) if self._fail else None


@attrs.frozen
class _End:
    """One end of a message's trip: its size limit and its name in errors."""

    limit: int
    hop: str | None


def _carry(
    message: betterproto2.Message,
    roundtrip: bool,
    *,
    what: str,
    path: str,
    sender: _End,
    receiver: _End,
) -> betterproto2.Message:
    """The message as the receiver would see it (the same object unless ``roundtrip``).

    Raises:
        ResourceExhausted: the message is over the sender's limit (naming the sender) or the
            receiver's (naming the receiver).
        InvalidArgument: with ``roundtrip``, a value betterproto2 cannot encode.
    """
    if not roundtrip:
        size = encoded_size_over(message, min(sender.limit, receiver.limit))
        if size is not None:
            _check_size(size, what, path, sender, receiver)
        return message
    try:
        data = encode(message)
    except ValueError as exc:  # a value that cannot be encoded
        raise InvalidArgument(f"{exc}: it does not survive the wire") from exc
    _check_size(len(data), what, path, sender, receiver)
    return parse_strict(type(message), data)


def _check_size(size: int, what: str, path: str, sender: _End, receiver: _End) -> None:
    check_message_size(size, sender.limit, what=what, path=path, hop=sender.hop)
    check_message_size(size, receiver.limit, what=what, path=path, hop=receiver.hop)


def _wire_error(error: TrionsmError, roundtrip: bool) -> TrionsmError:
    if not roundtrip:
        return error
    return error_for_status(error.status, error.reason, hop=error.hop, service=error.service)


class InprocServer:
    """A running inproc server (what ``serve_inproc`` passes to ``task_status.started``)."""

    def __init__(
        self,
        name: str,
        dispatcher: Dispatcher,
        nursery: trio.Nursery,
        roundtrip: bool,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ):
        self.name = name
        self.url = f"inproc://{name}"
        self.dispatcher = dispatcher
        self.faults = InprocFaults()
        self.roundtrip_bytes = roundtrip
        self.max_message_bytes = max_message_bytes
        self._end = _End(max_message_bytes, dispatcher.hop)
        self._nursery = nursery
        self._calls: set[trio.CancelScope] = set()
        self._streams: set[trio.CancelScope] = set()
        self.stopped = False

    def drop_streams(self) -> int:
        """Break every stream in flight (the client sees Unavailable); returns how many."""
        streams = list(self._streams)
        for scope in streams:
            scope.cancel()
        return len(streams)

    def _stop(self) -> None:
        self.stopped = True
        for scope in list(self._calls):
            scope.cancel()


async def serve_inproc(
    name: str,
    dispatcher: Dispatcher,
    *,
    roundtrip_bytes: bool = False,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    task_status: trio.TaskStatus[InprocServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``dispatcher`` as ``inproc://name`` until cancelled.

    Args:
        name: the name in ``inproc://name``.
        dispatcher: the handlers.
        roundtrip_bytes: encode and decode every message and error as on the wire.
        max_message_bytes: the largest request this server takes and reply it sends.
        task_status: receives the :class:`InprocServer` once it takes calls.

    Raises:
        AlreadyExists: another server of this run already serves that name.
    """
    table = _servers()
    if name in table:
        raise AlreadyExists(f"inproc://{name} is already served", hop=dispatcher.hop)
    async with trio.open_nursery() as nursery:
        server = InprocServer(name, dispatcher, nursery, roundtrip_bytes, max_message_bytes)
        table[name] = server
        try:
            task_status.started(server)
            await trio.sleep_forever()
        finally:
            if table.get(name) is server:
                del table[name]
            server._stop()


class _InprocStream:
    def __init__(
        self,
        replies: ReplyQueue,
        requests: trio.MemorySendChannel[betterproto2.Message] | None,
        method: MethodSpec,
        target: str,
        carry: Any,
    ) -> None:
        self._replies = replies
        self._requests = requests
        self._method = method
        self._target = target
        self._carry = carry

    async def send(self, message: betterproto2.Message) -> None:
        if self._requests is None:
            raise TypeError(f"{self._method.path} is not a client-streaming method")
        try:
            await self._requests.send(self._carry(message))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise Unavailable(f"{self._method.path}: stream closed", hop=self._target) from None

    async def end(self) -> None:
        if self._requests is not None:
            await self._requests.aclose()

    def __aiter__(self) -> AsyncIterator[betterproto2.Message]:
        return self

    async def __anext__(self) -> betterproto2.Message:
        return await self._replies.next()


class InprocChannel:
    """A client channel to ``inproc://name`` (no connection: the server is looked up per call).

    Args:
        name: the server's name.
        roundtrip_bytes: encode and decode every message and error as on the wire.
        client: this client's name, as the server's ``CallContext.peer`` shows it.
        max_message_bytes: the largest request this client sends and reply it takes.
    """

    def __init__(
        self,
        name: str,
        *,
        roundtrip_bytes: bool = False,
        client: str = "client",
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ):
        self.name = name
        self._roundtrip = roundtrip_bytes
        self._peer = Peer(f"inproc://{client}")
        self._closed = False
        self._end = _End(max_message_bytes, self.target)

    @property
    def target(self) -> str:
        return f"inproc://{self.name}"

    def _server(self, method: MethodSpec) -> InprocServer:
        if self._closed:
            raise Unavailable(f"{method.path}: channel closed", hop=self.target)
        server = _servers().get(self.name)
        if server is None or server.stopped:
            raise Unavailable(f"{method.path}: nothing serves {self.target}", hop=self.target)
        fault = server.faults._take()
        if fault is not None:
            raise _wire_error(fault, self._roundtrip)
        return server

    def _context(self, method: MethodSpec, options: CallOptions) -> CallContext:
        check_metadata(options.metadata, path=method.path, hop=self.target)
        return CallContext(method.path, options.deadline, options.metadata, self._peer)

    def _request(
        self, server: InprocServer, method: MethodSpec, request: betterproto2.Message
    ) -> betterproto2.Message:
        """The request as the server sees it (checked against both ends' limits)."""
        return _carry(
            request,
            self._roundtrip or server.roundtrip_bytes,
            what="request",
            path=method.path,
            sender=self._end,
            receiver=server._end,
        )

    def _reply(
        self, server: InprocServer, method: MethodSpec, reply: betterproto2.Message
    ) -> betterproto2.Message:
        """The reply as this client sees it; one the server could not encode is Internal."""
        try:
            return _carry(
                reply,
                self._roundtrip or server.roundtrip_bytes,
                what="reply",
                path=method.path,
                sender=server._end,
                receiver=self._end,
            )
        except InvalidArgument as error:  # on a real wire the server fails to encode it
            raise Internal(
                f"handler for {method.path}: {error.reason}", hop=server.dispatcher.hop
            ) from error

    async def unary(
        self, method: MethodSpec, request: betterproto2.Message, options: CallOptions
    ) -> betterproto2.Message:
        await trio.lowlevel.checkpoint()
        # Only now, after the checkpoint, is the server looked up: a server that stopped while
        # this task was parked there must not run the handler (Unavailable instead). From here
        # to registering the call's scope with the server nothing yields.
        ctx = self._context(method, options)
        server = self._server(method)
        roundtrip = self._roundtrip or server.roundtrip_bytes
        if options.deadline <= trio.current_time():
            raise DeadlineExceeded(
                f"{method.path}: the deadline passed before the call", hop=self.target
            )
        served_method, handler = server.dispatcher.lookup(method.path)
        request = self._request(server, method, request)
        try:
            with trio.CancelScope() as scope:
                server._calls.add(scope)
                try:
                    reply = await server.dispatcher.unary(served_method, handler, request, ctx)
                finally:
                    server._calls.discard(scope)
        except TrionsmError as error:
            error = as_caller_sees_it(error, method, self.target, options.deadline)
            raise _wire_error(error, roundtrip) from None
        if scope.cancelled_caught:
            raise Unavailable(f"{method.path}: the server stopped mid-call", hop=self.target)
        return self._reply(server, method, reply)

    @asynccontextmanager
    async def stream(
        self, method: MethodSpec, request: betterproto2.Message | None, options: CallOptions
    ) -> AsyncIterator[ClientStream]:
        ctx = self._context(method, options)
        server = self._server(method)
        roundtrip = self._roundtrip or server.roundtrip_bytes
        served_method, handler = server.dispatcher.lookup(method.path)
        send_reply, receive_reply = trio.open_memory_channel[Any](_STREAM_BUFFER)
        requests: trio.MemorySendChannel[betterproto2.Message] | None = None
        argument: Any
        if served_method.cardinality.client_streams:
            requests, receive_requests = trio.open_memory_channel[betterproto2.Message](
                _STREAM_BUFFER
            )
            argument = receive_requests
        else:
            if request is None:
                raise TypeError(f"{method.path} needs a request")
            argument = self._request(server, method, request)
        scope = trio.CancelScope()

        async def send(reply: betterproto2.Message) -> None:
            await send_reply.send(self._reply(server, method, reply))

        async def run_handler() -> None:
            async with send_reply:
                end: StreamEnd | None = None
                with scope:
                    server._calls.add(scope)
                    server._streams.add(scope)
                    try:
                        await server.dispatcher.stream(served_method, handler, argument, ctx, send)
                        end = StreamEnd(None)
                    except TrionsmError as error:
                        end = StreamEnd(_wire_error(error, roundtrip))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return  # the client left
                    finally:
                        server._calls.discard(scope)
                        server._streams.discard(scope)
                        if requests is not None:  # the handler reads no more: senders fail
                            receive_requests.close()
                if end is not None:  # else cancelled: the channel closes, the client sees it
                    await _deliver_end(send_reply, end)

        server._nursery.start_soon(run_handler)
        replies = ReplyQueue(
            receive_reply, method, self.target, "the server went away mid-stream", options.deadline
        )
        stream = _InprocStream(
            replies,
            requests,
            method,
            self.target,
            lambda message: self._request(server, method, message),
        )
        # The call's deadline is this scope's: a caller's own timeout inside the block (a
        # fail_after around the iteration) passes through as itself.
        try:
            with trio.move_on_at(options.deadline) as deadline:
                if request is not None and requests is not None:
                    await stream.send(request)
                yield stream
        finally:
            scope.cancel()
            receive_reply.close()
            if requests is not None:
                requests.close()
        if deadline.cancelled_caught:
            raise deadline_exceeded(method, self.target)

    async def aclose(self) -> None:
        self._closed = True
        await trio.lowlevel.checkpoint()


async def _deliver_end(channel: trio.MemorySendChannel[Any], end: StreamEnd) -> None:
    """Queue the final status behind the replies still buffered (the client may have left)."""
    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await channel.send(end)
