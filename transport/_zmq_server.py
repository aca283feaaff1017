"""The ZeroMQ server: a ROUTER socket, its owner actor and one task per call.

Theory of operation. :func:`serve_zmq` binds one ROUTER and runs, in one nursery: the *owner*
(the only task that touches the ROUTER), a watcher that wakes the owner when the ROUTER's
descriptor signals, a ticker for the liveness sweep, the ZAP handler when CurveZMQ is on, and one
task per call. Call tasks never touch the socket: they post finished frames to the owner's bounded
mailbox, and the owner sends them. A call is keyed by (routing id, call id); the routing id names
one client connection (a reconnect gets a new one).

* ``call``: the owner looks the method up (unknown: ``Unimplemented``), starts a call task with
  ``CallContext(deadline = now + dl, metadata, peer)`` and forgets the call when the task posts
  its last frame (``data`` for unary, ``end`` or ``error`` for streams). All server-side
  semantics (deadline, error translation, reply type check) are the :class:`Dispatcher`'s.
* Streams are flow-controlled by credits, so neither side ever blocks its owner: a reply stream
  sends at most ``w`` messages ahead of the client's ``credit`` envelopes, and a client may send
  at most :data:`WINDOW` requests ahead of the server's credits (more is ``ResourceExhausted``).
* ``cancel`` cancels the call task's scope; no frame follows.
* Bad input never stops the server: an envelope that still carries a readable call id is answered
  with ``InvalidArgument`` (undecodable protobuf names the method and the type); one without is
  dropped and counted in :attr:`ZmqServerStats.dropped`. Metadata that gRPC could not carry is
  ``InvalidArgument``, and a request or reply over the message limit ``ResourceExhausted``
  (``_limits``); an envelope larger than ``frame_cap(max_message_bytes)`` (``ZMQ_MAXMSGSIZE``,
  16 MiB and 64 KiB by default) makes libzmq drop that connection, which then fails that
  client's calls; others are not affected.
* Peers: ``ZMQ_ROUTER_MANDATORY`` makes a send to a vanished connection fail, and the ticker sends
  a ``ping`` to every known connection every :data:`PING_INTERVAL` seconds, so the calls of a
  client that died (heartbeats drop its connection within ~2 s) are cancelled even when idle.
* Shutdown (cancellation): every call task is cancelled, each known connection gets a ``bye`` so
  clients fail their calls with ``Unavailable`` at once, the socket closes (linger 0, or 100 ms
  when there are ``bye`` frames to flush), the context terminates and an ipc socket file that we
  created is removed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any, Final

import attrs
import trio
import zmq

from trionsm.errors import (
    InvalidArgument,
    ResourceExhausted,
    TrionsmError,
)

from ._context import CallContext, Peer
from ._dispatch import Dispatcher
from ._limits import MAX_MESSAGE_BYTES, check_metadata
from ._url import Address, Scheme
from ._zmq_curve import ZAP_ENDPOINT, check_curve, serve_zap
from ._zmq_envelope import (
    BYE,
    PING,
    WINDOW,
    Envelope,
    EnvelopeError,
    Kind,
    decode,
    encode_error,
    frame_cap,
)
from ._zmq_server_call import Out, ServerCall, serve_call
from ._zmq_setup import bind, remove_ipc, router_socket
from ._zmq_socket import Readable, TrioSocket, run_owner, watch

__all__ = ["PING_INTERVAL", "ZmqServer", "ZmqServerStats", "serve_zmq"]

log = logging.getLogger("trionsm.transport")
_TICK: Final = object()

PING_INTERVAL: Final = 2.0
MAX_CALLS: Final = 10_000
_MAILBOX = 1024
_BATCH = 256
_GOODBYE_LINGER_MS = 100


@attrs.define
class ZmqServerStats:
    """Counters of one server (read them in tests and diagnostics)."""

    calls: int = 0
    rejected: int = 0
    dropped: int = 0
    peers_lost: int = 0


class ZmqServer:
    """A running ZeroMQ server (what ``serve_zmq`` passes to ``task_status.started``).

    Attributes:
        url: the bound URL (the real port for ``zmq+tcp://host:0``).
        dispatcher: the handler table.
        stats: counters; ``dropped`` counts bad envelopes without a readable call id.
    """

    def __init__(
        self,
        url: str,
        dispatcher: Dispatcher,
        router: TrioSocket,
        nursery: trio.Nursery,
        *,
        address: Address,
        curve: bool,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.url = url
        self.dispatcher = dispatcher
        self._limit = max_message_bytes
        self._max_frame = frame_cap(max_message_bytes)
        self.stats = ZmqServerStats()
        self._address = address
        self._curve = curve
        self._router = router
        self._nursery = nursery
        self._calls: dict[tuple[bytes, int], ServerCall] = {}
        self._peers: dict[bytes, Peer] = {}
        self._to_owner, self._owner_mailbox = trio.open_memory_channel[Any](_MAILBOX)

    @property
    def active_calls(self) -> int:
        """Calls whose task is running (or whose last frame is not sent yet)."""
        return len(self._calls)

    @property
    def peers(self) -> int:
        """Client connections seen and not known to be gone."""
        return len(self._peers)

    # -- the owner ---------------------------------------------------------------------------

    async def _run(self) -> None:
        """The owner's loop: handle mailbox items in batches, then drain the ROUTER."""
        await run_owner(self._owner_mailbox, self._handle, self._drain)

    def _handle(self, item: object, tokens: list[Readable]) -> None:
        if isinstance(item, Out):
            key = (item.call.peer, item.call.call_id)
            if self._calls.get(key) is not item.call:
                return  # cancelled, failed or its peer is gone: nobody waits for this frame
            if item.last:
                del self._calls[key]
            self._send(item.call.peer, item.frame)
        elif isinstance(item, Readable):
            tokens.append(item)
        elif item is _TICK:
            for peer in list(self._peers):
                self._send(peer, PING)

    def _drain(self) -> bool:
        """Receive until the ROUTER is empty; True if it stopped early with more to read."""
        for _ in range(_BATCH):
            if not self._router.ready():  # cheaper than a zmq.Again; rearms the descriptor too
                return False
            self._receive(self._router.socket.recv_multipart(zmq.NOBLOCK, copy=False))
        return True

    def _send(self, peer: bytes, frame: bytes) -> None:
        try:
            self._router.socket.send_multipart([peer, frame], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise
            self._peer_gone(peer)

    def _peer_gone(self, peer: bytes) -> None:
        if self._peers.pop(peer, None) is not None:
            self.stats.peers_lost += 1
        for key in [key for key in self._calls if key[0] == peer]:
            self._calls.pop(key).scope.cancel()

    def _identify(self, frame: zmq.Frame) -> Peer:
        address = _property(frame, "Peer-Address")
        if self._address.scheme is Scheme.ZMQ_IPC:
            where = f"{self._address}#{address}" if address else str(self._address)
        else:
            where = f"zmq+tcp://{address}" if address else str(self._address)
        identity = _property(frame, "User-Id") if self._curve else None
        return Peer(where, identity or None)

    def _reject(self, peer: bytes, call_id: int | None, reason: str) -> None:
        if call_id is None:
            self.stats.dropped += 1
            log.debug("%s: dropped a bad envelope: %s", self.dispatcher.hop, reason)
            return
        self.stats.rejected += 1
        self._fail(peer, call_id, InvalidArgument(reason, hop=self.dispatcher.hop))

    def _fail(self, peer: bytes, call_id: int, error: TrionsmError) -> None:
        """End a call (running or not) with ``error``."""
        call = self._calls.pop((peer, call_id), None)
        if call is not None:
            call.scope.cancel()
        self._send(peer, encode_error(call_id, error))

    def _receive(self, frames: list[zmq.Frame]) -> None:
        peer = frames[0].bytes
        if peer not in self._peers and len(frames) > 1:
            self._peers[peer] = self._identify(frames[1])
        if len(frames) != 2:
            reason = f"expected one frame per message, got {len(frames) - 1}"
            self._reject(peer, _readable_id(frames[1].bytes) if len(frames) > 1 else None, reason)
            return
        try:
            envelope = decode(frames[1].bytes, self._max_frame)
        except EnvelopeError as exc:
            self._reject(peer, exc.call_id, exc.reason)
            return
        kind = envelope.kind
        if kind is Kind.CALL:
            self._start(peer, envelope)
            return
        if kind in (Kind.BYE, Kind.PING):
            self._reject(peer, None, f"a client does not send {kind.value} envelopes")
            return
        call = self._calls.get((peer, envelope.call_id))
        if kind is Kind.CANCEL:
            if call is not None:
                del self._calls[(peer, envelope.call_id)]
                call.scope.cancel()
        elif kind is Kind.CREDIT:
            if call is not None:
                call.credit += envelope.window
                call.credit_changed.set()
        elif kind in (Kind.DATA, Kind.END):
            if call is not None:  # else a late frame of a call that already ended
                self._request(call, envelope)
        else:
            self._reject(peer, envelope.call_id, f"a client does not send {kind.value} envelopes")

    def _request(self, call: ServerCall, envelope: Envelope) -> None:
        if call.requests is None:
            self._reject(call.peer, call.call_id, "the method is not client-streaming")
        elif envelope.kind is Kind.END:
            call.requests.close()
        else:
            assert envelope.payload is not None
            try:
                call.requests.send_nowait(envelope.payload)
            except trio.WouldBlock:
                error = ResourceExhausted(
                    f"the client sent more than {WINDOW} requests ahead of its credit",
                    hop=self.dispatcher.hop,
                )
                self._fail(call.peer, call.call_id, error)
            except trio.ClosedResourceError:
                self._reject(call.peer, call.call_id, "a request after the end of the requests")
            except trio.BrokenResourceError:
                pass  # the handler stopped reading its requests: it is finishing

    def _start(self, peer: bytes, envelope: Envelope) -> None:
        call_id, hop = envelope.call_id, self.dispatcher.hop
        if (peer, call_id) in self._calls:
            self._reject(peer, call_id, f"call id {call_id} is already in use")
            return
        if len(self._calls) >= MAX_CALLS:
            error = ResourceExhausted(f"more than {MAX_CALLS} calls in flight", hop=hop)
            self._send(peer, encode_error(call_id, error))
            return
        try:
            method, handler = self.dispatcher.lookup(envelope.method)
        except TrionsmError as error:
            self._send(peer, encode_error(call_id, error))
            return
        if method.cardinality.server_streams and envelope.window <= 0:
            self._reject(peer, call_id, f"{method.path}: a stream needs a positive window 'w'")
            return
        if not method.cardinality.client_streams and envelope.payload is None:
            self._reject(peer, call_id, f"{method.path}: the call has no request")
            return
        call = ServerCall(peer, call_id, envelope.window)
        receive: trio.MemoryReceiveChannel[bytes] | None = None
        if method.cardinality.client_streams:
            call.requests, receive = trio.open_memory_channel[bytes](WINDOW)
        timeout = envelope.timeout
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        ctx = CallContext(method.path, deadline, envelope.metadata, self._peers.get(peer))
        try:
            check_metadata(ctx.metadata, path=method.path, hop=hop)
        except TrionsmError as error:
            self._send(peer, encode_error(call_id, error))
            return
        self._calls[(peer, call_id)] = call
        self.stats.calls += 1
        self._nursery.start_soon(
            serve_call,
            call,
            method,
            handler,
            envelope.payload,
            receive,
            ctx,
            self.dispatcher,
            self._to_owner,
            self._limit,
        )

    async def _tick(self) -> None:
        while True:
            await trio.sleep(PING_INTERVAL)
            await self._to_owner.send(_TICK)

    def _say_goodbye(self) -> bool:
        """Send ``bye`` to every known connection (best effort); True if any was queued."""
        sent = False
        for peer in self._peers:
            with contextlib.suppress(zmq.ZMQError):
                self._router.socket.send_multipart([peer, BYE], zmq.NOBLOCK)
                sent = True
        return sent


def _readable_id(frame: bytes) -> int | None:
    """The call id in ``frame``, if it has a usable one."""
    try:
        envelope = decode(frame)
    except EnvelopeError as exc:
        return exc.call_id
    return None if envelope.kind in (Kind.BYE, Kind.PING) else envelope.call_id


def _property(frame: zmq.Frame, name: str) -> str | None:
    try:
        value = frame.get(name)
    except zmq.ZMQError:
        return None
    return value if isinstance(value, str) else None


async def serve_zmq(
    address: Address,
    dispatcher: Dispatcher,
    *,
    curve: Any,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    task_status: trio.TaskStatus[ZmqServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``dispatcher`` on a ``zmq+tcp://`` or ``zmq+ipc://`` address until cancelled.

    Blocks until cancelled; ``task_status.started(server)`` once bound. Cancellation cancels every
    call in flight, says ``bye`` to the clients and closes the socket (shielded, ~100 ms at most).

    Args:
        address: where to bind; port 0 binds a free port (``server.url`` has the real one).
        dispatcher: the handler table.
        curve: None, or the server's :class:`CurveKeys` (encryption, and client keys checked by
            the ZAP handler).
        max_message_bytes: the largest request this server takes and reply it sends.

    Raises:
        AlreadyExists: the address is in use (also a live ipc socket at the path).
        FailedPrecondition: cannot bind there (no such directory, a non-socket file...).
        TypeError: ``curve`` is not CurveKeys.
    """
    keys = check_curve(curve, server=True)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
    sockets: list[TrioSocket] = []
    server: ZmqServer | None = None
    created: os.stat_result | None = None
    try:
        zap = None
        if keys is not None:
            zap = TrioSocket(context.socket(zmq.REP), "zap")
            sockets.append(zap)
            zap.socket.setsockopt(zmq.LINGER, 0)
            zap.socket.bind(ZAP_ENDPOINT)
        router = router_socket(context, keys, frame_cap(max_message_bytes))
        sockets.append(router)
        url, created = bind(router.socket, address)
        async with trio.open_nursery() as nursery:
            server = ZmqServer(
                url,
                dispatcher,
                router,
                nursery,
                address=address,
                curve=bool(keys),
                max_message_bytes=max_message_bytes,
            )
            nursery.start_soon(server._run)
            nursery.start_soon(watch, router, server._to_owner)
            nursery.start_soon(server._tick)
            if zap is not None and keys is not None:
                nursery.start_soon(serve_zap, zap, keys)
            task_status.started(server)
    finally:
        with trio.CancelScope(shield=True):
            farewell = server is not None and server._say_goodbye()
            for sock in reversed(sockets):
                sock.close(_GOODBYE_LINGER_MS if farewell and sock.name == "router" else 0)
            await trio.to_thread.run_sync(context.term)
            remove_ipc(address, created)
