"""Server-side connection actors: one per connection id, at the nsmgr, forwarder and endpoint.

Theory of operation. A hop (:class:`ServerHop`) serves NetworkService and MonitorConnection. Each
Request first runs NSM's ``updatepath`` and ``updatetoken`` (pure, in ``_path``), which gives this
hop's connection id; the request then goes to that id's :class:`ServerConnection` actor, started
on first use under the hop's connection supervisor (SIMPLE_ONE_FOR_ONE, TEMPORARY children). The
actor's mailbox serialises everything that happens to one connection (NSM's ``begin``): Requests,
Closes, its expiry and what the next hop's monitor stream reports. It holds the last request and
the connection returned for it:

* **Request**: a ``RESELECT_REQUESTED`` request first closes the old connection (downstream
  and what the hop holds) and forgets sticky choices; then the role's :meth:`ServerHop.forward`
  does the hop's work (select the next hop and call it, or, at the endpoint, assign addresses);
  the reply goes back with this hop's id and index, ``UP``, and to this hop's monitor
  subscribers, and :meth:`ServerHop.established` starts the role's per-connection watches. A
  first Request (or a reselect) that fails leaves nothing behind.
* **Expiry**: the actor's deadline (:meth:`Actor.set_deadline`: the cancel-scope deadline of
  its wait for messages) is ``previous segment expiry - request timeout``; each Request moves it;
  when it passes with no message waiting (a refresh already queued goes first), the connection
  is closed downstream, as if the previous hop had sent Close (NSM's ``timeout``), so a client
  that vanished leaves nothing.
* **Next hop lost**: the role watches the next hop's monitor (one stream per peer); a broken
  stream or a downstream DOWN/DELETE turns this connection ``DOWN`` for its own subscribers, so
  the NSC heals; a later ``UP`` downstream restores ``UP``. Events reach the actor through a
  small queue drained after every message, so a flood of them never blocks the peer's stream.
  A DELETE or DOWN may be stale: when a reselect lands on the same next hop again, the DELETE
  of the connection we just closed there can arrive after our new Request succeeded. So before
  an UP connection turns DOWN on such an event, the actor asks the next hop for the
  connection's state now (:meth:`Peers.current`) and ignores the event if it is UP there; a
  broken stream, or a next hop that does not answer, counts at once.
* **Close** (or expiry, or :meth:`ServerConnection.revoke` by the role): best-effort Close
  downstream, release what the hop holds, DELETE to the subscribers, and the actor stops.

An idle connection is its actor's task, mailbox and state, and one registration at the next
hop's monitor: no task waits for its expiry or its next hop (a node holds thousands).

Every hop counts the Requests and Closes its actors carried out (:class:`HopCounts`) and may
carry a fault-injection hook (:attr:`ServerHop.before_request`), as NSM's sandbox does with its
``count`` and ``injecterror`` elements.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import attrs
import trio

from trionsm.api.connection import Connection, MonitorScopeSelector, State
from trionsm.api.google.protobuf import Empty
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.clock import Clock, current_clock
from trionsm.errors import InvalidArgument, TrionsmError
from trionsm.identity import TokenProvider
from trionsm.supervision import (
    Actor,
    ActorRef,
    ActorStopped,
    MailboxFull,
    Restart,
    Supervisor,
    actor_spec,
)
from trionsm.transport import CallContext

from ._count import HopCounts
from ._locks import KeyedLock
from ._monitor import MonitorHub
from ._path import restore_hop, server_deadline, update_path, update_token
from ._peers import PeerEvent, Peers, PeerWatch

__all__ = [
    "CLOSE_TIMEOUT",
    "DEFAULT_REQUEST_TIMEOUT",
    "NextHop",
    "RequestHook",
    "ServerConnection",
    "ServerHop",
]

DEFAULT_REQUEST_TIMEOUT = 15.0
"""Seconds a Request may take when the caller set no deadline (NSM's NSM_REQUEST_TIMEOUT)."""

CLOSE_TIMEOUT = 5.0
"""Seconds a Close downstream may take (best effort: the downstream hop also expires)."""

CONFIRM_TIMEOUT = 2.0
"""Seconds the next hop may take to confirm a DELETE/DOWN (no answer: it is DOWN)."""


@attrs.frozen
class NextHop:
    """Where a connection goes from this hop: the peer URL and the peer's connection id."""

    url: str
    connection_id: str
    name: str = ""


@attrs.frozen
class _Request:
    request: NetworkServiceRequest
    timeout: float


@attrs.frozen
class _Close:
    pass


@attrs.frozen
class _Revoke:
    reason: str


@attrs.frozen
class _Downstream:
    """A nudge: next-hop events are waiting in the actor's queue."""


RequestHook = Callable[[NetworkServiceRequest], Awaitable[None]]
"""A fault-injection hook: awaited with each Request a connection actor takes; raising a
TrionsmError refuses the Request with it, waiting delays it (tests and scenarios)."""

MAX_QUEUED_EVENTS = 64
"""Next-hop events an actor keeps while busy; beyond that the oldest are dropped (the newest
state wins)."""


class ServerConnection(Actor):
    """One connection at one server hop (see the module docstring)."""

    mailbox_size: ClassVar[int] = 16
    expected_errors: ClassVar[tuple[type[Exception], ...]] = (TrionsmError,)
    background_tasks: ClassVar[bool] = False  # no task but its own: no nursery to hold

    def __init__(self, hop: ServerHop, connection_id: str) -> None:
        self.hop = hop
        self.id = connection_id
        self.index = 0
        self.connection: Connection | None = None
        self.next: NextHop | None = None
        self.state: dict[str, Any] = {}  # the role's own per-connection state
        self.call_deadline = math.inf  # the current Request's deadline (for calls downstream)
        self._watch: PeerWatch | None = None
        self._events: collections.deque[tuple[PeerWatch, PeerEvent]] | None = None
        self._nudged = False
        self._counted = hop.counts.resume(connection_id)  # HopCounts flags

    async def on_deadline(self) -> None:
        """The connection expired: close it downstream, as if the previous hop had (NSM's
        ``timeout``)."""
        await self._close()

    async def handle(self, message: Any) -> Any:
        try:
            if isinstance(message, _Request):
                return await self._request(message)
            if isinstance(message, _Close | _Revoke):
                await self._close()
                return Empty()
            if isinstance(message, _Downstream):
                return None
            raise TypeError(f"unexpected message {message!r}")
        finally:
            self._nudged = False
            await self._downstream()

    def revoke(self, reason: str) -> None:
        """Close this connection from this hop (downstream and upstream see it closed)."""
        self.ref.cast(_Revoke(reason))

    async def _request(self, message: _Request) -> Connection:
        request = message.request
        incoming = request.connection
        assert incoming is not None
        assert incoming.path is not None
        self.index = incoming.path.index
        self.call_deadline = trio.current_time() + message.timeout
        if incoming.state is State.RESELECT_REQUESTED and self.connection is not None:
            # NSM's begin: close the old connection and go on as with a new one (until the
            # new reply replaces it, the subscribers keep seeing the old one). The watch on
            # the next hop stays, in case the reselect lands there again.
            self._count_close()
            await self._close_downstream(keep_watch=True)
            self.hop.release(self)
            self.hop.forget(self)
            self.connection = None
        self._counted = self.hop.counts.request(self._counted)
        try:
            if self.hop.before_request is not None:
                await self.hop.before_request(request)
            reply = await self.hop.forward(self, request)
        except TrionsmError:
            if self.connection is None:  # a failed first Request (or reselect): nothing left
                self.hop.release(self)
                self.hop.hub.delete(self.id)
                self.stop()
            raise
        reply = restore_hop(reply, self.index, self.id)
        reply = dataclasses.replace(reply, state=State.UP)
        self.connection = reply
        clock = self.hop.clock
        self.set_deadline(server_deadline(reply.path, self.index, message.timeout, clock=clock))
        self.hop.hub.update(reply)
        self.hop.established(self, request)
        return reply

    def remaining(self) -> float:
        """Seconds left for calls downstream within the current Request (at least a little)."""
        return max(self.call_deadline - trio.current_time(), 0.01)

    def follow(self, next_hop: NextHop | None) -> None:
        """Watch ``next_hop``'s monitor for this connection (replacing any earlier watch)."""
        if next_hop == self.next and self._watch is not None:
            return
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self.next = next_hop
        if next_hop is not None and self.hop.peers is not None:
            self._watch = self.hop.peers.watch(
                next_hop.url, next_hop.connection_id, self._on_peer_event
            )

    def _on_peer_event(self, event: PeerEvent) -> None:
        """Queue a next-hop event (called by the peer's stream while our watch is open)."""
        if self._watch is None:
            return
        if self._events is None:
            self._events = collections.deque(maxlen=MAX_QUEUED_EVENTS)
        self._events.append((self._watch, event))
        if not self._nudged:
            self._nudged = True
            # A full mailbox holds messages whose handling drains the events anyway.
            with contextlib.suppress(MailboxFull):
                self.ref.cast(_Downstream())

    async def _downstream(self) -> None:
        """Apply the next hop's queued events to this connection's state (UP or DOWN).

        Events of a watch we left are dropped. Of a batch, the last verdict counts; a DOWN
        that is not a broken stream is confirmed with the next hop first (module docstring).
        """
        events = self._events
        while events:
            verdict: State | None = None
            confirm = False
            while events:
                watch, event = events.popleft()
                if self.connection is None or watch is not self._watch:
                    continue  # closed, or an event about a next hop we left
                if event.lost:
                    verdict, confirm = State.DOWN, False
                elif event.connection is not None and event.connection.state is not State.DOWN:
                    verdict, confirm = (State.DOWN, True) if event.deleted else (State.UP, False)
                else:
                    verdict, confirm = State.DOWN, True
            if verdict is None or self.connection is None or self.next is None:
                continue
            if confirm and self.connection.state is State.UP and self.hop.peers is not None:
                try:
                    now = await self.hop.peers.current(
                        self.next.url, self.next.connection_id, bound=CONFIRM_TIMEOUT
                    )
                except TrionsmError:
                    now = None
                if now is not None and now.state is not State.DOWN:
                    continue  # a stale DELETE/DOWN: the next hop has it UP
            if self.connection is not None and self.connection.state is not verdict:
                self.connection = dataclasses.replace(self.connection, state=verdict)
                self.hop.hub.update(self.connection)

    def _count_close(self) -> None:
        self._counted = self.hop.counts.close(self._counted)

    async def _close_downstream(self, *, keep_watch: bool = False) -> None:
        # Best effort: the next hop expires the connection anyway.
        with trio.move_on_after(CLOSE_TIMEOUT), contextlib.suppress(TrionsmError):
            await self.hop.close_downstream(self)
        if not keep_watch:
            self.follow(None)

    async def _close(self) -> None:
        if self.connection is not None:
            self._count_close()
            await self._close_downstream()
        self.hop.release(self)
        self.hop.hub.delete(self.id)
        self.connection = None
        self.stop()

    async def terminate(self, reason: BaseException | None) -> None:
        self.follow(None)
        self.hop.counts.ended(self.id, self._counted)
        self.hop.forget_actor(self.id, self.ref)
        if self.connection is not None or self.hop.hub.get(self.id) is not None:
            self.hop.release(self)  # stopped by its supervisor, not closed
            self.hop.hub.delete(self.id)


class ServerHop:
    """What every server role shares: path and token updates, connection actors, the monitor.

    Subclasses define :meth:`forward` (and, when they hold a next hop or resources,
    :meth:`close_downstream`, :meth:`release`, :meth:`forget`).

    Args:
        name: this hop's path segment name (``nsmgr-node-1``, ``forwarder-node-1``, ``nse-1``).
        tokens: mints this hop's tokens.
        clock: the one clock (default: the run's).
    """

    def __init__(self, name: str, tokens: TokenProvider, *, clock: Clock | None = None) -> None:
        self.name = name
        self.tokens = tokens
        self.hub = MonitorHub(name)
        self.peers: Peers | None = None  # set by roles that have next hops
        self.counts = HopCounts()
        self.before_request: RequestHook | None = None
        self._clock = clock
        self._actors: dict[str, ActorRef] = {}
        self._locks = KeyedLock()
        self._supervisor: Supervisor | None = None

    @property
    def clock(self) -> Clock:
        if self._clock is None:
            self._clock = current_clock()
        return self._clock

    def connection_spec(self) -> Any:
        """The SIMPLE_ONE_FOR_ONE template of this hop's connection actors."""
        return actor_spec("connection", ServerConnection, self, restart=Restart.TEMPORARY)

    def attach(self, supervisor: Supervisor | None) -> None:
        self._supervisor = supervisor

    def forget_actor(self, connection_id: str, ref: ActorRef) -> None:
        if self._actors.get(connection_id) is ref:
            del self._actors[connection_id]

    @property
    def connection_count(self) -> int:
        return len(self._actors)

    # -- the role's part -------------------------------------------------------------------------

    async def forward(self, actor: ServerConnection, request: NetworkServiceRequest) -> Connection:
        """Do this hop's work for ``request`` (its connection is this hop's view)."""
        raise NotImplementedError

    async def close_downstream(self, actor: ServerConnection) -> None:
        """Close the connection at the next hop, if any."""

    def release(self, actor: ServerConnection) -> None:
        """Give back what this hop holds for the connection (addresses, interfaces...)."""

    def forget(self, actor: ServerConnection) -> None:
        """A reselect: drop sticky choices (the forwarder, the endpoint) for this connection."""

    def established(self, actor: ServerConnection, request: NetworkServiceRequest) -> None:
        """``request`` succeeded (``actor.connection`` is the reply): start per-connection
        watches."""

    # -- NetworkService --------------------------------------------------------------------------

    def _incoming(self, connection: Connection | None, what: str) -> Connection:
        if connection is None:
            raise InvalidArgument(f"{what}: no connection", hop=self.name)
        return update_path(connection, self.name)

    async def request(self, request: NetworkServiceRequest, ctx: CallContext) -> Connection:
        connection = self._incoming(request.connection, "request.connection")
        assert connection.path is not None
        connection = update_token(
            connection,
            connection.path.index,
            caller_token=ctx.client_token,
            caller_expires=ctx.client_token_expires,
            provider=self.tokens,
        )
        request = dataclasses.replace(request, connection=connection)
        remaining = ctx.remaining()
        timeout = DEFAULT_REQUEST_TIMEOUT if math.isinf(remaining) else max(remaining, 0.0)
        ref = await self._actor(connection.id)
        try:
            reply: Connection = await ref.call(_Request(request, timeout), timeout=timeout)
        except ActorStopped as exc:  # it closed meanwhile: the caller retries as a new request
            raise InvalidArgument(
                f"connection {connection.id} was closed while this request waited",
                hop=self.name,
                service=connection.network_service,
            ) from exc
        return reply

    async def _actor(self, connection_id: str) -> ActorRef:
        async with self._locks.hold(connection_id):
            ref = self._actors.get(connection_id)
            if ref is not None and ref.alive:
                return ref
            if self._supervisor is None:
                from trionsm.errors import Unavailable

                raise Unavailable("this hop is stopping", hop=self.name)
            handle = await self._supervisor.start_child(connection_id)
            ref = handle.value
            assert isinstance(ref, ActorRef)
            self._actors[connection_id] = ref
            return ref

    async def close(self, connection: Connection, ctx: CallContext) -> Empty:
        ours = self._incoming(connection, "connection")
        ref = self._actors.get(ours.id)
        if ref is None:
            return Empty()  # closing an unknown connection is harmless
        with contextlib.suppress(ActorStopped):
            await ref.call(_Close(), timeout=CLOSE_TIMEOUT * 2)
        return Empty()

    # -- MonitorConnection -----------------------------------------------------------------------

    def monitor_connections(
        self, selector: MonitorScopeSelector, ctx: CallContext
    ) -> AsyncIterator[Any]:
        return self.hub.stream(selector)
