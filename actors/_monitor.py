"""MonitorConnections, server side: a hop's connections and the streams watching them.

Theory of operation. Every hop (nsmgr, forwarder, endpoint) keeps one :class:`MonitorHub`: the
connections it holds, keyed by this hop's connection id, and the subscribers of its
MonitorConnections stream. A subscriber first gets one ``INITIAL_STATE_TRANSFER`` event with
every connection its selector matches, then ``UPDATE`` after each successful Request (and each
change, such as ``state=DOWN`` when the next hop is lost) and ``DELETE`` after each Close or expiry,
in the order the hop applied them. Snapshot and subscription happen in one synchronous step, so a
subscriber misses nothing and sees nothing twice.

Selectors (:func:`selector_matches`, NSM's ``MatchesMonitorScopeSelector``): an empty selector
matches every connection; ``network_services`` keeps connections of those services; the selector's
``path_segments`` must appear contiguously in the connection's path, each selector segment matching
on the fields it sets (``id``, ``name``).

Subscribers whose selector names a path segment id (an NSC watching its own connection, one
stream per connection) are indexed by that id, so an event reaches the subscribers of its own
path's segments and the unindexed ones, not every stream of a busy hop. The connections are
indexed by every segment id of their paths too, so such a subscriber's INITIAL_STATE_TRANSFER
looks at the connections on that segment only (O(1), not O(connections): an nsmgr holding
10,000 connections scanned all of them for each new NSC).

A slow subscriber never holds a hop up and is never dropped: once it falls
:data:`COMPACT_AFTER` events behind, its queue keeps only each connection's newest unsent event
(an UPDATE then a DELETE of one connection becomes the DELETE), so it holds about one event per
connection in scope and still gets every connection's latest state, each connection's events in
order. (A stream shared by thousands of connections, an NSC's, used to fall 1,024 events behind
under load and be dropped, breaking every connection on it at once.)

The INITIAL_STATE_TRANSFER comes in events of at most :data:`INITIAL_CHUNK` connections, so that
a scope of thousands stays under the message-size limit (one event of every connection
would be refused past about 2,000).
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import attrs
import trio

from trionsm.api.connection import (
    Connection,
    ConnectionEvent,
    ConnectionEventType,
    MonitorScopeSelector,
    PathSegment,
)
from trionsm.errors import Unavailable

__all__ = ["COMPACT_AFTER", "INITIAL_CHUNK", "MonitorHub", "selector_matches"]

INITIAL_CHUNK = 500
"""Connections per INITIAL_STATE_TRANSFER event (a 4-hop Connection encodes to about 2 KB)."""

COMPACT_AFTER = 1024
"""Events a subscriber may fall behind before its queue keeps only each connection's newest."""


def _segment_matches(wanted: PathSegment, segment: PathSegment) -> bool:
    if wanted.id and wanted.id != segment.id:
        return False
    return not (wanted.name and wanted.name != segment.name)


def selector_matches(selector: MonitorScopeSelector | None, connection: Connection) -> bool:
    """True when ``connection`` is in the scope of ``selector`` (NSM's rules)."""
    if selector is None:
        return True
    if selector.network_services and connection.network_service not in selector.network_services:
        return False
    wanted = selector.path_segments
    if not wanted:
        return True
    segments = connection.path.path_segments if connection.path is not None else []
    for start in range(len(segments) - len(wanted) + 1):
        if all(_segment_matches(w, segments[start + i]) for i, w in enumerate(wanted)):
            return True
    return False


def _segments(connection: Connection) -> list[PathSegment]:
    return connection.path.path_segments if connection.path is not None else []


def _segment_key(selector: MonitorScopeSelector | None) -> str | None:
    """The segment id a selector requires (its first segment's), if it names one."""
    if selector is None or not selector.path_segments:
        return None
    return selector.path_segments[0].id or None


@attrs.define(eq=False)
class _Subscriber:
    """One stream's queue of events; compacted to each connection's newest when it grows past
    ``compact_at`` (then again only past twice what compacting left, so it stays cheap)."""

    selector: MonitorScopeSelector | None
    pending: collections.deque[tuple[ConnectionEventType, Connection]] = attrs.field(
        factory=collections.deque
    )
    wake: trio.Event = attrs.field(factory=trio.Event)
    closed: bool = False
    compact_at: int = COMPACT_AFTER

    def put(self, kind: ConnectionEventType, connection: Connection) -> None:
        self.pending.append((kind, connection))
        if len(self.pending) > self.compact_at:
            newest: dict[str, tuple[ConnectionEventType, Connection]] = {}
            for event in self.pending:
                newest.pop(event[1].id, None)  # its newer event goes last
                newest[event[1].id] = event
            self.pending = collections.deque(newest.values())
            self.compact_at = max(COMPACT_AFTER, 2 * len(self.pending))
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    async def get(self) -> ConnectionEvent:
        """The next event (trio.EndOfChannel once closed)."""
        while not self.pending:
            if self.closed:
                raise trio.EndOfChannel
            await self.wake.wait()
            self.wake = trio.Event()
        kind, connection = self.pending.popleft()
        return ConnectionEvent(type=kind, connections={connection.id: connection})


class MonitorHub:
    """The connections of one hop and the MonitorConnections streams watching them.

    Args:
        hop: this hop's name in errors.
    """

    def __init__(self, hop: str) -> None:
        self.hop = hop
        self._connections: dict[str, Connection] = {}
        # every path segment id of every connection -> the connection's key (a tuple of keys in
        # the rare case two connections share a segment id)
        self._on_segment: dict[str, str | tuple[str, ...]] = {}
        self._subscribers: set[_Subscriber] = set()
        self._by_segment: dict[str, set[_Subscriber]] = {}  # the indexed ones, by segment id
        self._closed: str | None = None

    def __len__(self) -> int:
        return len(self._connections)

    def get(self, connection_id: str) -> Connection | None:
        return self._connections.get(connection_id)

    def connections(self) -> dict[str, Connection]:
        """A snapshot of every connection, keyed by this hop's connection id."""
        return dict(self._connections)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers) + sum(len(i) for i in self._by_segment.values())

    def update(self, connection: Connection) -> None:
        """Store ``connection`` (keyed by its id) and send UPDATE to matching subscribers."""
        previous = self._connections.get(connection.id)
        if previous is not None:
            self._unindex(previous)
        self._connections[connection.id] = connection
        self._index(connection)
        self._publish(ConnectionEventType.UPDATE, connection)

    def delete(self, connection_id: str) -> Connection | None:
        """Forget a connection and send DELETE (with its last value); None if unknown."""
        connection = self._connections.pop(connection_id, None)
        if connection is not None:
            self._unindex(connection)
            self._publish(ConnectionEventType.DELETE, connection)
        return connection

    def _index(self, connection: Connection) -> None:
        key, index = connection.id, self._on_segment
        for segment in _segments(connection):
            held = index.get(segment.id)
            if held is None or held == key:
                index[segment.id] = key
            elif isinstance(held, str):
                index[segment.id] = (held, key)
            elif key not in held:
                index[segment.id] = (*held, key)

    def _unindex(self, connection: Connection) -> None:
        key, index = connection.id, self._on_segment
        for segment in _segments(connection):
            held = index.get(segment.id)
            if held == key:
                del index[segment.id]
            elif isinstance(held, tuple) and key in held:
                rest = tuple(k for k in held if k != key)
                index[segment.id] = rest[0] if len(rest) == 1 else rest

    def _on(self, segment_id: str) -> Iterator[Connection]:
        """The connections with a path segment of id ``segment_id``."""
        held = self._on_segment.get(segment_id)
        for key in (held,) if isinstance(held, str) else held or ():
            connection = self._connections.get(key)
            if connection is not None:
                yield connection

    def _matching(self, selector: MonitorScopeSelector | None) -> dict[str, Connection]:
        """The connections in ``selector``'s scope, keyed by this hop's connection id."""
        key = _segment_key(selector)
        candidates = self._connections.values() if key is None else self._on(key)
        return {c.id: c for c in candidates if selector_matches(selector, c)}

    def _interested(self, connection: Connection) -> list[_Subscriber]:
        """The subscribers that may match ``connection``: the unindexed ones, and those indexed
        under one of its path's segment ids."""
        found = list(self._subscribers)
        if self._by_segment and connection.path is not None:
            for segment in connection.path.path_segments:
                found.extend(self._by_segment.get(segment.id, ()))
        return found

    def _add(self, subscriber: _Subscriber) -> None:
        key = _segment_key(subscriber.selector)
        if key is None:
            self._subscribers.add(subscriber)
        else:
            self._by_segment.setdefault(key, set()).add(subscriber)

    def _discard(self, subscriber: _Subscriber) -> None:
        key = _segment_key(subscriber.selector)
        if key is None:
            self._subscribers.discard(subscriber)
            return
        indexed = self._by_segment.get(key)
        if indexed is not None:
            indexed.discard(subscriber)
            if not indexed:
                del self._by_segment[key]

    def _publish(self, kind: ConnectionEventType, connection: Connection) -> None:
        for subscriber in self._interested(connection):
            if selector_matches(subscriber.selector, connection):
                subscriber.put(kind, connection)

    def close(self, reason: str) -> None:
        """End every stream with Unavailable(``reason``) (the hop is stopping)."""
        self._closed = reason
        for subscriber in [*self._subscribers, *(s for i in self._by_segment.values() for s in i)]:
            subscriber.close()
        self._subscribers.clear()
        self._by_segment.clear()

    @contextmanager
    def _subscribe(
        self, selector: MonitorScopeSelector | None
    ) -> Iterator[tuple[list[ConnectionEvent], _Subscriber]]:
        matching = list(self._matching(selector).items())
        initial = [
            ConnectionEvent(
                type=ConnectionEventType.INITIAL_STATE_TRANSFER,
                connections=dict(matching[start : start + INITIAL_CHUNK]),
            )
            for start in range(0, len(matching), INITIAL_CHUNK)
        ] or [ConnectionEvent(type=ConnectionEventType.INITIAL_STATE_TRANSFER, connections={})]
        subscriber = _Subscriber(selector)
        self._add(subscriber)
        try:
            yield initial, subscriber
        finally:
            self._discard(subscriber)
            subscriber.close()

    async def stream(self, selector: MonitorScopeSelector | None) -> AsyncIterator[ConnectionEvent]:
        """The MonitorConnections stream: INITIAL_STATE_TRANSFER (one event per
        :data:`INITIAL_CHUNK` connections), then every change in scope."""
        if self._closed is not None:
            raise Unavailable(self._closed, hop=self.hop)
        with self._subscribe(selector) as (initial, subscriber):
            for event in initial:
                yield event
            del initial
            while True:
                try:
                    event = await subscriber.get()
                except trio.EndOfChannel:
                    raise Unavailable(self._closed or "the hop stopped", hop=self.hop) from None
                yield event
