"""The gRPC carrier's server: grpclib's HTTP/2 on an asyncio island, handlers in Trio.

Theory of operation. :func:`serve_grpc` binds the listening socket itself (so a bind error is a
typed error and the real port is known), opens one trio-asyncio island and starts a tuned grpclib
server on that socket (``_grpc_h2``). grpclib runs one asyncio task per HTTP/2 stream; each task
calls the carrier's glue (:class:`_Glue`) with grpclib's raw ``Stream``:

1. The glue asks the :class:`Dispatcher` for the method (every path reaches the glue, unknown ones
   too, so UNIMPLEMENTED names the path and the hop), reads the request frame itself (a message
   over the server's ``max_message_bytes`` is RESOURCE_EXHAUSTED before it is buffered; a
   truncated frame is INVALID_ARGUMENT) and decodes it strictly (malformed protobuf is
   INVALID_ARGUMENT naming the method and the message type).
2. It crosses into Trio once (``Island.trio``) to run ``Dispatcher.unary`` or ``Dispatcher.stream``
   with a :class:`CallContext` built from the stream: deadline from ``grpc-timeout``, metadata,
   peer address and the SPIFFE ID of the TLS client certificate.
3. A unary reply is sent from asyncio; a streaming handler's replies cross back one by one
   (``Island.run(stream.send_message)``), which gives HTTP/2 flow control as backpressure. A
   bidirectional call gets a Trio reader task that crosses once per request message.
4. A :class:`TrionsmError` becomes the stream's status: its code, ``grpc-message`` = its reason,
   hop and service in trailing metadata.

Cancellation starts on the asyncio side: grpclib cancels a stream's task when the client resets
the stream, when its deadline passes and when the connection dies (a keepalive PING went
unanswered, see ``_grpc_wire.configuration``). Cancelling that task cancels the Trio handler
(and any reply it is sending) and waits for it to finish. Stopping the server closes the
listening socket, cancels every handler, aborts every connection (clients see UNAVAILABLE) and
removes the unix socket file it created.
"""

from __future__ import annotations

import functools
import math
import os
import ssl
from contextlib import suppress
from typing import Any

import attrs
import betterproto2
import h2.exceptions
import trio
from grpclib.const import Cardinality as GrpcCardinality
from grpclib.const import Handler as GrpcHandler
from grpclib.const import Status
from grpclib.exceptions import ProtocolError, StreamTerminatedError
from grpclib.server import Stream

from trionsm.errors import Internal, InvalidArgument, TrionsmError, Unimplemented

from ._aio import Island, open_island
from ._context import CallContext, Peer
from ._dispatch import Dispatcher
from ._grpc_h2 import listen, socket_inode, start_server, stop_server
from ._grpc_wire import (
    CARDINALITY,
    decode,
    encode,
    error_metadata,
    wire_reason,
)
from ._limits import MAX_MESSAGE_BYTES, check_message_size
from ._services import Cardinality, MethodSpec
from ._url import Address, Scheme

__all__ = ["GrpcServer", "serve_grpc"]

_SHUTDOWN_GRACE = 5.0  # seconds for handlers to unwind when the server stops
_REQUEST_BUFFER = 16  # bidi requests read ahead of the handler
_GONE = (h2.exceptions.ProtocolError, ProtocolError, StreamTerminatedError)


class GrpcServer:
    """A running gRPC server (what :func:`serve_grpc` passes to ``task_status.started``).

    Attributes:
        url: the bound URL (``tcp://host:0`` reports the real port).
        address: the same as an :class:`Address`.
        dispatcher: the handler table it serves.
    """

    def __init__(self, address: Address, dispatcher: Dispatcher, live: set[Any]) -> None:
        self.address = address
        self.url = str(address)
        self.dispatcher = dispatcher
        self._live = live

    @property
    def connections(self) -> int:
        """How many client connections are open right now."""
        return len(self._live)

    def __repr__(self) -> str:
        return f"<GrpcServer {self.url}>"


async def serve_grpc(
    address: Address,
    dispatcher: Dispatcher,
    *,
    ssl_context: ssl.SSLContext | None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    task_status: trio.TaskStatus[GrpcServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``dispatcher`` over gRPC on a ``tcp://`` or ``unix://`` address until cancelled.

    Args:
        address: where to listen; port 0 picks a free port.
        dispatcher: the handlers.
        ssl_context: TLS for every connection (mTLS if it requires client certificates); its
            ALPN protocols are set to ``h2``. The client's SPIFFE ID (URI SAN) becomes
            ``ctx.peer.identity``.
        max_message_bytes: the largest request this server takes and reply it sends.
        task_status: receives the :class:`GrpcServer` once it accepts connections.

    Raises:
        AlreadyExists: the address is in use (a live server on that unix socket, a taken port).
        PermissionDenied: the OS refused to bind.
        FailedPrecondition: any other reason the address cannot be bound.

    Cancelling stops the server: see the module docstring. Shutdown waits at most
    ``_SHUTDOWN_GRACE`` seconds for handlers to unwind.
    """
    if ssl_context is not None:
        ssl_context.set_alpn_protocols(["h2"])
    sock = await listen(address)
    inode = socket_inode(address)
    bound = address.with_port(sock.getsockname()[1]) if address.scheme is Scheme.TCP else address
    try:
        async with open_island() as island:
            glue = _Glue(dispatcher, island, bound, max_message_bytes)
            server = await island.run(start_server, glue, sock, ssl_context)
            try:
                task_status.started(GrpcServer(bound, dispatcher, server.live))
                await trio.sleep_forever()
            finally:
                with trio.move_on_after(_SHUTDOWN_GRACE, shield=True):
                    await island.run(stop_server, server)
    finally:
        sock.close()  # no-op once the asyncio server has closed it
        if inode is not None and socket_inode(address) == inode:
            assert address.path is not None
            os.unlink(address.path)


@attrs.frozen
class _Call:
    """What the glue reads from a grpclib stream for the handler's CallContext."""

    timeout: float | None
    metadata: dict[str, str]
    peer: Peer

    def context(self, method: MethodSpec) -> CallContext:
        """Trio side: the deadline becomes ``trio.current_time()`` based."""
        deadline = math.inf if self.timeout is None else trio.current_time() + self.timeout
        return CallContext(method.path, deadline, self.metadata, self.peer)


class _Glue:
    """grpclib's servable: one asyncio entry point per call, handlers run in Trio."""

    def __init__(
        self, dispatcher: Dispatcher, island: Island, address: Address, limit: int
    ) -> None:
        self._limit = limit
        self._dispatcher = dispatcher
        self._island = island
        self._address = address
        self._hop = dispatcher.hop
        self._routes = {path: self._handler(path) for path in dispatcher.paths}

    def __mapping__(self) -> dict[str, GrpcHandler]:
        return dict(self._routes)

    def route(self, path: str) -> GrpcHandler:
        return self._routes.get(path) or self._handler(path)

    def _handler(self, path: str) -> GrpcHandler:
        try:
            cardinality = CARDINALITY[self._dispatcher.lookup(path)[0].cardinality]
        except Unimplemented:
            cardinality = GrpcCardinality.UNARY_UNARY  # only its error status is ever sent
        return GrpcHandler(functools.partial(self._serve, path), cardinality, bytes, bytes)

    async def _serve(self, path: str, stream: Stream[Any, Any]) -> None:
        """asyncio: one call, from request to status. Cancelled by grpclib (see module doc)."""
        try:
            method, handler = self._dispatcher.lookup(path)
            call = self._call(stream)
            request = None
            if not method.cardinality.client_streams:
                request = await self._receive(stream, method, required=True)
            if method.cardinality is Cardinality.UNARY_UNARY:
                reply = await self._island.trio(self._unary, method, handler, request, call)
                with suppress(*_GONE):  # the caller went away while the handler ran
                    await stream.send_message(reply)
            else:
                await self._island.trio(self._stream, method, handler, request, call, stream)
        except TrionsmError as error:
            with suppress(*_GONE):  # the caller went away
                await stream.send_trailing_metadata(
                    status=Status(int(error.status)),
                    status_message=wire_reason(error),
                    metadata=error_metadata(error),
                )

    def _call(self, stream: Stream[Any, Any]) -> _Call:
        timeout = None if stream.deadline is None else stream.deadline.time_remaining()
        metadata = {k: v for k, v in (stream.metadata or {}).items() if isinstance(v, str)}
        return _Call(timeout, metadata, Peer(self._peer_address(stream), _spiffe_id(stream)))

    def _peer_address(self, stream: Stream[Any, Any]) -> str:
        where: Any = stream.peer.addr()  # (host, port, ...) for TCP, a str for unix
        if isinstance(where, tuple):
            host, port = where[0], where[1]
            return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
        if isinstance(where, str) and where:
            return f"unix://{where}"
        return str(self._address)  # an unbound unix client: name the socket it came through

    async def _receive(
        self, stream: Stream[Any, Any], method: MethodSpec, *, required: bool
    ) -> betterproto2.Message | None:
        """asyncio: the next request message, None at the end of the client's stream."""
        data = await self._read_frame(stream, method)
        if data is None:
            if required:
                raise InvalidArgument(
                    f"{method.path}: the call ended without a {method.request.__name__}",
                    hop=self._hop,
                )
            return None
        return decode(method.request, data, what=method.path, hop=self._hop)

    async def _read_frame(self, stream: Stream[Any, Any], method: MethodSpec) -> bytes | None:
        # Read the gRPC length-prefixed frame from grpclib's HTTP/2 stream ourselves:
        # grpclib's recv_message would buffer a message of any declared size.
        h2_stream = stream._stream
        what = f"{method.path}: {method.request.__name__}"
        try:
            header = await h2_stream.recv_data(5)
            if not header:
                return None
            size = int.from_bytes(header[1:5], "big")
            if header[0]:
                raise Unimplemented(f"{what} is compressed; trionsm sends none", hop=self._hop)
            check_message_size(size, self._limit, what="request", path=method.path, hop=self._hop)
            data: bytes = await h2_stream.recv_data(size)
        except AssertionError:  # grpclib's Buffer: the stream ended before the frame did
            raise InvalidArgument(
                f"{what}: the stream ended inside a message (truncated frame)", hop=self._hop
            ) from None
        return data

    async def _unary(
        self, method: MethodSpec, handler: Any, request: betterproto2.Message, call: _Call
    ) -> bytes:
        """Trio: run the handler, return the encoded reply."""
        reply = await self._dispatcher.unary(method, handler, request, call.context(method))
        return self._encode(method, reply)

    def _encode(self, method: MethodSpec, reply: betterproto2.Message) -> bytes:
        try:
            data = encode(reply)
        except ValueError as exc:
            raise Internal(f"handler for {method.path}: {exc}", hop=self._hop) from exc
        check_message_size(len(data), self._limit, what="reply", path=method.path, hop=self._hop)
        return data

    async def _stream(
        self,
        method: MethodSpec,
        handler: Any,
        request: betterproto2.Message | None,
        call: _Call,
        stream: Stream[Any, Any],
    ) -> None:
        """Trio: run a streaming handler; replies cross to asyncio one at a time."""

        async def send(reply: betterproto2.Message) -> None:
            data = self._encode(method, reply)
            try:
                await self._island.run(stream.send_message, data)
            except _GONE as exc:
                raise trio.BrokenResourceError(f"{method.path}: the caller went away") from exc

        ctx = call.context(method)
        try:
            if request is not None:
                await self._dispatcher.stream(method, handler, request, ctx, send)
            else:
                await self._bidi(method, handler, ctx, stream, send)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the caller went away: nothing to send

    async def _bidi(
        self,
        method: MethodSpec,
        handler: Any,
        ctx: CallContext,
        stream: Stream[Any, Any],
        send: Any,
    ) -> None:
        requests, received = trio.open_memory_channel[Any](_REQUEST_BUFFER)
        error: BaseException | None = None
        with received:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_requests, method, stream, requests)
                try:
                    await self._dispatcher.stream(method, handler, _Requests(received), ctx, send)
                except (TrionsmError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    error = exc  # raised below, outside the nursery, as itself (not in a group)
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error

    async def _read_requests(
        self, method: MethodSpec, stream: Stream[Any, Any], requests: trio.MemorySendChannel[Any]
    ) -> None:
        """Trio: feed a bidi handler, one crossing per request; a bad one ends its iteration."""
        async with requests:
            while True:
                try:
                    message = await self._island.run(self._receive, stream, method, required=False)
                except TrionsmError as error:
                    await requests.send(error)
                    return
                except _GONE:
                    return  # the caller went away; grpclib cancels the call
                if message is None:
                    return
                await requests.send(message)


class _Requests:
    """A bidi handler's request iterator; raises the error that ended the client's stream."""

    def __init__(self, received: trio.MemoryReceiveChannel[Any]) -> None:
        self._received = received

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> betterproto2.Message:
        try:
            item = await self._received.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if isinstance(item, TrionsmError):
            raise item
        return item  # type: ignore[no-any-return]


def _spiffe_id(stream: Stream[Any, Any]) -> str | None:
    """The SPIFFE ID in the TLS client certificate's URI SAN (None without TLS or certificate)."""
    cert = stream.peer.cert()
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "URI" and value.startswith("spiffe://"):
            return value  # type: ignore[no-any-return]
    return None
