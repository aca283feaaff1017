"""QueryCache: answers from memory after the first Find, kept current by watches."""

from __future__ import annotations

from functools import partial

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
