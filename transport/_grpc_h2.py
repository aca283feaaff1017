"""grpclib's HTTP/2 ends as the gRPC carrier needs them, and the server's listening socket.

* :func:`listen` binds the socket before grpclib sees it, so that bind failures are typed errors
  (AlreadyExists, PermissionDenied, FailedPrecondition) and the bound port is known; a unix
  socket file left by a dead server is replaced, one a live server listens on is not.
* :class:`TunedServer` routes *every* path to the carrier's servable (grpclib's own answer to an
  unknown path names neither the path nor the server) and uses the raw-bytes codec and the
  keepalive configuration. :class:`TunedChannel` is the client's end.
* Each connection (:class:`_Protocol`) differs from grpclib's in four ways:

  - a server's very first SETTINGS frame raises ``SETTINGS_MAX_CONCURRENT_STREAMS`` from h2's
    100 and carries :data:`PINGS_WELCOME`;
  - its keepalive tells a dead peer from a busy event loop, and a client PINGs only a server
    whose SETTINGS carried :data:`PINGS_WELCOME` (``_grpc_keepalive``);
  - a peer declaring an oversized frame is disconnected at once (h2 would buffer the whole
    frame before checking its length);
  - a server tracks its connections, so that :func:`stop_server` can abort them.

These, ``_grpc_keepalive`` (grpclib's ``Connection`` keepalive hooks) and the clients' frame
readers (``Stream._stream``, ``_wrapper``, ``_end_done``) are the carrier's only uses of grpclib
and h2 internals (``Server._mapping``, the ``_protocol_factory`` methods,
``H2Protocol.connection_made``, h2's frame buffer); grpclib is pinned below 0.5.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import stat
import time
from collections.abc import Iterator, Mapping
from contextlib import suppress
from typing import Any, Protocol

import h2.exceptions
import trio
from grpclib.client import Channel
from grpclib.const import Handler as GrpcHandler
from grpclib.protocol import EventsProcessor, H2Protocol
from grpclib.server import Server
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings

from trionsm.errors import AlreadyExists, FailedPrecondition, PermissionDenied, TrionsmError

from ._grpc_keepalive import KeepaliveConnection
from ._grpc_wire import MAX_CONCURRENT_STREAMS, PINGS_WELCOME, RawCodec, configuration
from ._url import Address, Scheme

__all__ = [
    "Servable",
    "TunedChannel",
    "TunedServer",
    "listen",
    "socket_inode",
    "start_server",
    "stop_server",
]


async def listen(address: Address) -> socket.socket:
    """A listening socket for a ``tcp://`` or ``unix://`` address.

    Raises:
        AlreadyExists: the port is taken, a live server listens on the unix socket, or the
            socket path exists and is not a socket.
        PermissionDenied: the OS refused to bind.
        FailedPrecondition: the host does not resolve, or any other bind failure.
    """
    where: Any
    if address.scheme is Scheme.UNIX:
        assert address.path is not None
        await _remove_stale_socket(address)
        family, kind, proto, where = socket.AF_UNIX, socket.SOCK_STREAM, 0, address.path
    else:
        try:
            infos = await trio.socket.getaddrinfo(
                address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except OSError as exc:
            raise FailedPrecondition(f"cannot resolve {address}: {exc}", hop=str(address)) from exc
        family, kind, proto, _, where = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise _bind_error(exc, address) from exc
    return sock


def _bind_error(exc: OSError, address: Address) -> TrionsmError:
    if exc.errno == errno.EADDRINUSE:
        return AlreadyExists(f"{address} is in use: {exc.strerror}", hop=str(address))
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(f"cannot listen on {address}: {exc.strerror}", hop=str(address))
    return FailedPrecondition(f"cannot listen on {address}: {exc}", hop=str(address))


async def _remove_stale_socket(address: Address) -> None:
    """Unlink a socket file nobody listens on; AlreadyExists if a live server owns it."""
    assert address.path is not None
    try:
        if not stat.S_ISSOCK(os.stat(address.path).st_mode):
            return  # bind() will fail with EADDRINUSE
    except FileNotFoundError:
        return
    try:
        probe = await trio.open_unix_socket(address.path)
    except ConnectionRefusedError:
        with suppress(FileNotFoundError):
            os.unlink(address.path)  # left behind by a server that died
        return
    except OSError:
        return
    await probe.aclose()
    raise AlreadyExists(f"{address} is in use by a live server", hop=str(address))


def socket_inode(address: Address) -> tuple[int, int] | None:
    """``(dev, ino)`` of a unix address's socket file (None for tcp or when there is none)."""
    if address.scheme is not Scheme.UNIX or address.path is None:
        return None
    try:
        st = os.stat(address.path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


async def start_server(
    servable: Servable, sock: socket.socket, ssl_context: ssl.SSLContext | None
) -> TunedServer:
    """asyncio: serve ``servable`` on the listening ``sock`` (the server then owns it)."""
    server = TunedServer(servable)
    await server.start(sock=sock, ssl=ssl_context)
    return server


async def stop_server(server: TunedServer) -> None:
    """asyncio: stop listening, cancel every call, abort every connection, wait for the calls."""
    server.close()
    for protocol in list(server.live):
        protocol.abort("the server stopped")
    await server.wait_closed()


class Servable(Protocol):
    """What grpclib serves: a method table, and a handler for any other path."""

    def __mapping__(self) -> dict[str, GrpcHandler]: ...

    def route(self, path: str) -> GrpcHandler: ...


class TunedServer(Server):
    """grpclib's Server with every path routed to the servable and tuned HTTP/2 connections.

    Attributes:
        live: the open connections.
    """

    def __init__(self, servable: Servable) -> None:
        super().__init__([servable], codec=RawCodec(), config=configuration())
        # grpclib answers a path missing from its table with a bare "Method not found"; route
        # every path to the servable instead, which can name the path and the hop.
        self._mapping = _Routes(self._mapping, servable.route)  # type: ignore[assignment]
        self.live: set[_Protocol] = set()

    def _protocol_factory(self) -> H2Protocol:
        base = super()._protocol_factory()  # registers the connection's handler with the server
        return _Protocol(base.handler, base.config, base.h2_config, live=self.live)


class _Routes(Mapping[str, GrpcHandler]):
    """grpclib's method table: the known paths, and the glue's route for any other path."""

    def __init__(self, known: Mapping[str, GrpcHandler], route: Any) -> None:
        self._known = dict(known)
        self._route = route

    def __getitem__(self, path: str) -> GrpcHandler:
        found = self._known.get(path)
        return found if found is not None else self._route(path)

    def __iter__(self) -> Iterator[str]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)


class TunedChannel(Channel):
    """grpclib's client Channel, with connections set up as :class:`_Protocol` describes."""

    def _protocol_factory(self) -> H2Protocol:
        base = super()._protocol_factory()
        return _Protocol(base.handler, base.config, base.h2_config, client=True)


class _Protocol(H2Protocol):
    """One HTTP/2 connection, either end.

    Differs from grpclib's: the first SETTINGS frame carries our settings (a server's raised
    stream limit and :data:`PINGS_WELCOME`), a client PINGs only servers that welcome it, an
    oversized frame closes the connection, and a server tracks its connections in ``live``.
    """

    def __init__(
        self,
        handler: Any,
        config: Any,
        h2_config: Any,
        *,
        client: bool = False,
        live: set[_Protocol] | None = None,
    ) -> None:
        super().__init__(handler, config, h2_config)
        self._client = client
        self._live = live
        self._transport: Any = None
        self._h2: H2Connection | None = None

    def connection_made(self, transport: Any) -> None:
        # grpclib's H2Protocol.connection_made, except for the settings and the connection
        # class. The settings go in the very first SETTINGS frame: a client may open streams
        # before it has read our SETTINGS, and h2 enforces a changed limit only once acked.
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        h2_conn = H2Connection(config=self.h2_config)
        if not self._client:
            h2_conn.local_settings = Settings(
                client=False,
                initial_values={
                    SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                    SettingCodes.MAX_HEADER_LIST_SIZE: h2_conn.DEFAULT_MAX_HEADER_LIST_SIZE,
                    PINGS_WELCOME: 1,  # type: ignore[dict-item]
                },
            )
        h2_conn.initiate_connection()
        initial = h2_conn.local_settings.initial_window_size
        if self.config.http2_connection_window_size != initial:
            h2_conn.increment_flow_control_window(
                self.config.http2_connection_window_size - initial
            )
        if self.config.http2_stream_window_size != initial:
            h2_conn.update_settings(
                {SettingCodes.INITIAL_WINDOW_SIZE: self.config.http2_stream_window_size}
            )
        self.connection = KeepaliveConnection(
            h2_conn,
            transport,
            config=self.config,
            client=self._client,
            on_close=self._closing if self._client else None,
        )
        self.connection.flush()
        self.connection.initialize()
        self.processor = EventsProcessor(self.handler, self.connection)
        self._transport = transport
        self._h2 = h2_conn
        if self._live is not None:
            self._live.add(self)

    def data_received(self, data: bytes) -> None:
        connection = self.connection
        if isinstance(connection, KeepaliveConnection):
            connection.last_received = time.monotonic()
        super().data_received(data)
        # h2 checks a frame's declared length only once the whole frame has arrived: a peer
        # declaring a 16 MiB frame would make us buffer 16 MiB. A well-behaved peer never has
        # more than one partial frame of at most max_inbound_frame_size bytes in the buffer.
        h2_conn = self._h2
        if h2_conn is not None and not self._transport.is_closing():
            buffered = len(h2_conn.incoming_buffer._data)
            if buffered > h2_conn.max_inbound_frame_size + 9:
                with suppress(h2.exceptions.ProtocolError):
                    h2_conn.close_connection(ErrorCodes.FRAME_SIZE_ERROR)
                    self.connection.flush()
                self.processor.close("the peer sent an oversized frame")

    def _closing(self) -> None:
        # A client's channel reconnects once its handler says the connection is lost; grpclib
        # says so only in connection_lost, a loop iteration after the close, and a call made in
        # between would use the closed connection.
        self.handler.connection_lost = True  # type: ignore[attr-defined]  # client Handler

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._live is not None:
            self._live.discard(self)
        # grpclib's H2Protocol.connection_lost, with the keepalive's reason when it closed
        reason = getattr(self.connection, "close_reason", None)
        self.processor.close(reason=reason or "Connection lost")

    def abort(self, reason: str) -> None:
        """Close now, without flushing: the streams on it fail, their handlers are cancelled."""
        self.processor.close(reason)
        self._transport.abort()
