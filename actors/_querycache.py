"""A registry query cache kept current by Find(watch=true) streams (NSM's ``querycache``).

Theory of operation. Discovery asks the registry the same few questions on every Request (this
service, its endpoints, this node's forwarders). :class:`QueryCache` answers them from memory: the
first time a query is asked it is answered by a plain Find (so the answer is complete), and a
background Find(watch=true) for the same query is opened; the cached entries are exactly what
that watch reported (its initial state, then every update and deletion, in order), never what a
plain Find said, so an entry deleted before the watch began (between the Find and the watch)
cannot stay cached. The cache answers from the watch once it is *ready*: once the watch has
reported every entry of the latest plain Find (an entry deleted meanwhile never is, so until then
each use asks the registry again, with a plain Find whose answer is the new bar; a Find that found
nothing is met at once). A query unused for :data:`IDLE` seconds is dropped with its watch. When
a watch breaks, its query is dropped, so the next use asks the registry again. Answers are lists
of the registry's messages, shared read-only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final, Generic, TypeVar

import trio

from trionsm.api.registry import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceQuery,
)
from trionsm.errors import TrionsmError
from trionsm.transport import Client

__all__ = ["IDLE", "QueryCache"]

IDLE: Final = 60.0
"""Seconds a cached query lives without being used (NSM's querycache: 1 minute)."""

M = TypeVar("M")


class _Query(Generic[M]):
    def __init__(self) -> None:
        self.entries: dict[str, M] = {}  # what the watch reported
        self.used = trio.current_time()
        self.scope = trio.CancelScope()
        self.wanted: set[str] | None = set()  # names of the latest Find not yet reported
        self.reported: set[str] = set()  # names the watch reported, until it is ready

    @property
    def ready(self) -> bool:
        return self.wanted is None

    def expect(self, names: set[str]) -> None:
        """A plain Find found ``names``: ready once the watch has reported each of them."""
        if self.wanted is not None:
            self.wanted = names - self.reported
            self._check()

    def apply(self, name: str, value: M, deleted: bool) -> None:
        """One answer of the watch, in order."""
        if deleted:
            self.entries.pop(name, None)
        else:
            self.entries[name] = value
        if self.wanted is not None:
            self.reported.add(name)
            self.wanted.discard(name)
            self._check()

    def _check(self) -> None:
        if not self.wanted:
            self.wanted = None
            self.reported = set()


class _Filling:
    """One caller's plain Find, shared with the callers that asked meanwhile."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.found: dict[str, Any] | None = None


class QueryCache:
    """Cached, watch-fed answers to registry Finds (see the module docstring).

    Args:
        nursery: where the watches run (the role's).
        client: the registry (or nsmgr registry front) client.
        bound: seconds a first, uncached Find may take.
    """

    def __init__(self, nursery: trio.Nursery, client: Client, *, bound: float = 5.0) -> None:
        self._nursery = nursery
        self._client = client
        self._bound = bound
        self._endpoints: dict[bytes, _Query[NetworkServiceEndpoint]] = {}
        self._services: dict[str, _Query[NetworkService]] = {}
        self._filling: dict[Any, _Filling] = {}
        self.hits = 0
        self.misses = 0

    async def endpoints(self, query: NetworkServiceEndpoint) -> list[NetworkServiceEndpoint]:
        """The registered endpoints matching ``query`` (cached after the first call)."""
        entries = await self._get(
            self._endpoints,
            bytes(query),
            lambda: self._read("endpoint", query, watch=False),
            self._watcher("endpoint", query),
        )
        return list(entries.values())

    async def service(self, name: str) -> NetworkService | None:
        """The registered network service ``name`` (cached after the first call), or None."""
        entries = await self._get(
            self._services,
            name,
            lambda: self._read("service", name, watch=False),
            self._watcher("service", name),
        )
        return entries.get(name)

    async def _get(
        self,
        table: dict[Any, _Query[Any]],
        key: Any,
        find: Callable[[], Awaitable[list[tuple[str, Any, bool]]]],
        watch: Callable[[_Query[Any]], Awaitable[None]],
    ) -> dict[str, Any]:
        """The entries of query ``key``: from its watch once ready, else from a plain Find (one
        caller Finds while the others wait for its answer)."""
        cached = table.get(key)
        if cached is not None and cached.ready:
            self.hits += 1
            cached.used = trio.current_time()
            return cached.entries
        filling = self._filling.get(key)
        if filling is not None:  # another caller is asking the registry: share its answer
            await filling.done.wait()
            if filling.found is not None:
                return filling.found
            return await self._get(table, key, find, watch)
        self.misses += 1
        self._filling[key] = filling = _Filling()
        try:
            found = {name: value for name, value, deleted in await find() if not deleted}
            cached = table.get(key)
            if cached is None:
                cached = table[key] = _Query()
                self._nursery.start_soon(self._follow, table, key, cached, watch)
            cached.used = trio.current_time()
            cached.expect(set(found))
            filling.found = found
            return found
        finally:
            del self._filling[key]
            filling.done.set()

    async def _follow(
        self,
        table: dict[Any, _Query[Any]],
        key: Any,
        query: _Query[Any],
        watch: Callable[[_Query[Any]], Awaitable[None]],
    ) -> None:
        with query.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._expire_idle, query)
                with contextlib.suppress(TrionsmError):  # broken: the next use asks again
                    await watch(query)
                nursery.cancel_scope.cancel()
        if table.get(key) is query:
            del table[key]

    async def _expire_idle(self, query: _Query[Any]) -> None:
        while True:
            await trio.sleep_until(query.used + IDLE)
            if trio.current_time() >= query.used + IDLE:
                query.scope.cancel()
                return

    def _stream(self, kind: str, key: Any, *, watch: bool) -> Any:
        """The Find stream for an endpoint query or a service name."""
        timeout = None if watch else self._bound
        if kind == "endpoint":
            request: Any = NetworkServiceEndpointQuery(network_service_endpoint=key, watch=watch)
            return self._client.nse_registry.find(request, timeout=timeout)
        request = NetworkServiceQuery(network_service=NetworkService(name=key), watch=watch)
        return self._client.ns_registry.find(request, timeout=timeout)

    async def _read(
        self, kind: str, key: Any, *, watch: bool, into: _Query[Any] | None = None
    ) -> list[tuple[str, Any, bool]]:
        """Run a Find: collect its answers, or (``into``) apply them to a cached query."""
        found: list[tuple[str, Any, bool]] = []
        async with self._stream(kind, key, watch=watch) as stream:
            async for response in stream:
                entry = (
                    response.network_service_endpoint
                    if kind == "endpoint"
                    else response.network_service
                )
                if entry is None:
                    continue
                if into is None:
                    found.append((entry.name, entry, response.deleted))
                else:
                    into.apply(entry.name, entry, response.deleted)
        return found

    def _watcher(self, kind: str, key: Any) -> Callable[[_Query[Any]], Awaitable[None]]:
        async def watch(into: _Query[Any]) -> None:
            await self._read(kind, key, watch=True, into=into)

        return watch
