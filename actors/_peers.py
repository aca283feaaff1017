"""Clients to the next hops, one per URL, and one multiplexed monitor stream per peer.

Theory of operation. A role (nsmgr, forwarder, client) talks to many connections' next hops but
dials each peer URL once: :meth:`Peers.client` opens a transport client on first use, in the
role's nursery, and keeps it until the role stops (grpclib and ZeroMQ reconnect by themselves
after a peer restarts; a call to a dead peer fails with Unavailable at once).

Monitoring: instead of one MonitorConnections stream per connection (h2 caps streams per
connection, and NSM users hit it), each peer gets ONE stream, scoped to connections whose path
holds this role's segment name, and events are dispatched by the peer's connection id to the
listener that registered it (:meth:`Peers.watch`, a registration, not a task: a node holds one
per connection). When the stream breaks, every listener of that
peer is told (``lost``); the stream is re-opened with backoff while anyone listens, and the new
INITIAL_STATE_TRANSFER tells each listener the peer's current state (absent: ``deleted``).
:meth:`Peers.current` asks a peer for one connection's state now, with a short call of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio

from trionsm.api.connection import (
    Connection,
    ConnectionEventType,
    MonitorScopeSelector,
    PathSegment,
)
from trionsm.errors import TrionsmError, Unavailable
from trionsm.transport import Client, open_client

__all__ = ["PeerEvent", "PeerWatch", "Peers"]

RETRY_MIN, RETRY_MAX = 0.1, 2.0


@attrs.frozen
class PeerEvent:
    """What a listener hears about its connection at a peer.

    Attributes:
        connection: the peer's latest view (None when the peer lost or deleted it).
        lost: the monitor stream to the peer broke (the peer died or is unreachable).
        deleted: the peer closed the connection (or no longer has it).
        initial: the event comes from a (re)opened stream's INITIAL_STATE_TRANSFER, so it is the
            peer's current state; other events are changes, in the order the peer made them.
    """

    connection: Connection | None
    lost: bool = False
    deleted: bool = False
    reason: str = ""
    initial: bool = False


Listener = Callable[[PeerEvent], None]


class _PeerMonitor:
    def __init__(self) -> None:
        self.listeners: dict[str, Listener] = {}
        self.wake = trio.Event()
        self.running = False
        self.stopping = False  # its last listener left: the stream is being closed
        self.scope: trio.CancelScope | None = None


class PeerWatch:
    """One listener's registration at a peer's monitor stream (:meth:`Peers.watch`)."""

    __slots__ = ("_connection_id", "_listener", "_monitor", "closed")

    def __init__(self, monitor: _PeerMonitor, connection_id: str, listener: Listener) -> None:
        self._monitor = monitor
        self._connection_id = connection_id
        self._listener = listener
        self.closed = False

    def close(self) -> None:
        """Stop listening (idempotent); the peer's stream closes with its last listener."""
        if self.closed:
            return
        self.closed = True
        monitor = self._monitor
        if monitor.listeners.get(self._connection_id) is self._listener:
            del monitor.listeners[self._connection_id]
        if not monitor.listeners:  # nobody left to tell: close the peer's stream
            monitor.stopping = True
            if monitor.scope is not None:
                monitor.scope.cancel()


class Peers:
    """Clients and monitor streams to the next hops of one role.

    Args:
        nursery: where the clients and monitor streams live (the role's).
        name: the role's path segment name (scopes the monitor streams).
        client_options: passed to every ``open_client`` (``roundtrip_bytes``, ``ssl_context``...).
    """

    def __init__(self, nursery: trio.Nursery, name: str, **client_options: Any) -> None:
        self._nursery = nursery
        self._name = name
        self._options = client_options
        self._clients: dict[str, Client] = {}
        self._opening: dict[str, trio.Event] = {}
        self._monitors: dict[str, _PeerMonitor] = {}

    async def client(self, url: str) -> Client:
        """The client for ``url``, opened on first use (InvalidArgument for a bad URL)."""
        client = self._clients.get(url)
        if client is not None:
            return client
        opening = self._opening.get(url)
        if opening is not None:
            await opening.wait()
            return await self.client(url)
        self._opening[url] = opening = trio.Event()
        try:
            opened: Client = await self._nursery.start(self._hold, url)
            self._clients[url] = opened
            return opened
        finally:
            del self._opening[url]
            opening.set()

    async def _hold(self, url: str, *, task_status: trio.TaskStatus[Client]) -> None:
        try:
            async with open_client(url, **self._options) as client:
                task_status.started(client)
                await trio.sleep_forever()
        finally:
            self._clients.pop(url, None)

    # -- monitoring ------------------------------------------------------------------------------

    async def current(self, url: str, connection_id: str, *, bound: float) -> Connection | None:
        """The peer's view of ``connection_id`` right now (None: it has no such connection).

        One short MonitorConnections call scoped to that id, read up to its initial state: an
        answer newer than any event already on the way (a multiplexed stream may still carry
        events from before a Request that just succeeded).

        Raises:
            TrionsmError: the peer did not answer within ``bound`` seconds (or at all).
        """
        selector = MonitorScopeSelector(path_segments=[PathSegment(id=connection_id)])
        client = await self.client(url)
        stream = client.monitor_connection.monitor_connections(selector, timeout=bound)
        async with stream as events:
            async for event in events:
                return event.connections.get(connection_id)
        raise Unavailable("the peer ended its monitor stream before its state", hop=self._name)

    def watch(self, url: str, connection_id: str, listener: Listener) -> PeerWatch:
        """Call ``listener`` with every event about ``connection_id`` at ``url`` until the
        returned watch is closed (a later watch of the same id at that peer replaces it)."""
        monitor = self._monitors.get(url)
        if monitor is None or monitor.stopping:
            monitor = self._monitors[url] = _PeerMonitor()
        monitor.listeners[connection_id] = listener
        if not monitor.running:
            monitor.running = True
            self._nursery.start_soon(self._monitor, url, monitor)
        return PeerWatch(monitor, connection_id, listener)

    async def _monitor(self, url: str, monitor: _PeerMonitor) -> None:
        selector = MonitorScopeSelector(path_segments=[PathSegment(name=self._name)])
        try:
            with trio.CancelScope() as monitor.scope:
                await self._follow_monitor(url, monitor, selector)
        finally:
            monitor.running = False
            if self._monitors.get(url) is monitor and not monitor.listeners:
                del self._monitors[url]

    async def _follow_monitor(
        self, url: str, monitor: _PeerMonitor, selector: MonitorScopeSelector
    ) -> None:
        delay = RETRY_MIN
        while monitor.listeners and not monitor.stopping:
            try:
                client = await self.client(url)
                async with client.monitor_connection.monitor_connections(selector) as stream:
                    async for event in stream:
                        delay = RETRY_MIN
                        self._dispatch(monitor, event.type, event.connections)
                reason = "the peer ended its monitor stream"
            except TrionsmError as exc:
                reason = str(exc)
            for listener in list(monitor.listeners.values()):
                listener(PeerEvent(None, lost=True, reason=reason))
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _dispatch(
        self, monitor: _PeerMonitor, kind: ConnectionEventType, connections: dict[str, Connection]
    ) -> None:
        if kind is ConnectionEventType.INITIAL_STATE_TRANSFER:
            for connection_id, listener in list(monitor.listeners.items()):
                connection = connections.get(connection_id)
                if connection is None:
                    reason = "the peer has no such connection"
                    listener(PeerEvent(None, deleted=True, reason=reason, initial=True))
                else:
                    listener(PeerEvent(connection, initial=True))
            return
        for connection_id, connection in connections.items():
            interested = monitor.listeners.get(connection_id)
            if interested is not None:
                deleted = kind is ConnectionEventType.DELETE
                interested(PeerEvent(connection, deleted=deleted, reason="closed by the peer"))
