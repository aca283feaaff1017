"""One streaming call of the gRPC client: the asyncio pump and Trio's side of the stream.

Theory of operation. The stream's context (``GrpcChannel.stream``) starts one asyncio task per
call, :meth:`StreamCall.pump`. It opens the grpclib stream, sends the request, reads every reply
and hands it to Trio through a memory channel: without a crossing while the channel has room, with
one (which waits: backpressure) when it is full. The last item is the call's outcome
(``StreamEnd``). :class:`GrpcClientStream` is what the caller holds: iterating reads that channel;
a bidi call's ``send`` and ``end`` cross into asyncio once each.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import betterproto2
import trio
from grpclib.client import Stream

from trionsm.errors import TrionsmError, Unavailable

from ._channel import ReplyQueue, StreamEnd
from ._services import Cardinality, MethodSpec

if TYPE_CHECKING:
    from ._grpc_client import GrpcChannel

__all__ = ["GrpcClientStream", "StreamCall"]


class StreamCall:
    """One streaming call: the asyncio pump and what Trio's side needs to send on it."""

    def __init__(
        self,
        channel: GrpcChannel,
        method: MethodSpec,
        grpc_stream: Stream[Any, Any],
        replies: trio.MemorySendChannel[Any],
    ) -> None:
        self.channel = channel
        self.method = method
        self.grpc_stream = grpc_stream
        self._replies = replies
        self.opened = trio.Event()  # set from asyncio: request headers sent, or the call failed
        self.failure: TrionsmError | None = None
        self.finished = False
        self.server_done = False  # the server ended its replies: no request matters any more

    def over(self) -> bool:
        """Whether sending on the call is pointless: the server ended it, or it failed."""
        return self.finished or self.server_done

    async def pump(self, payload: bytes | None) -> None:
        """asyncio: run the call and deliver its replies, then its outcome, to Trio."""
        try:
            try:
                await self.channel._check_stream_room(self.method)
                async with self.grpc_stream:
                    if payload is not None:
                        await self.grpc_stream.send_message(payload, end=True)
                    else:
                        await self.grpc_stream.send_request()
                    self.opened.set()
                    receive = self.channel._receive
                    while (data := await receive(self.method, self.grpc_stream)) is not None:
                        await self._deliver(self.channel._decode(self.method, data))
                    self._server_ended()
                end = StreamEnd(None)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the consumer left
            except Exception as exc:
                end = StreamEnd(self.channel._error(exc, self.method, self.grpc_stream))
            self.failure = end.error
            self.finished = True
            self.opened.set()
            await self._deliver(end)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.finished = True
            self.opened.set()
            self._replies.close()

    def _server_ended(self) -> None:
        """The server ended its replies; read its status even if the caller never ends ours.

        A bidi handler may return before the caller ends its requests. grpclib reads the
        trailers only once the client's side ended; ending it from here would race the caller's
        own ``send``/``end``, so grpclib is told it ended (grpclib's ``Stream._end_done``):
        leaving the stream then resets it with NO_ERROR, as gRPC does for a finished call, which
        stops any request still in flight. The caller's later ``send`` is Unavailable, ``end``
        a no-op, as on every carrier.
        """
        self.server_done = True
        if self.method.cardinality.client_streams:
            self.grpc_stream._end_done = True

    async def _deliver(self, item: Any) -> None:
        try:
            self._replies.send_nowait(item)  # plain Trio call: same thread, no crossing
        except trio.WouldBlock:
            await self.channel._island.trio(self._replies.send, item)


class GrpcClientStream:
    """Trio's side of a streaming call (``_channel.ClientStream``)."""

    def __init__(
        self, call: StreamCall, received: trio.MemoryReceiveChannel[Any], deadline: float
    ) -> None:
        self._call = call
        self._method = call.method
        self._target = call.channel.target
        self._replies = ReplyQueue(
            received,
            self._method,
            self._target,
            f"the stream to {self._target} ended without a status",
            deadline,
        )
        self._ended = False

    async def send(self, message: betterproto2.Message) -> None:
        """Send one request of a bidi call (one crossing; waits for HTTP/2 flow control)."""
        if not self._method.cardinality.client_streams:
            raise TypeError(f"{self._method.path} is not a client-streaming method")
        data = self._call.channel._encode(self._method, message)
        if not await self._on_open_stream(self._call.grpc_stream.send_message, data):
            raise self._call.failure or Unavailable(
                f"{self._method.path}: stream closed", hop=self._target
            )

    async def end(self) -> None:
        """End the client's side of a bidi call (the server sees the end of its requests).

        A no-op once the server has ended the call: its outcome comes from iterating.
        """
        if self._method.cardinality is not Cardinality.STREAM_STREAM or self._ended:
            return
        self._ended = True
        await self._on_open_stream(self._call.grpc_stream.end)

    async def _on_open_stream(self, action: Any, *args: Any) -> bool:
        """Run ``action`` on the HTTP/2 stream; False if the call was already over."""
        await self._call.opened.wait()
        if self._call.over():
            return False
        try:
            await self._call.channel._island.run(action, *args)
        except Exception as exc:
            if self._call.over():  # the server ended the call meanwhile
                return False
            raise self._call.channel._error(exc, self._method, self._call.grpc_stream) from exc
        return True

    def __aiter__(self) -> AsyncIterator[betterproto2.Message]:
        return self

    async def __anext__(self) -> betterproto2.Message:
        return await self._replies.next()
