"""QueryCache: answers from memory after the first Find, kept current by watches."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio
from trio.testing import wait_all_tasks_blocked

from trionsm.actors._querycache import IDLE, QueryCache
from trionsm.actors.registry import serve_registry
from trionsm.api.registry import NetworkService, NetworkServiceEndpoint
from trionsm.transport import open_client


def nse(name: str) -> NetworkServiceEndpoint:
    return NetworkServiceEndpoint(
        name=name, network_service_names=["icmp"], url="tcp://127.0.0.1:5001"
    )


BY_SERVICE = NetworkServiceEndpoint(network_service_names=["icmp"])


async def test_cached_answers_follow_the_registry(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        registry = await nursery.start(partial(serve_registry, "inproc://qc-1", expiry=600.0))
        async with open_client(registry.urls[0], roundtrip_bytes=True) as client:
            cache = QueryCache(nursery, client)
            await client.nse_registry.register(nse("a"))
            await client.ns_registry.register(NetworkService(name="icmp"))
            assert [e.name for e in await cache.endpoints(BY_SERVICE)] == ["a"]
            assert (await cache.service("icmp")) is not None
            assert await cache.service("nothing") is None
            assert (cache.hits, cache.misses) == (0, 3)
            await client.nse_registry.register(nse("b"))
            await wait_all_tasks_blocked()
            assert sorted(e.name for e in await cache.endpoints(BY_SERVICE)) == ["a", "b"]
            await client.nse_registry.unregister(nse("a"))
            await client.ns_registry.register(NetworkService(name="nothing"))
            await wait_all_tasks_blocked()
            assert [e.name for e in await cache.endpoints(BY_SERVICE)] == ["b"]
            assert (await cache.service("nothing")) is not None
            assert cache.misses == 3
            # Unused for a minute: dropped, and asked again.
            await trio.sleep(IDLE + 1)
            await cache.endpoints(BY_SERVICE)
            assert cache.misses == 4
        nursery.cancel_scope.cancel()


async def test_a_broken_watch_drops_the_query(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        registry = await nursery.start(partial(serve_registry, "inproc://qc-2"))
        async with open_client("inproc://qc-2") as client:
            cache = QueryCache(nursery, client)
            await client.nse_registry.register(nse("a"))
            await cache.endpoints(BY_SERVICE)
            await wait_all_tasks_blocked()  # the cache's watch is open
            await registry.supervisor.terminate_child("store")  # watchers end: Unavailable
            await registry.supervisor.restart_child("store")
            await wait_all_tasks_blocked()
            assert [e.name for e in await cache.endpoints(BY_SERVICE)] == ["a"]
            assert cache.misses == 2
        nursery.cancel_scope.cancel()


class DeleteBeforeWatch:
    """A client whose first Find(watch=true) waits until ``before_watch`` ran (a deletion
    injected between the cache's first Find and its watch)."""

    def __init__(self, client: Any, before_watch: Callable[[], Awaitable[None]]) -> None:
        self._client = client
        self._before_watch: Callable[[], Awaitable[None]] | None = before_watch
        self.ns_registry = self._Registry(self, client.ns_registry)
        self.nse_registry = self._Registry(self, client.nse_registry)

    class _Registry:
        def __init__(self, outer: DeleteBeforeWatch, registry: Any) -> None:
            self._outer = outer
            self._registry = registry

        def __getattr__(self, name: str) -> Any:
            return getattr(self._registry, name)

        @asynccontextmanager
        async def find(self, query: Any, **options: Any) -> AsyncIterator[Any]:
            hook, self._outer._before_watch = self._outer._before_watch, None
            if query.watch and hook is not None:
                await hook()
            else:
                self._outer._before_watch = hook
            async with self._registry.find(query, **options) as stream:
                yield stream


async def test_an_entry_deleted_between_the_first_find_and_the_watch_is_not_kept(
    autojump_clock: object,
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_registry, "inproc://qc-3", expiry=600.0))
        async with open_client("inproc://qc-3", roundtrip_bytes=True) as client:
            await client.nse_registry.register(nse("a"))
            await client.nse_registry.register(nse("b"))
            await client.ns_registry.register(NetworkService(name="icmp"))

            async def delete() -> None:
                await client.nse_registry.unregister(nse("a"))
                await client.ns_registry.unregister(NetworkService(name="icmp"))

            cache = QueryCache(nursery, DeleteBeforeWatch(client, delete))  # type: ignore[arg-type]
            assert sorted(e.name for e in await cache.endpoints(BY_SERVICE)) == ["a", "b"]
            await wait_all_tasks_blocked()  # "a" was deleted before the watch began
            assert [e.name for e in await cache.endpoints(BY_SERVICE)] == ["b"]
            assert [e.name for e in await cache.endpoints(BY_SERVICE)] == ["b"]
            assert cache.hits >= 1  # and the watch now answers

            cache = QueryCache(nursery, DeleteBeforeWatch(client, delete))  # type: ignore[arg-type]
            await client.ns_registry.register(NetworkService(name="icmp"))
            await client.nse_registry.register(nse("a"))
            assert await cache.service("icmp") is not None
            await wait_all_tasks_blocked()
            assert await cache.service("icmp") is None
        nursery.cancel_scope.cancel()
