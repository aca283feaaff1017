"""The registry's in-memory view of one kind of entry, indexed, with watchers.

Theory of operation. A :class:`Catalog` maps names to the current registration (an NSE or an NS
message, never mutated once stored) and, for endpoints, indexes names by network service, so a Find
by service touches only that service's endpoints. Every change goes through :meth:`Catalog.put` or
:meth:`Catalog.delete`, synchronously, and is fanned out to the watchers whose query it concerns at
once, in the order the changes were applied:

* a put whose new value matches a watcher's query is sent as an update;
* a put that makes an entry stop matching (the endpoint re-registered without that service) is sent
  as a deletion of the old value, so the watcher's view stays exact;
* a delete of a matching entry is sent as a deletion.

Each watcher has a bounded buffer. A watcher that falls :attr:`Catalog.watch_buffer` events behind
is closed and its stream ends with :class:`~trionsm.errors.ResourceExhausted`: a slow reader never
stalls the registry or other readers, and it learns why (it may Find again).

:meth:`Catalog.watch` takes the snapshot and subscribes in one synchronous step, so a watcher sees
every change after its snapshot exactly once. ``revision`` counts applied changes (the etcd store
sets it to etcd's revision) and :meth:`Catalog.wait_revision` waits until a change is visible.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import attrs
import trio

from trionsm.errors import ResourceExhausted, Unavailable

__all__ = ["DEFAULT_WATCH_BUFFER", "Catalog", "Change", "Watcher"]

DEFAULT_WATCH_BUFFER = 4096

M = TypeVar("M")


@attrs.frozen
class Change(Generic[M]):
    """One event for a watcher: the entry and whether it was deleted (or left the query)."""

    value: M
    deleted: bool = False


@attrs.define(eq=False)
class Watcher(Generic[M]):
    """One Find(watch=true) subscription. Iterate it for :class:`Change` events.

    Iteration raises ResourceExhausted when the watcher fell behind and Unavailable when the
    registry stopped serving it; a watch stream never ends normally.
    """

    query: M
    send: trio.MemorySendChannel[Change[M]]
    receive: trio.MemoryReceiveChannel[Change[M]]
    hop: str
    kind: str
    overflowed: bool = False
    dropped: int = 0
    stopped: str = "the registry stopped watching"

    def __aiter__(self) -> Watcher[M]:
        return self

    async def __anext__(self) -> Change[M]:
        try:
            return await self.receive.receive()
        except trio.EndOfChannel:
            if self.overflowed:
                raise ResourceExhausted(
                    f"this Find(watch=true) fell more than {self.dropped} {self.kind} events "
                    "behind and was closed so the registry is not held up; Find again",
                    hop=self.hop,
                ) from None
            raise Unavailable(self.stopped, hop=self.hop) from None


class Catalog(Generic[M]):
    """Current registrations of one kind (endpoints or services), indexed, with watchers.

    Args:
        kind: ``"endpoint"`` or ``"service"`` (for messages).
        name_of: the entry's name.
        services_of: the network services an entry serves (indexed); return ``()`` for none.
        matches: ``matches(query, entry)``, the Find rule for this kind.
        watch_buffer: events a watcher may fall behind before it is closed.
        hop: the registry's name in error messages.
    """

    def __init__(
        self,
        kind: str,
        *,
        name_of: Callable[[M], str],
        services_of: Callable[[M], Iterable[str]],
        query_services: Callable[[M], Iterable[str]],
        query_name: Callable[[M], str],
        matches: Callable[[M, M], bool],
        watch_buffer: int = DEFAULT_WATCH_BUFFER,
        hop: str = "registry",
    ) -> None:
        if watch_buffer < 1:
            raise ValueError(f"watch_buffer must be at least 1, got {watch_buffer}")
        self.kind = kind
        self.hop = hop
        self.watch_buffer = watch_buffer
        self.revision = 0
        self._name_of = name_of
        self._services_of = services_of
        self._query_services = query_services
        self._query_name = query_name
        self._matches = matches
        self._by_name: dict[str, M] = {}
        self._by_service: dict[str, dict[str, M]] = {}
        self._watchers: set[Watcher[M]] = set()
        self._revision_waiters: list[tuple[int, int, trio.Event]] = []
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> M | None:
        """The current registration under ``name``, or None."""
        return self._by_name.get(name)

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        return list(self._by_name)

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    # -- changes ---------------------------------------------------------------------------------

    def put(self, value: M, *, revision: int | None = None) -> M | None:
        """Store ``value`` under its name (replacing any previous one) and tell the watchers.

        Returns the previous value. ``revision`` (etcd's) overrides the local counter.
        """
        name = self._name_of(value)
        previous = self._by_name.get(name)
        services = list(self._services_of(value))
        if previous is not None:  # a refresh keeps its place under the services it still serves
            self._unindex(name, previous, keep=services)
        self._by_name[name] = value
        for service in services:
            self._by_service.setdefault(service, {})[name] = value
        for watcher in list(self._watchers):
            if self._matches(watcher.query, value):
                self._deliver(watcher, Change(value))
            elif previous is not None and self._matches(watcher.query, previous):
                self._deliver(watcher, Change(previous, deleted=True))
        self._advance(revision)
        return previous

    def delete(self, name: str, *, revision: int | None = None) -> M | None:
        """Remove ``name`` and tell the watchers; returns the removed value (None if absent)."""
        previous = self._by_name.pop(name, None)
        if previous is not None:
            self._unindex(name, previous)
            for watcher in list(self._watchers):
                if self._matches(watcher.query, previous):
                    self._deliver(watcher, Change(previous, deleted=True))
        self._advance(revision)
        return previous

    def _unindex(self, name: str, value: M, keep: Iterable[str] = ()) -> None:
        kept = set(keep)
        for service in self._services_of(value):
            if service in kept:
                continue
            members = self._by_service.get(service)
            if members is not None:
                members.pop(name, None)
                if not members:
                    del self._by_service[service]

    # -- queries ---------------------------------------------------------------------------------

    def find(self, query: M) -> list[M]:
        """Every current registration matching ``query``, in registration order.

        (By service: in the order the entries joined that service; a refresh keeps its place.)
        """
        return [value for value in self._candidates(query) if self._matches(query, value)]

    def _candidates(self, query: M) -> Iterable[M]:
        name = self._query_name(query)
        if name:
            value = self._by_name.get(name)
            return () if value is None else (value,)
        services = list(self._query_services(query))
        if services:
            sets = [self._by_service.get(service) for service in services]
            if any(members is None for members in sets):
                return ()
            smallest = min((m for m in sets if m is not None), key=len)
            return list(smallest.values())
        return list(self._by_name.values())

    @contextmanager
    def watch(self, query: M) -> Iterator[tuple[list[M], Watcher[M]]]:
        """Snapshot the matches of ``query`` and subscribe to later changes, atomically.

        Yields ``(current matches, watcher)``; leaving the block unsubscribes.
        """
        send, receive = trio.open_memory_channel[Change[M]](self.watch_buffer)
        watcher = Watcher(query, send, receive, hop=self.hop, kind=self.kind)
        snapshot = self.find(query)
        self._watchers.add(watcher)
        try:
            yield snapshot, watcher
        finally:
            self._watchers.discard(watcher)
            send.close()
            receive.close()

    def close_watchers(self, reason: str) -> None:
        """End every watcher's stream with Unavailable(``reason``) (stopping, or store lost)."""
        for watcher in list(self._watchers):
            watcher.stopped = reason
            watcher.send.close()
        self._watchers.clear()

    def _deliver(self, watcher: Watcher[M], change: Change[M]) -> None:
        try:
            watcher.send.send_nowait(change)
        except trio.WouldBlock:
            watcher.overflowed = True
            watcher.dropped = self.watch_buffer
            self._watchers.discard(watcher)
            watcher.send.close()
        except trio.BrokenResourceError:  # the reader left; its block will unsubscribe
            self._watchers.discard(watcher)

    # -- revisions -------------------------------------------------------------------------------

    def _advance(self, revision: int | None) -> None:
        self.revision = self.revision + 1 if revision is None else max(self.revision, revision)
        waiters = self._revision_waiters
        while waiters and waiters[0][0] <= self.revision:
            heapq.heappop(waiters)[2].set()

    def set_revision(self, revision: int) -> None:
        """Note that everything up to ``revision`` is applied (no change of its own)."""
        if revision > self.revision:
            self._advance(revision)

    async def wait_revision(self, revision: int) -> None:
        """Return once the catalog has applied ``revision``."""
        if self.revision >= revision:
            return
        event = trio.Event()
        heapq.heappush(self._revision_waiters, (revision, next(self._sequence), event))
        await event.wait()
