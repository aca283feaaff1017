"""How the ZeroMQ carrier sets up its libzmq sockets: options, binding, dialing, ipc files.

Both sides:

* ZMTP heartbeats (``ZMQ_HEARTBEAT_IVL`` 0.5 s, ``_TIMEOUT`` 1.5 s, ``_TTL`` 2 s): a peer that died
  without closing its socket, or froze, has its connection dropped within ~2 s; a handshake that
  has not finished after 3 s (``ZMQ_HANDSHAKE_IVL``) is dropped too;
* ``ZMQ_MAXMSGSIZE`` = ``frame_cap(max_message_bytes)`` (16 MiB and 64 KiB by default): libzmq
  drops a connection that sends more; smaller messages over the message limit are refused per
  call by the owners;
* ``ZMQ_SNDHWM`` 0: nothing is ever dropped silently; stream credits and the server's call limit
  bound what can queue;
* linger 0: nothing waits on close, except the goodbye frames the owners flush on purpose.

The ROUTER also sets ``ZMQ_ROUTER_MANDATORY`` (a send to a vanished client raises, so the server
learns it is gone). The DEALER sets ``ZMQ_IMMEDIATE`` (no queueing on a connection that is not up),
reconnects every :data:`RECONNECT_IVL_MS` (libzmq adds up to as much again at random) and gives a
TCP connect :data:`CONNECT_TIMEOUT_MS`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket as stdlib_socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import attrs
import trio
import zmq

from trionsm.errors import AlreadyExists, FailedPrecondition, PermissionDenied

from ._url import Address, Scheme
from ._zmq_curve import CurveKeys, configure_client, configure_server
from ._zmq_envelope import MAX_FRAME
from ._zmq_socket import TrioSocket

__all__ = [
    "CONNECT_TIMEOUT_MS",
    "MONITOR_EVENTS",
    "RECONNECT_IVL_MS",
    "bind",
    "client_context",
    "dealer_socket",
    "endpoint",
    "remove_ipc",
    "router_socket",
]

HEARTBEAT_IVL_MS: Final = 500
HEARTBEAT_TIMEOUT_MS: Final = 1500
HEARTBEAT_TTL_MS: Final = 2000
HANDSHAKE_IVL_MS: Final = 3000
RECONNECT_IVL_MS: Final = 100
CONNECT_TIMEOUT_MS: Final = 2000
MONITOR_EVENTS: Final = (
    zmq.EVENT_CLOSED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
"""What the client's socket monitor reports (see ``_zmq_client``)."""


@attrs.define(eq=False)
class _Shared:
    context: zmq.Context[zmq.Socket[bytes]]
    users: int = 0


_CLIENT_CONTEXT: trio.lowlevel.RunVar[_Shared | None] = trio.lowlevel.RunVar(
    "trionsm_zmq_clients", default=None
)


@asynccontextmanager
async def client_context() -> AsyncIterator[zmq.Context[zmq.Socket[bytes]]]:
    """The ``zmq.Context`` all client channels of this Trio run share (one libzmq I/O thread).

    Created by the first channel, terminated when the last one leaves. Only the termination
    blocks, in a worker thread, shielded: it waits at most for the linger of sockets just closed.
    Servers keep a context each: ``inproc://zeromq.zap.01`` is one per context.
    """
    shared = _CLIENT_CONTEXT.get()
    if shared is None:
        shared = _Shared(zmq.Context(io_threads=1))
        _CLIENT_CONTEXT.set(shared)
    shared.users += 1
    try:
        yield shared.context
    finally:
        shared.users -= 1
        if shared.users == 0:
            if _CLIENT_CONTEXT.get() is shared:
                _CLIENT_CONTEXT.set(None)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(shared.context.term)


def _common(socket: zmq.Socket[bytes], max_frame: int) -> None:
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SNDHWM, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, max_frame)
    socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    socket.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TTL_MS)
    socket.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)


def router_socket(
    context: zmq.Context[zmq.Socket[bytes]], keys: CurveKeys | None, max_frame: int = MAX_FRAME
) -> TrioSocket:
    """The server's ROUTER, not bound yet (a CurveZMQ server with ``keys``)."""
    router = context.socket(zmq.ROUTER)
    _common(router, max_frame)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if keys is not None:
        configure_server(router, keys)
    return TrioSocket(router, "router")


def dealer_socket(
    context: zmq.Context[zmq.Socket[bytes]],
    address: Address,
    keys: CurveKeys | None,
    max_frame: int = MAX_FRAME,
) -> TrioSocket:
    """A client's DEALER for ``address``, not connected yet (a CurveZMQ client with ``keys``)."""
    dealer = context.socket(zmq.DEALER)
    _common(dealer, max_frame)
    dealer.setsockopt(zmq.IMMEDIATE, 1)
    dealer.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    dealer.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
    if address.scheme is Scheme.ZMQ_TCP:
        dealer.setsockopt(zmq.IPV6, 1)  # a DNS name may resolve to IPv6; IPv4 still works
    if keys is not None:
        configure_client(dealer, keys)
    return TrioSocket(dealer, "dealer")


def endpoint(address: Address) -> str:
    """The libzmq endpoint of a ``zmq+tcp://`` or ``zmq+ipc://`` address (port 0 binds ``*``)."""
    if address.scheme is Scheme.ZMQ_IPC:
        return f"ipc://{address.path}"
    host = f"[{address.host}]" if ":" in (address.host or "") else address.host
    return f"tcp://{host}:{address.port or '*'}"


def _check_ipc_path(address: Address) -> None:
    """Refuse a path that is not a stale socket (libzmq would silently unlink it)."""
    assert address.path is not None
    try:
        mode = os.stat(address.path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FailedPrecondition(f"cannot serve on {address}: the path exists and is no socket")
    probe = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        probe.connect(address.path)
    except OSError:
        return  # stale: nobody listens, libzmq replaces it
    finally:
        probe.close()
    raise AlreadyExists(f"{address} is already served")


def bind(router: zmq.Socket[bytes], address: Address) -> tuple[str, os.stat_result | None]:
    """Bind ``router``; returns the real URL and, for ipc, the socket file we created.

    Raises:
        AlreadyExists: the port is taken, or a live server owns the ipc path.
        PermissionDenied: the OS refused.
        FailedPrecondition: any other reason (no such directory, a non-socket file in the way).
    """
    if address.scheme is Scheme.ZMQ_IPC:
        _check_ipc_path(address)
    elif ":" in (address.host or ""):
        router.setsockopt(zmq.IPV6, 1)
    try:
        router.bind(endpoint(address))
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EADDRINUSE:
            raise AlreadyExists(f"{address} is already in use") from exc
        if exc.errno == errno.EACCES:
            raise PermissionDenied(f"cannot serve on {address}: {exc}") from exc
        raise FailedPrecondition(f"cannot serve on {address}: {exc}") from exc
    if address.scheme is Scheme.ZMQ_IPC:
        assert address.path is not None
        return str(address), os.stat(address.path)
    port = int(router.getsockopt_string(zmq.LAST_ENDPOINT).rpartition(":")[2])
    return str(address.with_port(port)), None


def remove_ipc(address: Address, created: os.stat_result | None) -> None:
    """Remove the ipc socket file ``bind`` created, unless another server replaced it since."""
    if created is None or address.path is None:
        return
    with contextlib.suppress(OSError):
        now = os.stat(address.path)
        if (now.st_dev, now.st_ino) == (created.st_dev, created.st_ino):
            os.unlink(address.path)
