"""The gRPC carrier's client: a grpclib channel on an asyncio island, called from Trio.

Theory of operation. :func:`open_grpc_channel` opens one trio-asyncio island and one grpclib
``Channel`` in it. The channel connects on the first call and reconnects on the next call after
its connection died; a refused or broken connection is :class:`Unavailable` naming the target.

* Unary: Trio encodes the request, crosses once (``Island.run``) into a coroutine that makes the
  whole grpclib call (headers with ``grpc-timeout`` from the deadline and the metadata, the
  message, the reply, the trailers) and translates any failure there; Trio decodes the reply.
  Cancelling the caller cancels that coroutine, and grpclib resets the HTTP/2 stream, which
  cancels the handler on the server.
* Streaming: the stream's context starts one asyncio task, the pump (``_grpc_client_stream``),
  which reads the replies into a memory channel; a bidi call's ``send`` and ``end`` cross once
  each. Leaving the context cancels the pump and waits for it: grpclib resets the stream, the
  server's handler is cancelled.
* Errors: a gRPC status becomes its :mod:`trionsm.errors` class, rebuilt with the server's hop
  and service when a trionsm server sent them; grpclib's deadline (``asyncio.TimeoutError``) is
  :class:`DeadlineExceeded`; a refused connection, a dead connection (including one whose
  keepalive PING went unanswered) and a reset stream are :class:`Unavailable`.
* Keepalive: the channel PINGs a trionsm server every second while streams are open, and no other
  server (see ``_grpc_h2``), so a dead trionsm server is noticed within about two seconds.
"""

from __future__ import annotations

import dataclasses
import math
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import betterproto2
import h2.exceptions
import trio
from grpclib.client import Channel, Stream
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.metadata import decode_metadata

from trionsm.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    TrionsmError,
    Unauthenticated,
    Unavailable,
    Unknown,
)

from ._aio import Island, open_island
from ._channel import (
    CallOptions,
    ClientStream,
    as_caller_sees_it,
    deadline_exceeded,
)
from ._grpc_client_stream import GrpcClientStream, StreamCall
from ._grpc_h2 import TunedChannel
from ._grpc_wire import CARDINALITY, RawCodec, configuration, decode, encode, error_from_status
from ._limits import MAX_MESSAGE_BYTES, check_message_size, check_metadata
from ._services import MethodSpec
from ._url import Address, Scheme

__all__ = ["GrpcChannel", "open_grpc_channel"]

_REPLY_BUFFER = 16  # replies a stream reads ahead of its consumer
_CLOSE_GRACE = 5.0  # seconds for a stream's pump or the channel to wind down


@asynccontextmanager
async def open_grpc_channel(
    address: Address,
    *,
    ssl_context: ssl.SSLContext | None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> AsyncIterator[GrpcChannel]:
    """A :class:`GrpcChannel` to a ``tcp://`` or ``unix://`` server; closed on exit.

    Args:
        address: the server. Nothing connects until the first call.
        ssl_context: TLS (with a client certificate for mTLS); its ALPN protocols are set to
            ``h2``. Over ``unix://`` the TLS server name is ``localhost``.
        max_message_bytes: the largest request this client sends and reply it takes.

    Leaving the block closes the connection (calls still in flight fail with Unavailable) and
    cancels whatever still runs in the channel's island.
    """
    if ssl_context is not None:
        ssl_context.set_alpn_protocols(["h2"])
    async with open_island() as island:
        grpc = await island.run(_new_channel, address, ssl_context)
        channel = GrpcChannel(address, island, grpc, max_message_bytes)
        try:
            yield channel
        finally:
            with trio.move_on_after(_CLOSE_GRACE, shield=True):
                await channel.aclose()


async def _new_channel(address: Address, ssl_context: ssl.SSLContext | None) -> Channel:
    config = configuration()
    if address.scheme is Scheme.UNIX:
        if ssl_context is not None:  # asyncio needs a server name for TLS over a unix socket
            config = dataclasses.replace(config, ssl_target_name_override="localhost")
        return TunedChannel(path=address.path, codec=RawCodec(), ssl=ssl_context, config=config)
    return TunedChannel(
        address.host, address.port, codec=RawCodec(), ssl=ssl_context, config=config
    )


async def _close(grpc: Channel) -> None:
    grpc.close()


class GrpcChannel:
    """A client's gRPC connection to one server (implements ``_channel.Channel``)."""

    def __init__(
        self,
        address: Address,
        island: Island,
        grpc: Channel,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self._limit = max_message_bytes
        self._address = address
        self._target = str(address)
        self._island = island
        self._grpc = grpc
        self._closed = False

    @property
    def target(self) -> str:
        return self._target

    async def unary(
        self, method: MethodSpec, request: betterproto2.Message, options: CallOptions
    ) -> betterproto2.Message:
        """One request, one reply: one crossing into asyncio. Cancellable; raises TrionsmError."""
        self._check_open(method)
        payload = self._encode(method, request)
        timeout, metadata = self._timeout(method, options), self._metadata(method, options)
        try:
            data = await self._island.run(self._unary, method, payload, timeout, metadata)
        except TrionsmError as error:
            raise as_caller_sees_it(error, method, self._target, options.deadline) from None
        return self._decode(method, data)

    async def _unary(
        self, method: MethodSpec, payload: bytes, seconds: float | None, metadata: dict[str, str]
    ) -> bytes:
        grpc_stream = self._request(method, seconds, metadata)
        try:
            async with grpc_stream:
                await grpc_stream.send_message(payload, end=True)
                reply = await self._receive(method, grpc_stream)
        except Exception as exc:
            raise self._error(exc, method, grpc_stream) from exc
        if reply is None:
            raise Internal(f"{method.path}: {self._target} sent no reply", hop=self._target)
        return reply

    async def _receive(self, method: MethodSpec, grpc_stream: Stream[Any, Any]) -> bytes | None:
        """asyncio: the next reply message (None once the server ended its replies).

        Reads the length-prefixed frame itself (grpclib's ``recv_message`` would buffer a
        message of any declared size): a reply declared over the limit is ResourceExhausted
        before it is read, and leaving the grpclib stream then resets it, so at most HTTP/2's
        flow-control window of it is ever buffered.
        """
        if not grpc_stream._recv_initial_metadata_done:
            await grpc_stream.recv_initial_metadata()
        h2_stream = grpc_stream._stream
        try:
            with grpc_stream._wrapper:  # grpclib's deadline and connection-loss handling
                header = await h2_stream.recv_data(5)
                if not header:
                    return None
                size = int.from_bytes(header[1:5], "big")
                if header[0]:
                    raise Internal(
                        f"{method.path}: {self._target} sent a compressed reply; we asked for none",
                        hop=self._target,
                    )
                check_message_size(
                    size, self._limit, what="reply", path=method.path, hop=self._target
                )
                data: bytes = await h2_stream.recv_data(size)
        except AssertionError:  # grpclib's Buffer: the stream ended inside the frame
            raise Internal(
                f"{method.path}: the reply from {self._target} is cut short", hop=self._target
            ) from None
        return data

    @asynccontextmanager
    async def stream(
        self, method: MethodSpec, request: betterproto2.Message | None, options: CallOptions
    ) -> AsyncIterator[ClientStream]:
        """Open a streaming call; leaving the block cancels it on the server.

        The replies are read ahead (a few messages) by an asyncio task; iterating waits for the
        next one. Past ``options.deadline`` the block raises DeadlineExceeded.
        """
        self._check_open(method)
        bidi = method.cardinality.client_streams
        if request is None and not bidi:
            raise TypeError(f"{method.path} needs a request")
        payload = None if bidi or request is None else self._encode(method, request)
        timeout, metadata = self._timeout(method, options), self._metadata(method, options)
        replies, received = trio.open_memory_channel[Any](_REPLY_BUFFER)
        call = StreamCall(self, method, self._request(method, timeout, metadata), replies)
        pump = self._island.spawn(call.pump, payload)
        stream = GrpcClientStream(call, received, options.deadline)
        # The call's deadline is this scope's: a caller's own timeout inside the block (a
        # fail_after around the iteration) passes through as itself.
        try:
            with trio.move_on_at(options.deadline) as deadline:
                if bidi and request is not None:
                    await stream.send(request)
                yield stream
        finally:
            pump.cancel()
            with trio.move_on_after(_CLOSE_GRACE, shield=True):
                await pump.wait()
            received.close()

        if deadline.cancelled_caught:
            raise deadline_exceeded(method, self._target)

    async def aclose(self) -> None:
        """Close the connection; calls in flight fail with Unavailable. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._island.run(_close, self._grpc)

    async def _check_stream_room(self, method: MethodSpec) -> None:
        """asyncio: connect, and refuse a streaming call the server's stream limit leaves no
        room for (ResourceExhausted naming the server and its limit).

        A server caps the streams open at once on one connection (SETTINGS_MAX_CONCURRENT_
        STREAMS: 100 for grpcio and h2 by default; ours advertise 2**31 - 1), and grpclib makes a
        call past the cap wait, silently, until another ends. Streams live long (a monitor, a
        watch), so streams past the cap would hang for good, and streams up to the cap would make
        every later unary call hang: streams may take the cap less a tenth (at least one),
        which stays free for unary calls, which end.
        """
        protocol = await self._grpc.__connect__()
        limit = protocol.connection._connection.remote_settings.max_concurrent_streams
        room = limit - max(1, limit // 10)
        open_streams = len(protocol.processor.streams)
        if open_streams >= room:
            raise ResourceExhausted(
                f"{method.path}: {self._target} allows {limit} concurrent streams on one "
                f"connection; {open_streams} are open on this channel and the last "
                f"{limit - room} are kept for unary calls: end a stream, or use another channel",
                hop=self._target,
            )

    def _request(
        self, method: MethodSpec, seconds: float | None, metadata: dict[str, str]
    ) -> Stream[Any, Any]:
        """A grpclib stream for one call (``seconds`` left before the deadline: its timeout)."""
        return self._grpc.request(
            method.path,
            CARDINALITY[method.cardinality],
            bytes,
            bytes,
            timeout=seconds,
            metadata=metadata,
        )

    def _check_open(self, method: MethodSpec) -> None:
        if self._closed:
            raise Unavailable(f"{method.path}: the channel is closed", hop=self._target)

    def _encode(self, method: MethodSpec, message: betterproto2.Message) -> bytes:
        if not isinstance(message, method.request):
            raise InvalidArgument(
                f"{method.path} takes {method.request.__name__}, not {type(message).__name__}"
            )
        try:
            data = encode(message)
        except ValueError as exc:
            raise InvalidArgument(f"{method.path}: {exc}") from exc
        check_message_size(
            len(data), self._limit, what="request", path=method.path, hop=self._target
        )
        return data

    def _decode(self, method: MethodSpec, data: bytes) -> betterproto2.Message:
        try:
            return decode(method.reply, data, what=f"{method.path} reply", hop=self._target)
        except InvalidArgument as exc:  # the server's fault, not the caller's
            raise Internal(exc.reason, hop=self._target) from None

    def _timeout(self, method: MethodSpec, options: CallOptions) -> float | None:
        if math.isinf(options.deadline):
            return None
        remaining = options.deadline - trio.current_time()
        if remaining <= 0:
            raise DeadlineExceeded(
                f"{method.path}: the deadline passed before the call", hop=self._target
            )
        return remaining

    def _metadata(self, method: MethodSpec, options: CallOptions) -> dict[str, str]:
        check_metadata(options.metadata, path=method.path, hop=self._target)
        return dict(options.metadata)

    def _error(
        self, exc: BaseException, method: MethodSpec, grpc_stream: Stream[Any, Any]
    ) -> TrionsmError:
        """The TrionsmError for an exception raised by grpclib during a call."""
        path, target = method.path, self._target
        if isinstance(exc, TrionsmError):
            return exc
        if isinstance(exc, GRPCError):
            status = exc.status.value
            return error_from_status(
                status, exc.message, _trailers(grpc_stream), target=target, path=path
            )
        if isinstance(exc, TimeoutError) and exc.errno is None:  # grpclib's deadline timer
            return deadline_exceeded(method, target)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return Unauthenticated(f"{path}: {target} failed TLS verification: {exc}", hop=target)
        if isinstance(exc, OSError):
            return Unavailable(f"{path}: cannot reach {target}: {exc}", hop=target)
        if isinstance(exc, StreamTerminatedError | h2.exceptions.ProtocolError):
            return Unavailable(f"{path}: the stream to {target} broke: {exc}", hop=target)
        return Unknown(f"{path}: {type(exc).__name__}: {exc}", hop=target)


def _trailers(grpc_stream: Stream[Any, Any]) -> Mapping[str, Any] | None:
    """The call's trailing metadata, also when grpclib raised before parsing it.

    grpclib fills ``trailing_metadata`` only on its normal path; when the server resets the stream
    right after its error trailers it raises from the raw headers, which we decode here.
    """
    if grpc_stream.trailing_metadata is not None:
        return grpc_stream.trailing_metadata
    raw = getattr(grpc_stream, "_stream", None)
    for headers in (getattr(raw, "trailers", None), getattr(raw, "headers", None)):
        if headers is not None and any(key == "grpc-status" for key, _ in headers):
            return decode_metadata(headers)
    return None
