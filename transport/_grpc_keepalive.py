"""The gRPC carrier's HTTP/2 connection state: keepalive that tells a dead peer from a busy one.

Theory of operation. While streams are open, grpclib PINGs the peer every ``KEEPALIVE_INTERVAL``
and, ``KEEPALIVE_TIMEOUT`` after a PING, closes the connection unless the ack came. A dead or
partitioned peer then breaks every stream on the connection within about two seconds. What a
timer cannot see by itself is our own event loop falling behind, and trio-asyncio makes that
worse in two ways:

* a due timer runs *ahead* of the callbacks already queued in the loop, so it fires on time
  even when the loop is seconds behind;
* after each read from a socket, trio-asyncio waits until the loop has run everything queued
  before it reads that socket again (``synchronize``), so a backlog of queued callbacks (a
  thousand streams' worth of work on a CPU shared with other processes) stops *all* reads.

Together: under load the timer fired on time, saw nothing received for a second (the ack and the
peer's data sat unread in the socket) and closed a live connection ("Connection lost" for every
stream on it). So the timer here only starts a decision, which is queued behind the backlog, twice
over (a read woken while the first pass waited gets its turn before the second), and made there:

* something arrived from the peer since the window started: it is alive; wait again;
* bytes from the peer wait unread in the socket (``FIONREAD``), or we were behind by more than
  a quarter of the timeout: the timer fired late, the decision waited behind the backlog, or
  the thread waited that long for a CPU during the window (``/proc/thread-self/schedstat``:
  other processes starve ours, and with it possibly the peer's end in this same process): we
  cannot tell, so wait again;
* the peer's end took our PING (:func:`peer_end_took`): over TCP its host acknowledged our
  bytes, or a unix socket (which cannot be partitioned; a dead peer's end closes it at once):
  the peer process is there but slow to answer (a garbage-collection pass over millions of
  objects, a loaded CPU): wait again;
* else the PING never reached the peer's host: dead or partitioned; close.

Every wait is bounded: after :data:`MAX_SILENT_WINDOWS` windows in a row without hearing
anything, the connection closes whatever the reason (a frozen peer, a starved process), and the
calls on it fail with Unavailable naming how long the peer stayed silent.

The peer's side matters as much as ours: a node holding 10,000 connections pauses for seconds
in a full garbage collection, during which it answers nothing; taken for dead, it would lose
every connection of every client at once.

On an idle CPU the decision runs at once, so a dead or partitioned peer is still noticed within
about ``KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT``. :func:`verdict` is that rule as a pure
function.

A client also PINGs only a server that welcomes it (see :data:`PINGS_WELCOME`), marks its channel
disconnected the moment the connection closes (so the next call dials a new connection rather
than failing on the closed one), and closes a connection whose peer never sent its HTTP/2 preface
within ``HANDSHAKE_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable
from typing import Any, Final

from grpclib.exceptions import StreamTerminatedError
from grpclib.protocol import Connection, Stream
from h2.connection import H2Connection

from ._grpc_wire import HANDSHAKE_TIMEOUT, KEEPALIVE_TIMEOUT, PINGS_WELCOME

__all__ = [
    "MAX_SILENT_WINDOWS",
    "KeepaliveConnection",
    "Verdict",
    "cpu_wait",
    "peer_end_took",
    "unread_bytes",
    "verdict",
]

MAX_SILENT_WINDOWS: Final = 10
"""Keepalive windows in a row a connection waits, hearing nothing, before it closes: because our
own loop was behind, or because the peer's end took our PING but the peer did not answer."""

_LAG: Final = KEEPALIVE_TIMEOUT / 4  # how far behind our loop may be and still judge the peer


class Verdict(enum.Enum):
    """What to do when a keepalive window ends without the PING's ack."""

    WAIT = "wait"  # open another window
    CLOSE = "close"  # the peer is dead or partitioned


def verdict(*, heard: bool, unread: bool, lag: float, took: bool, silent: int) -> Verdict:
    """The keepalive rule (pure).

    Args:
        heard: bytes from the peer were processed since the window started.
        unread: bytes from the peer wait in the socket, not read yet by our loop.
        lag: seconds our loop was behind: the timer's lateness plus the wait behind the backlog.
        took: the peer's end took our bytes (:func:`peer_end_took`).
        silent: windows in a row already extended without hearing anything.
    """
    if heard:
        return Verdict.WAIT
    if silent >= MAX_SILENT_WINDOWS:
        return Verdict.CLOSE  # frozen, or we are starved for good: either way, give up
    if unread or lag > _LAG:
        return Verdict.WAIT  # we are behind, not (necessarily) the peer
    if took:
        return Verdict.WAIT  # the peer's host has our PING: its process is slow, not gone
    return Verdict.CLOSE


def cpu_wait() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux schedstat; 0 if none).

    Grows while other processes starve ours of CPU, and not while we are idle: the measure of
    starvation that a loop's own timers and queue cannot see when the starved work is another
    loop's (the peer's end in this same process, for one).
    """
    try:
        with open("/proc/thread-self/schedstat", "rb") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def unread_bytes(transport: Any) -> int:
    """Bytes waiting in ``transport``'s socket that our loop has not read yet (0 if unknown)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(raw, sys.byteorder, signed=True)


_TCP_INFO_LAST_ACK_RECV: Final = 56  # byte offset of tcpi_last_ack_recv (ms) in struct tcp_info


def peer_end_took(transport: Any, window: float) -> bool:
    """Whether the peer's end of ``transport``'s socket took what we sent within ``window`` s.

    Over TCP: nothing we sent waits for the peer host's acknowledgement (``SIOCOUTQ``), or its
    host acknowledged something within the window (a peer whose receive buffer is full still
    answers window probes). A unix socket has no network between the ends: its peer's end is
    there as long as the socket is open (a dead peer's end closes it). False when unknown.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    if sock.family == socket.AF_UNIX:
        return True
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        if int.from_bytes(raw, sys.byteorder, signed=True) == 0:
            return True
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return False
    (since_ack_ms,) = struct.unpack_from("I", info, _TCP_INFO_LAST_ACK_RECV)
    return bool(since_ack_ms < window * 1000)


def after_backlog(
    loop: Any, callback: Callable[[float], None], passes: int = 2
) -> list[asyncio.Handle]:
    """Call ``callback(seconds waited)`` once ``loop`` has run what it had queued, ``passes`` times.

    Returns a one-item list holding the handle of the step under way (each step replaces it):
    cancelling that handle cancels the rest of the wait.
    """
    queued = loop.time()

    def step(left: int) -> None:
        if left:
            holder[0] = loop.call_soon(step, left - 1)
        else:
            callback(loop.time() - queued)

    holder = [loop.call_soon(step, passes - 1)]
    return holder


class KeepaliveConnection(Connection):
    """grpclib's connection state with the keepalive of the module docstring.

    Attributes:
        last_received: ``time.monotonic()`` when bytes last arrived (set by the protocol).
        close_reason: why the keepalive closed the connection (None: it did not).
    """

    last_received = 0.0
    close_reason: str | None = None

    def __init__(
        self,
        h2_conn: H2Connection,
        transport: Any,
        *,
        config: Any,
        client: bool,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(h2_conn, transport, config=config)
        self._h2 = h2_conn
        self._client = client
        self._on_close = on_close
        self._since = 0.0  # monotonic start of the current keepalive window
        self._due = 0.0  # loop time the current window ends
        self._silent = 0  # windows in a row extended without hearing anything
        self._cpu_wait = 0.0  # cpu_wait() when the window opened
        self._pending: list[Any] | None = None  # [handle] of the timer or the decision under way

    # -- grpclib's hooks ---------------------------------------------------------------------

    def initialize(self) -> None:
        super().initialize()
        # An HTTP/2 peer speaks first thing (its SETTINGS preface). One that accepted the TCP
        # connection and says nothing (a frozen process, another service on the port) would
        # otherwise hold every call on this connection forever.
        loop = asyncio.get_event_loop()
        loop.call_later(HANDSHAKE_TIMEOUT, after_backlog, loop, self._check_handshake)

    def create_stream(self, **kwargs: Any) -> Stream:
        if self.is_closing():  # grpclib would fail with AttributeError on a closed connection
            raise StreamTerminatedError("Connection lost")
        return super().create_stream(**kwargs)

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
        self._cancel_pending()
        super().close()

    def _is_need_send_ping(self) -> bool:
        # gRPC servers in general (grpcio, grpc-go) close a connection PINGed more often than
        # every five minutes while they send nothing (GOAWAY too_many_pings); ours welcome it.
        if self._client and self._h2.remote_settings.get(PINGS_WELCOME) != 1:
            return False
        return bool(super()._is_need_send_ping())

    def _ping(self) -> None:
        super()._ping()  # may send a PING and arm grpclib's own close timer: replaced by ours
        handler = self._close_by_ping_handler
        if handler is not None and self._pending is None:
            handler.cancel()
            self._silent = 0
            self._open_window(self.last_ping_sent or time.monotonic())

    def ping_ack_process(self) -> None:
        self._cancel_pending()
        super().ping_ack_process()

    # -- ours ----------------------------------------------------------------------------------

    def _open_window(self, since: float) -> None:
        loop = asyncio.get_event_loop()
        self._since = since
        self._cpu_wait = cpu_wait()
        self._due = loop.time() + KEEPALIVE_TIMEOUT
        self._hold([loop.call_later(KEEPALIVE_TIMEOUT, self._window_over)])

    def _hold(self, pending: list[Any]) -> None:
        # grpclib cancels ``_close_by_ping_handler`` when the ack arrives (``ping_ack_process``)
        # and arms its own timer only while it is None: it always points at our pending step.
        self._pending = pending
        self._close_by_ping_handler = _Pending(pending)  # type: ignore[assignment]

    def _cancel_pending(self) -> None:
        if self._pending is not None:
            self._pending[0].cancel()
        self._pending = None
        self._close_by_ping_handler = None

    def _window_over(self) -> None:
        loop = asyncio.get_event_loop()
        late = max(0.0, loop.time() - self._due)
        self._hold(after_backlog(loop, lambda waited: self._decide(late + waited)))

    def _decide(self, lag: float) -> None:
        self._pending = None
        self._close_by_ping_handler = None
        if self.is_closing():
            return
        heard = self.last_received > self._since
        unread = unread_bytes(self._transport) > 0
        lag += cpu_wait() - self._cpu_wait  # starved of CPU during the window
        took = peer_end_took(self._transport, time.monotonic() - self._since)
        outcome = verdict(heard=heard, unread=unread, lag=lag, took=took, silent=self._silent)
        if outcome is Verdict.CLOSE:
            silence = time.monotonic() - (self.last_received or self._since)
            self.close_reason = f"the peer answered no keepalive PING for {silence:.1f} s" + (
                "" if took else " and its host acknowledged nothing (dead or partitioned)"
            )
            self.close()
            return
        self._silent = 0 if heard else self._silent + 1
        self._open_window(time.monotonic())

    def _check_handshake(self, waited: float) -> None:
        if self.last_received == 0.0 and not self.is_closing():
            self.close()


class _Pending:
    """What grpclib holds as its close timer: cancelling it cancels our pending step."""

    def __init__(self, pending: list[Any]) -> None:
        self._pending = pending

    def cancel(self) -> None:
        self._pending[0].cancel()
