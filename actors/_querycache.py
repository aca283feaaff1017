"""A registry query cache kept current by Find(watch=true) streams (NSM's ``querycache``).

Theory of operation. Discovery asks the registry the same few questions on every Request (this
service, its endpoints, this node's forwarders). :class:`QueryCache` answers them from memory: the
first time a query is asked it is answered by a plain Find (so the answer is complete), and a
background Find(watch=true) for the same query then keeps the cached entries current (updates
and deletions). A query unused for :data:`IDLE` seconds is dropped with its watch. When a watch
breaks, its query is dropped, so the next use asks the registry again. Answers are lists of the
registry's messages, shared read-only.
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
        self.entries: dict[str, M] = {}
        self.used = trio.current_time()
        self.scope = trio.CancelScope()


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
        self._filling: dict[Any, trio.Event] = {}
        self.hits = 0
        self.misses = 0

    async def endpoints(self, query: NetworkServiceEndpoint) -> list[NetworkServiceEndpoint]:
        """The registered endpoints matching ``query`` (cached after the first call)."""
        cached = await self._get(
            self._endpoints,
            bytes(query),
            lambda: self._read("endpoint", query, watch=False),
            self._watcher("endpoint", query),
        )
        return list(cached.entries.values())

    async def service(self, name: str) -> NetworkService | None:
        """The registered network service ``name`` (cached after the first call), or None."""
        cached = await self._get(
            self._services,
            name,
            lambda: self._read("service", name, watch=False),
            self._watcher("service", name),
        )
        return cached.entries.get(name)

    async def _get(
        self,
        table: dict[Any, _Query[Any]],
        key: Any,
        find: Callable[[], Awaitable[list[tuple[str, Any, bool]]]],
        watch: Callable[[_Query[Any]], Awaitable[None]],
    ) -> _Query[Any]:
        """The cached query ``key``; on a miss one caller Finds while the others wait for it."""
        while True:
            cached = table.get(key)
            if cached is not None:
                self.hits += 1
                cached.used = trio.current_time()
                return cached
            filling = self._filling.get(key)
            if filling is None:
                break
            await filling.wait()  # another caller is asking the registry: share its answer
        self.misses += 1
        self._filling[key] = filling = trio.Event()
        try:
            query: _Query[Any] = _Query()
            for name, value, deleted in await find():
                if not deleted:
                    query.entries[name] = value
            table[key] = query
            self._nursery.start_soon(self._follow, table, key, query, watch)
            return query
        finally:
            del self._filling[key]
            filling.set()

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
                elif response.deleted:
                    into.entries.pop(entry.name, None)
                else:
                    into.entries[entry.name] = entry
        return found

    def _watcher(self, kind: str, key: Any) -> Callable[[_Query[Any]], Awaitable[None]]:
        async def watch(into: _Query[Any]) -> None:
            await self._read(kind, key, watch=True, into=into)

        return watch
