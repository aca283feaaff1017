"""The client's watch on its connections at the nsmgr: one MonitorConnections stream per client.

Theory of operation. Each client connection must learn when the nsmgr reports it ``DOWN`` or
deleted, or when the stream to the nsmgr breaks. One stream per connection costs the nsmgr an
HTTP/2 stream, its handler and a subscriber for every connection it holds; so connections that
share one transport client (``open_connection(..., client=shared)``) also share one stream,
scoped to their path segment name and filtered here by their own segment id (the first of the
path): :func:`shared_monitor`. A connection with a client of its own keeps a stream of its own,
scoped to its segment id (:func:`own_monitor`), so that the nsmgr indexes it.

The stream has no task of its own: the connections' watch tasks take turns running it. The
first watcher to find no stream running runs it; when its connection ends (a Close, a heal), it
stops, and the next watcher opens it again. A stream that opens again sends a new
INITIAL_STATE_TRANSFER, so a watcher misses no state, only events it no longer needs. Its cost
is that snapshot: the nsmgr encodes every connection of that client name again (about 0.3 ms
each) each time the connection running the stream ends.

What a watcher hears:

* the stream broke (or ended): every watcher's connection is broken at once;
* its connection DELETEd or ``DOWN``, or missing from the INITIAL_STATE_TRANSFER of a stream of
  its own (a shared stream's comes in chunks, so absence from one says nothing): maybe stale
  (a DELETE of the connection a reselect closed arrives after the new Request succeeded; a
  re-opened stream's snapshot may predate a Request that just succeeded), so the watcher first
  asks the nsmgr for its connection's state now, with a short call scoped to its segment id
  (as server hops confirm a next hop's DELETE), and counts it broken unless that says ``UP``.
"""

from __future__ import annotations

import weakref
from typing import NoReturn

import trio

from trionsm.api.connection import (
    Connection,
    ConnectionEventType,
    MonitorScopeSelector,
    PathSegment,
    State,
)
from trionsm.errors import TrionsmError
from trionsm.transport import Client

__all__ = ["CONFIRM_TIMEOUT", "ConnectionMonitor", "MonitorBroken", "own_monitor", "shared_monitor"]

CONFIRM_TIMEOUT = 2.0
"""Seconds the nsmgr may take to confirm a DELETE or DOWN (no answer: broken)."""


class MonitorBroken(Exception):
    """The nsmgr's monitor says this connection broke (``reason`` says how)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Watcher:
    __slots__ = ("broken", "suspect", "wake")

    def __init__(self) -> None:
        self.broken: str | None = None  # the stream broke: no doubt
        self.suspect: str | None = None  # an event to confirm with the nsmgr
        self.wake = trio.Event()

    def tell(self, *, broken: str | None = None, suspect: str | None = None) -> None:
        if broken is not None:
            self.broken = broken
        elif self.suspect is None:
            self.suspect = suspect
        self.wake.set()


class ConnectionMonitor:
    """One MonitorConnections stream to the nsmgr for the connections of one client name.

    Args:
        client: the transport client to the nsmgr.
        name: the client's path segment name.
        key: a segment id to scope the stream to (a connection with a client of its own).
    """

    def __init__(self, client: Client, name: str, key: str | None = None) -> None:
        self._client = client
        self._name = name
        self._selector = MonitorScopeSelector(path_segments=[PathSegment(id=key or "", name=name)])
        self._keyed = key is not None
        self._watchers: dict[str, _Watcher] = {}
        self._runner: _Watcher | None = None

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    async def watch(self, segment_id: str) -> NoReturn:
        """Watch the connection whose first path segment is ``segment_id`` until it breaks.

        Raises:
            MonitorBroken: the connection broke (the stream, or the nsmgr's confirmed word).
        Cancelling it stops the watch (and hands the stream over to another watcher).
        """
        watcher = self._watchers[segment_id] = _Watcher()
        try:
            while True:
                if watcher.broken is not None:
                    raise MonitorBroken(watcher.broken)
                if watcher.suspect is not None:
                    await self._confirm(segment_id, watcher)
                elif self._runner is None:
                    self._runner = watcher
                    try:
                        await self._run()
                    finally:
                        self._runner = None
                else:
                    await watcher.wake.wait()
                    watcher.wake = trio.Event()
        finally:
            if self._watchers.get(segment_id) is watcher:
                del self._watchers[segment_id]
            self._hand_over()
            if not self._watchers and self._runner is None:
                _forget(self)

    def _hand_over(self) -> None:
        """Wake the oldest watcher if no stream runs: it runs it, or (broken) leaves and wakes
        the next (O(1) per leaving watcher, also when thousands leave at once)."""
        if self._runner is None and self._watchers:
            next(iter(self._watchers.values())).wake.set()

    async def _run(self) -> None:
        """Run the stream until it breaks (every watcher is told) or a suspect needs us."""
        runner = self._runner
        assert runner is not None
        try:
            async with self._client.monitor_connection.monitor_connections(
                self._selector
            ) as stream:
                async for event in stream:
                    self._dispatch(event.type, event.connections)
                    if runner.suspect is not None or runner.broken is not None:
                        return  # the runner's own connection needs confirming: hand over
            reason = "the nsmgr ended the monitor stream"
        except TrionsmError as exc:
            reason = f"the monitor stream to the nsmgr broke: {exc}"
        for watcher in self._watchers.values():
            watcher.tell(broken=reason)

    def _dispatch(self, kind: ConnectionEventType, connections: dict[str, Connection]) -> None:
        initial = kind is ConnectionEventType.INITIAL_STATE_TRANSFER
        present = set()
        for connection in connections.values():
            owner = self._owner(connection)
            if owner is None:
                continue
            present.add(owner)
            watcher = self._watchers.get(owner)
            if watcher is None:
                continue
            if kind is ConnectionEventType.DELETE:
                watcher.tell(suspect="the nsmgr closed this connection")
            elif connection.state is State.DOWN:
                watcher.tell(suspect="the path reported DOWN")
        if initial and self._keyed:
            # a shared stream's initial state comes in chunks (and may predate a Request that
            # just succeeded): absence from one says nothing; a connection deleted while the
            # stream re-opened is noticed by its next refresh instead
            for segment_id, watcher in self._watchers.items():
                if segment_id not in present:
                    watcher.tell(suspect="the nsmgr no longer has this connection")

    def _owner(self, connection: Connection) -> str | None:
        """The segment id of the client connection this nsmgr connection belongs to."""
        path = connection.path
        if path is None or not path.path_segments:
            return None
        first = path.path_segments[0]
        return first.id if first.name == self._name else None

    async def _confirm(self, segment_id: str, watcher: _Watcher) -> None:
        """Ask the nsmgr for the connection now: UP clears the suspicion, else broken."""
        suspect, watcher.suspect = watcher.suspect, None
        selector = MonitorScopeSelector(path_segments=[PathSegment(id=segment_id, name=self._name)])
        current: Connection | None = None
        try:
            with trio.move_on_after(CONFIRM_TIMEOUT):
                stream = self._client.monitor_connection.monitor_connections(
                    selector, timeout=CONFIRM_TIMEOUT
                )
                async with stream as events:
                    async for event in events:
                        mine = [c for c in event.connections.values() if self._owner(c)]
                        current = mine[0] if mine else None
                        break
        except TrionsmError:
            current = None
        if current is None or current.state is State.DOWN:
            watcher.tell(broken=suspect)


_shared: weakref.WeakKeyDictionary[Client, dict[str, ConnectionMonitor]] = (
    weakref.WeakKeyDictionary()
)


def shared_monitor(client: Client, name: str) -> ConnectionMonitor:
    """The one monitor of the connections named ``name`` that share ``client`` (ask again
    before each watch: a monitor nobody watches is forgotten, so that it does not keep the
    client alive)."""
    by_name = _shared.setdefault(client, {})
    monitor = by_name.get(name)
    if monitor is None:
        monitor = by_name[name] = ConnectionMonitor(client, name)
    return monitor


def _forget(monitor: ConnectionMonitor) -> None:
    by_name = _shared.get(monitor._client)
    if by_name is not None and by_name.get(monitor._name) is monitor:
        del by_name[monitor._name]
        if not by_name:
            del _shared[monitor._client]


def own_monitor(client: Client, name: str, segment_id: str) -> ConnectionMonitor:
    """A monitor of one connection on a client of its own (scoped to its segment id)."""
    return ConnectionMonitor(client, name, key=segment_id)
