"""The ZeroMQ client: one DEALER per channel, one owner task, calls multiplexed by call id.

Theory of operation. :func:`open_zmq_channel` connects one DEALER and runs three tasks: the *owner*
(the only task that touches the DEALER and its monitor socket) and two watchers that wake it when a
socket's descriptor signals. Callers never touch a socket: they post to the owner's bounded mailbox
and wait on their call's own :class:`Mailbox`, which the owner fills without ever blocking.

Connection state comes from the DEALER's socket monitor (the owner drains the DEALER before the
monitor, so a ``bye`` is never read after the next connection's handshake):

* ``HANDSHAKE_SUCCEEDED``: connected; calls waiting for a connection are sent.
* ``DISCONNECTED`` (the server closed, died, or missed ZMTP heartbeats for ~2 s) or a ``bye``
  envelope (the server is shutting down): every call in flight fails with ``Unavailable``.
* Not connected: a new call waits for the outcome of the next connection attempt (libzmq retries
  every 100-200 ms): it is sent once a handshake succeeds, and fails with ``Unavailable`` when the
  attempt fails (``CONNECT_RETRIED``, or a handshake that failed or took over 3 s), or
  ``Unauthenticated`` when the server's ZAP handler refused our CurveZMQ key (libzmq then stops
  redialing; the next call redials). So a call to a server that is down fails within ~200 ms, one
  to a frozen server within ~3 s, and a call right after the server restarted on the same URL goes
  through. :data:`CONNECT_TIMEOUT` bounds the wait in any case.
* ``ZMQ_IMMEDIATE`` keeps libzmq from queueing calls on a connection that is not up, so a call never
  reaches a later server after its caller was told ``Unavailable``.

A call's deadline is sent as the seconds left; the caller also enforces it (``DeadlineExceeded``)
and sends ``cancel`` when it gives up, leaves a stream early or is cancelled, so the server cancels
the handler. Streams are flow-controlled by credits (see ``_zmq_envelope``).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import betterproto2
import trio
import zmq

from trionsm.errors import (
    Internal,
    InvalidArgument,
    ResourceExhausted,
    TrionsmError,
    Unauthenticated,
    Unavailable,
)

from ._channel import CallOptions, ClientStream, deadline_exceeded
from ._limits import MAX_MESSAGE_BYTES, check_message_size, check_metadata
from ._services import MethodSpec
from ._url import Address, Scheme
from ._zmq_call import (
    END,
    FAREWELL,
    Call,
    Cancel,
    Frame,
    Start,
    ZmqClientStream,
    encode_message,
    parse_reply,
)
from ._zmq_curve import check_curve
from ._zmq_envelope import (
    WINDOW,
    EnvelopeError,
    Kind,
    decode,
    encode_call,
    encode_cancel,
    frame_cap,
    to_error,
)
from ._zmq_setup import MONITOR_EVENTS, client_context, dealer_socket, endpoint
from ._zmq_socket import MonitorEvent, Readable, TrioSocket, run_owner, watch

__all__ = ["CONNECT_TIMEOUT", "ZmqChannel", "open_zmq_channel"]

log = logging.getLogger("trionsm.transport")

CONNECT_TIMEOUT: Final = 5.0
"""Seconds a call waits for a connection before it fails with ``Unavailable``."""
_MAILBOX = 1024
_BATCH = 256
_FAREWELL_LINGER_MS = 100


class ZmqChannel:
    """A client channel to one ZeroMQ server URL (see the module docstring)."""

    def __init__(
        self,
        address: Address,
        dealer: TrioSocket,
        monitor: TrioSocket,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self._address = address
        self._limit = max_message_bytes
        self._max_frame = frame_cap(max_message_bytes)
        self._target = str(address)
        self._dealer = dealer
        self._monitor = monitor
        self._ids = itertools.count(1)
        self._to_owner, self._owner_mailbox = trio.open_memory_channel[Any](_MAILBOX)
        self._overflow: collections.deque[object] = collections.deque()
        self._calls: dict[int, Call] = {}  # sent, waiting for replies
        self._waiting: dict[int, Call] = {}  # waiting for a connection
        self._connected = False
        self._problem: TrionsmError = Unavailable(f"not connected to {self._target} yet")
        self._closed = False
        self._orphans: list[int] = []  # calls failed by aclose that the server may still run
        self._stalled = False  # libzmq gave up on the endpoint after a failed handshake
        self._touched = False  # the owner sent on the DEALER since it last drained it
        self.dropped = 0

    @property
    def target(self) -> str:
        return self._target

    @property
    def connected(self) -> bool:
        """Whether the DEALER has a connection whose handshake succeeded."""
        return self._connected

    # -- the caller's side -------------------------------------------------------------------

    def _new_call(
        self, method: MethodSpec, payload: bytes | None, options: CallOptions, window: int
    ) -> Call:
        check_metadata(options.metadata, path=method.path, hop=self._target)
        if payload is not None:
            check_message_size(
                len(payload), self._limit, what="request", path=method.path, hop=self._target
            )
        call_id = next(self._ids)
        timeout = None
        if options.deadline != math.inf:
            timeout = options.deadline - trio.current_time()
        frame = encode_call(
            call_id,
            method.path,
            payload,
            metadata=options.metadata,
            timeout=timeout,
            window=window,
        )
        if len(frame) > self._max_frame:  # the envelope around it: metadata is bounded too
            raise ResourceExhausted(
                f"{method.path}: a call envelope of {len(frame)} bytes is over the "
                f"{self._max_frame}-byte cap",
                hop=self._target,
            )
        return Call(call_id, method, frame, limit=self._limit)

    def _unavailable(self, method: MethodSpec, reason: str) -> Unavailable:
        return Unavailable(f"{method.path}: {reason}", hop=self._target)

    async def _post_start(self, call: Call) -> None:
        """Hand ``call`` to the owner, which sends it once there is a connection."""
        if self._closed:
            raise self._unavailable(call.method, "channel closed")
        try:
            await self._to_owner.send(Start(call))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._unavailable(call.method, "channel closed") from None

    def _no_connection(self, call: Call) -> Unavailable:
        return self._unavailable(call.method, f"no connection within {CONNECT_TIMEOUT:g} s")

    def _cancel_soon(self, call: Call) -> None:
        """Tell the owner the caller left (synchronous: usable while being cancelled)."""
        if call.done:
            return
        call.done = True
        self._post_soon(Cancel(call))

    def _post_soon(self, item: object) -> None:
        """Post to the owner without blocking (a full mailbox spills into ``_overflow``)."""
        try:
            self._to_owner.send_nowait(item)
        except trio.WouldBlock:
            self._overflow.append(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the owner is gone: the channel is closing

    async def unary(
        self, method: MethodSpec, request: betterproto2.Message, options: CallOptions
    ) -> betterproto2.Message:
        """One call. Blocks until the reply, the deadline or a lost connection; cancellable."""
        call = self._new_call(method, encode_message(request), options, window=0)
        # Until the owner sends the call the scope also bounds the wait for a connection; the
        # owner then moves the deadline to the call's own (one scope, no extra wake-up).
        connect_by = trio.current_time() + CONNECT_TIMEOUT
        with trio.CancelScope(deadline=min(options.deadline, connect_by)) as scope:
            call.scope, call.deadline = scope, options.deadline
            try:
                await self._post_start(call)
                item = await call.mailbox.get()
            finally:
                self._cancel_soon(call)
        if scope.cancelled_caught:
            if not call.dispatched.is_set() and trio.current_time() < options.deadline:
                raise self._no_connection(call)
            raise deadline_exceeded(method, self._target)
        return parse_reply(call, item, self._target)

    @asynccontextmanager
    async def stream(
        self, method: MethodSpec, request: betterproto2.Message | None, options: CallOptions
    ) -> AsyncIterator[ClientStream]:
        """A streaming call; leaving the context cancels it on the server."""
        payload = None
        if not method.cardinality.client_streams:
            if request is None:
                raise TypeError(f"{method.path} needs a request")
            payload = encode_message(request)
        call = self._new_call(method, payload, options, window=WINDOW)
        call.deadline = options.deadline
        stream = ZmqClientStream(call, self._to_owner, self._target)
        with trio.move_on_at(options.deadline) as scope:
            try:
                await self._post_start(call)
                with trio.move_on_after(CONNECT_TIMEOUT) as waiting:
                    await call.dispatched.wait()
                if waiting.cancelled_caught:
                    raise self._no_connection(call)
                if method.cardinality.client_streams and request is not None:
                    await stream.send(request)
                yield stream
            finally:
                self._cancel_soon(call)
        if scope.cancelled_caught:
            raise deadline_exceeded(method, self._target)

    async def aclose(self) -> None:
        """Fail every call in flight with Unavailable; later calls fail at once. Idempotent.

        The owner then tells the server to cancel those calls (it does not wait for that).
        """
        self._close_now()
        self._post_soon(FAREWELL)
        await trio.lowlevel.checkpoint()

    def _close_now(self) -> None:
        """Fail every call; the ids the server may still run wait in ``_orphans``."""
        self._closed = True
        self._orphans.extend(self._calls)
        for call in [*self._calls.values(), *self._waiting.values()]:
            self._finish(call, self._unavailable(call.method, "channel closed"))

    # -- the owner ---------------------------------------------------------------------------

    async def _run(self) -> None:
        """The owner's loop: handle mailbox items in batches, then drain both sockets."""
        await run_owner(self._owner_mailbox, self._handle_with_overflow, self._drain)

    def _handle_with_overflow(self, item: object, tokens: list[Readable]) -> None:
        self._handle(item, tokens)
        while self._overflow:
            self._handle(self._overflow.popleft(), tokens)

    def _drain(self) -> bool:
        more = self._drain_dealer()
        self._drain_monitor()
        if self._touched:  # a send may have swallowed the DEALER's edge-triggered signal
            more = self._drain_dealer() or more
        return more

    def _handle(self, item: object, tokens: list[Readable]) -> None:
        if isinstance(item, Frame):
            if item.call.call_id in self._calls and not self._send(item.frame):
                self._finish(item.call, self._unavailable(item.call.method, "connection lost"))
        elif isinstance(item, Start):
            call = item.call
            if self._closed:
                self._finish(call, self._unavailable(call.method, "channel closed"))
                return
            if not self._connected:
                self._drain_monitor()  # learn what happened before this call
            if self._stalled and not self._connected:
                self._redial()
            if self._connected:
                self._dispatch(call)
            else:
                self._waiting[call.call_id] = call
        elif isinstance(item, Cancel):
            call = item.call
            self._waiting.pop(call.call_id, None)
            if self._calls.pop(call.call_id, None) is not None:
                self._send(encode_cancel(call.call_id))
        elif isinstance(item, Readable):
            tokens.append(item)
        elif item is FAREWELL:
            self._farewell()

    def _send(self, frame: bytes) -> bool:
        self._touched = True
        try:
            self._dealer.socket.send(frame, zmq.NOBLOCK)
        except zmq.Again:  # ZMQ_IMMEDIATE: no connection is up
            return False
        return True

    def _redial(self) -> None:
        """Make libzmq try the endpoint again (it stops after an authentication failure)."""
        self._stalled = False
        where = endpoint(self._address)
        with contextlib.suppress(zmq.ZMQError):  # nothing to disconnect is fine
            self._dealer.socket.disconnect(where)
        self._dealer.socket.connect(where)
        self._touched = True

    def _dispatch(self, call: Call) -> None:
        if call.done:
            return  # the caller left while it waited
        if self._send(call.frame):
            self._calls[call.call_id] = call
            call.dispatched.set()
            if call.scope is not None:
                call.scope.deadline = call.deadline
        else:
            self._finish(call, self._unavailable(call.method, f"not connected to {self._target}"))

    def _finish(self, call: Call, item: object) -> None:
        """Forget ``call`` and give its caller the last item (``END``, an error or a reply)."""
        self._calls.pop(call.call_id, None)
        self._waiting.pop(call.call_id, None)
        call.done = True
        call.mailbox.put(item)
        call.dispatched.set()
        call.credit_changed.set()

    def _lost(self, reason: str) -> None:
        """The connection is gone: every call sent on it fails with Unavailable."""
        self._connected = False
        self._problem = Unavailable(f"{reason}", hop=self._target)
        for call in list(self._calls.values()):
            self._finish(call, self._unavailable(call.method, reason))

    def _drain_dealer(self) -> bool:
        """Receive until the DEALER is empty; True if it stopped early with more to read."""
        self._touched = False
        for _ in range(_BATCH):
            if not self._dealer.ready():  # cheaper than a zmq.Again; rearms the descriptor too
                return False
            self._receive(self._dealer.socket.recv(zmq.NOBLOCK))
        return True

    def _receive(self, frame: bytes) -> None:
        try:
            envelope = decode(frame, self._max_frame)
        except EnvelopeError as exc:
            self.dropped += 1
            log.warning("%s: dropped a bad envelope from the server: %s", self._target, exc)
            call = self._calls.get(exc.call_id) if exc.call_id is not None else None
            if call is not None:
                reason = f"{call.method.path}: bad reply envelope: {exc.reason}"
                self._finish(call, Internal(reason, hop=self._target))
            return
        kind = envelope.kind
        if kind is Kind.BYE:
            self._lost(f"{self._target} is going away")
            return
        call = self._calls.get(envelope.call_id)
        if call is None:
            return  # a ping, or a late frame of a call that ended
        if kind is Kind.DATA:
            if not call.method.cardinality.server_streams:
                self._finish(call, envelope.payload)
            elif call.allowance > 0:
                call.allowance -= 1
                call.mailbox.put(envelope.payload)
            else:  # the server ignored our credit: do not buffer without bound
                self._calls.pop(call.call_id)
                self._send(encode_cancel(call.call_id))
                reason = f"{call.method.path}: the server sent more than our credit allows"
                self._finish(call, Internal(reason, hop=self._target))
        elif kind is Kind.END:
            self._finish(call, END)
        elif kind is Kind.ERROR:
            self._finish(call, to_error(envelope))
        elif kind is Kind.CREDIT:
            call.credit += envelope.window
            call.credit_changed.set()

    def _drain_monitor(self) -> None:
        while self._monitor.ready():
            self._on_event(MonitorEvent.parse(self._monitor.socket.recv_multipart(zmq.NOBLOCK)))

    def _on_event(self, event: MonitorEvent) -> None:
        target, kind = self._target, event.event
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._connected = True
            waiting = list(self._waiting.values())
            self._waiting.clear()
            for call in waiting:
                self._dispatch(call)
        elif kind == zmq.EVENT_DISCONNECTED:
            if self._connected:
                self._lost(f"lost the connection to {target} (closed, or no heartbeat for 2 s)")
        elif kind == zmq.EVENT_CLOSED:
            self._problem = Unavailable(f"cannot connect to {target}", hop=target)
        elif kind == zmq.EVENT_CONNECT_RETRIED:
            self._attempt_failed()
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            reason = f"the ZMTP handshake with {target} failed (CurveZMQ keys or use differ?)"
            self._problem = Unavailable(reason, hop=target)
            self._attempt_failed()
        elif kind in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
            # libzmq does not reconnect after these: the next call redials (see Start).
            if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                reason = f"{target} refused our CurveZMQ key (ZAP status {event.value})"
            else:
                reason = f"the security handshake with {target} failed: do both use CurveZMQ?"
            self._problem = Unauthenticated(reason, hop=target)
            self._stalled = True
            self._attempt_failed()

    def _attempt_failed(self) -> None:
        """A connection attempt failed: calls waiting for it fail with the reason."""
        problem = self._problem
        for call in list(self._waiting.values()):
            reason = f"{call.method.path}: {problem.reason}"
            self._finish(call, type(problem)(reason, hop=self._target))

    def _farewell(self) -> bool:
        """Ask the server to cancel the calls ``aclose`` failed; True if any cancel was queued."""
        sent = False
        while self._orphans:
            sent = self._send(encode_cancel(self._orphans.pop())) or sent
        return sent


@asynccontextmanager
async def open_zmq_channel(
    address: Address, *, curve: Any, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> AsyncIterator[ZmqChannel]:
    """A :class:`ZmqChannel` to ``address``; connecting is lazy (libzmq retries in background).

    Leaving the context fails calls still in flight with Unavailable, tells the server to cancel
    them (best effort) and closes the sockets; the ``zmq.Context`` is shared by the channels of
    this Trio run and terminated with the last one.

    Args:
        address: a ``zmq+tcp://host:port`` (port not 0) or ``zmq+ipc:///path`` address.
        curve: None, or the client's :class:`CurveKeys` with ``server_public`` set.
        max_message_bytes: the largest request this client sends and reply it takes.

    Raises:
        InvalidArgument: port 0, or an endpoint libzmq refuses.
        TypeError, ValueError: unsuitable ``curve``.
    """
    keys = check_curve(curve, server=False)
    if address.scheme is Scheme.ZMQ_TCP and address.port == 0:
        raise InvalidArgument(f"cannot dial {address}: port 0 is only for serving")
    async with client_context() as context:
        sockets: list[TrioSocket] = []
        channel: ZmqChannel | None = None
        body_error: BaseException | None = None
        unwrap = False
        try:
            dealer = dealer_socket(context, address, keys, frame_cap(max_message_bytes))
            sockets.append(dealer)
            monitor = TrioSocket(dealer.socket.get_monitor_socket(MONITOR_EVENTS), "monitor")
            sockets.append(monitor)
            try:
                dealer.socket.connect(endpoint(address))
            except zmq.ZMQError as exc:
                raise InvalidArgument(f"cannot dial {address}: {exc}") from exc
            channel = ZmqChannel(address, dealer, monitor, max_message_bytes)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(channel._run)
                    nursery.start_soon(watch, dealer, channel._to_owner)
                    nursery.start_soon(watch, monitor, channel._to_owner)
                    try:
                        yield channel
                    except BaseException as exc:
                        body_error = exc
                        raise
                    finally:
                        channel._close_now()
                        nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                if body_error is None or not _only(group, body_error):
                    raise
                unwrap = True
        finally:
            if channel is not None:
                channel._owner_mailbox.close()
            farewell = channel is not None and channel._farewell()
            if len(sockets) == 2:
                sockets[0].socket.disable_monitor()
            for sock in reversed(sockets):
                sock.close(_FAREWELL_LINGER_MS if farewell and sock.name == "dealer" else 0)
    if unwrap:
        assert body_error is not None
        raise body_error


def _only(group: BaseExceptionGroup[Any], error: BaseException) -> bool:
    """Whether ``group`` holds ``error`` and nothing else but Cancelled."""
    matched, rest = group.split(lambda exc: exc is error)
    return matched is not None and (rest is None or rest.split(trio.Cancelled)[1] is None)
