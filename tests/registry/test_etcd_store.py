"""The etcd store with a real etcd: replicas share registrations, expiry, take-over, outages.

Real etcd (started per test by the ``etcd_server`` fixture, stopped by its PID), real clock, every
wait bounded by ``trio.fail_after``; one replica runs as a real ``trionsm registry`` process that
is SIGKILLed.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from itertools import count

import pytest
import trio

from tests.etcd_server import EtcdServer
from trionsm.actors.registry import RegistryHandle, open_store, serve_registry
from trionsm.api.registry import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceQuery,
)
from trionsm.clock import current_clock
from trionsm.errors import InvalidArgument, Unavailable
from trionsm.transport import Client, open_client, open_etcd

_names = count()


def nse(name: str, service: str = "icmp") -> NetworkServiceEndpoint:
    return NetworkServiceEndpoint(
        name=name, network_service_names=[service], url="tcp://127.0.0.1:5001"
    )


def everything(*, watch: bool = False) -> NetworkServiceEndpointQuery:
    return NetworkServiceEndpointQuery(
        network_service_endpoint=NetworkServiceEndpoint(), watch=watch
    )


async def names(client: Client) -> list[str]:
    async with client.nse_registry.find(everything()) as stream:
        return sorted([r.network_service_endpoint.name async for r in stream])


@asynccontextmanager
async def replica(
    etcd: EtcdServer, expiry: float = 60.0, prefix: str = "test"
) -> AsyncIterator[tuple[RegistryHandle, Client]]:
    url = f"inproc://replica-{next(_names)}"
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            partial(serve_registry, url, store=f"etcd://{etcd.endpoint}/{prefix}", expiry=expiry)
        )
        async with open_client(url) as client:
            yield handle, client
        nursery.cancel_scope.cancel()


class Watch:
    """A Find(watch=true) in the background: (name, deleted, trio time) per event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bool, float]] = []
        self.changed = trio.Event()

    async def run(self, client: Client, *, task_status: trio.TaskStatus[None]) -> None:
        async with client.nse_registry.find(everything(watch=True)) as stream:
            task_status.started()
            async for response in stream:
                name = response.network_service_endpoint.name
                self.events.append((name, response.deleted, trio.current_time()))
                self.changed.set()
                self.changed = trio.Event()

    async def wait(self, name: str, deleted: bool) -> float:
        while True:
            for seen, was_deleted, when in self.events:
                if (seen, was_deleted) == (name, deleted):
                    return when
            await self.changed.wait()


async def test_a_registration_through_one_replica_is_found_through_another(
    etcd_server: EtcdServer,
) -> None:
    with trio.fail_after(60):
        async with replica(etcd_server) as (_, a), replica(etcd_server) as (_, b):
            for index in range(20):  # no waiting in between: Find syncs with etcd first
                await a.nse_registry.register(nse(f"nse-{index}"))
                assert f"nse-{index}" in await names(b)
            await b.nse_registry.unregister(nse("nse-3"))
            assert "nse-3" not in await names(a)
            stored = await b.ns_registry.register(NetworkService(name="icmp"))
            assert stored.payload == "IP"
            async with a.ns_registry.find(
                NetworkServiceQuery(network_service=NetworkService(name="icmp"))
            ) as stream:
                assert [r.network_service.name async for r in stream] == ["icmp"]


async def test_watchers_of_b_see_registrations_deletions_and_expiries_made_through_a(
    etcd_server: EtcdServer,
) -> None:
    with trio.fail_after(60):
        async with (
            replica(etcd_server, expiry=2.0) as (handle_a, a),
            replica(etcd_server) as (handle_b, b),
            trio.open_nursery() as nursery,
        ):
            watch = Watch()
            await nursery.start(watch.run, b)
            await a.nse_registry.register(nse("gone"))
            began = trio.current_time()
            stored = await a.nse_registry.register(nse("expiring"))
            await a.nse_registry.unregister(nse("gone"))
            await watch.wait("gone", deleted=True)
            deleted_at = await watch.wait("expiring", deleted=True)
            # Deleted by A's entry at its deadline, not by the lease 2 s later.
            assert deleted_at - began < 2.0 + 1.0
            assert stored.expiration_time is not None
            assert handle_a.registry.entries() == {}
            assert handle_b.registry.entries() == {}
            assert await names(b) == []
            nursery.cancel_scope.cancel()


async def test_a_replica_that_stops_loses_nothing_and_its_leases_expire_the_rest(
    etcd_server: EtcdServer,
) -> None:
    with trio.fail_after(60):
        async with replica(etcd_server) as (_, b), trio.open_nursery() as nursery:
            watch = Watch()
            await nursery.start(watch.run, b)
            async with replica(etcd_server, expiry=3.0) as (_, a):
                await a.nse_registry.register(nse("kept"))
            # A is gone: B still serves the registration until its lease runs out.
            assert await names(b) == ["kept"]
            gone_at = await watch.wait("kept", deleted=True)
            registered_at = await watch.wait("kept", deleted=False)
            assert 3.0 <= gone_at - registered_at < 3.0 + 2.0 + 3.0  # deadline + margin + slack
            nursery.cancel_scope.cancel()


async def test_a_sigkilled_registry_process_loses_nothing(etcd_server: EtcdServer) -> None:
    command = [
        sys.executable, "-m", "trionsm.cli", "registry", "--listen", "tcp://127.0.0.1:0",
        "--store", f"etcd://{etcd_server.endpoint}/test", "--expiry", "4s",
    ]  # fmt: skip
    with trio.fail_after(60):
        async with replica(etcd_server) as (_, b), trio.open_nursery() as nursery:
            watch = Watch()
            await nursery.start(watch.run, b)
            process = await nursery.start(
                partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
            )
            assert process.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                line += await process.stdout.receive_some(1)
            url = line.decode().split()[1]
            async with open_client(url) as a:
                await a.nse_registry.register(nse("survivor"))
            process.send_signal(signal.SIGKILL)
            assert await process.wait() == -signal.SIGKILL
            assert await names(b) == ["survivor"]
            registered_at = await watch.wait("survivor", deleted=False)
            gone_at = await watch.wait("survivor", deleted=True)
            assert 4.0 <= gone_at - registered_at < 4.0 + 2.0 + 3.0
            nursery.cancel_scope.cancel()


async def test_another_replica_takes_a_registration_over(etcd_server: EtcdServer) -> None:
    with trio.fail_after(60):
        async with (
            replica(etcd_server, expiry=2.0) as (handle_a, a),
            replica(etcd_server, expiry=6.0) as (handle_b, b),
            trio.open_nursery() as nursery,
        ):
            watch = Watch()
            await nursery.start(watch.run, b)
            await a.nse_registry.register(nse("moving"))
            entry_a = handle_a.registry.entries()[("endpoint", "moving")]
            began = trio.current_time()
            await b.nse_registry.register(nse("moving"))
            with trio.fail_after(5):
                await entry_a.done.wait()  # A's entry stands down...
            assert entry_a.ended
            assert handle_a.registry.entries() == {}
            assert set(handle_b.registry.entries()) == {("endpoint", "moving")}
            # A's 2 s deadline passes without a deletion; B's 6 s one removes it.
            gone_at = await watch.wait("moving", deleted=True)
            assert 6.0 <= gone_at - began < 6.0 + 1.5
            nursery.cancel_scope.cancel()


async def test_etcd_outage_fails_calls_and_the_replica_catches_up(
    etcd_server: EtcdServer,
) -> None:
    with trio.fail_after(90):
        async with replica(etcd_server) as (_, a), replica(etcd_server) as (_, b):
            await a.nse_registry.register(nse("before"))
            await etcd_server.kill()
            with pytest.raises(Unavailable):
                await a.nse_registry.register(nse("during"))
            await etcd_server.restart()
            while True:  # the replicas reconnect with backoff
                try:
                    await a.nse_registry.register(nse("after"))
                    break
                except Unavailable:
                    await trio.sleep(0.2)
            assert await names(b) == ["after", "before"]


async def test_a_restarted_replica_loads_what_etcd_holds(etcd_server: EtcdServer) -> None:
    with trio.fail_after(60):
        async with replica(etcd_server) as (_, a):
            await a.nse_registry.register(nse("persisted"))
        async with replica(etcd_server) as (_, again):
            assert await names(again) == ["persisted"]
        async with replica(etcd_server, prefix="other") as (_, elsewhere):
            assert await names(elsewhere) == []


async def test_registrations_expiring_in_one_second_share_a_lease_of_their_replica(
    etcd_server: EtcdServer,
) -> None:
    """One lease grant per replica and second of expiry; a take-over is still seen as one."""
    clock = current_clock()
    deadline = math.floor(trio.current_time()) + 30.25  # + LEASE_MARGIN: all in one second
    with trio.fail_after(60):
        async with (
            replica(etcd_server) as (handle_a, a),
            replica(etcd_server) as (handle_b, b),
            open_etcd(etcd_server.endpoint) as etcd,
        ):

            async def register(client: Client, name: str) -> int:
                entry = nse(name)
                entry.expiration_time = clock.timestamp(deadline)
                await client.nse_registry.register(entry)
                kv = await etcd.get(f"/test/nse/{name}".encode())
                assert kv is not None
                return kv.lease

            first, second = await register(a, "a-1"), await register(a, "a-2")
            theirs = await register(b, "b-1")
            assert first == second != 0
            assert theirs not in (0, first)
            entry_a = handle_a.registry.entries()[("endpoint", "a-1")]
            assert await register(b, "a-1") == theirs  # B takes a-1 over, with B's lease
            await entry_a.done.wait()
            assert entry_a.ended
            assert set(handle_a.registry.entries()) == {("endpoint", "a-2")}
            assert set(handle_b.registry.entries()) == {("endpoint", "b-1"), ("endpoint", "a-1")}


@pytest.mark.parametrize("url", ["etcd://", "etcd://host", "etcd://:2379", "redis://x:1"])
def test_bad_store_urls_are_invalid_arguments(url: str) -> None:
    with pytest.raises(InvalidArgument, match="store"):
        open_store(url)


async def test_concurrent_registers_are_found_as_soon_as_they_return(
    etcd_server: EtcdServer,
) -> None:
    """32 callers register 1,000 endpoints through replica A; as each Register returns, A's
    catalog holds it and a Find by its name through replica B returns it.

    etcd 3.4.23 answers a watch progress request with its current revision and may send that
    answer before watch events it had already queued: a store that trusts progress notifications
    let a Register (or a Find's sync) return before the registration was applied.
    """
    late: list[str] = []
    unseen: list[str] = []
    pending = iter(range(1000))

    async def caller() -> None:
        for index in pending:
            name = f"nse-{index}"
            await a.nse_registry.register(nse(name))
            if handle_a.registry.store.endpoints.get(name) is None:
                late.append(name)
            if index % 4 == 0:
                query = NetworkServiceEndpointQuery(
                    network_service_endpoint=NetworkServiceEndpoint(name=name)
                )
                async with b.nse_registry.find(query) as stream:
                    found = [r.network_service_endpoint.name async for r in stream]
                if found != [name]:
                    unseen.append(name)

    with trio.fail_after(120):
        async with replica(etcd_server) as (handle_a, a), replica(etcd_server) as (_, b):
            async with trio.open_nursery() as nursery:
                for _ in range(32):
                    nursery.start_soon(caller)
            assert (late, unseen) == ([], [])
            assert len(await names(b)) == 1000
            assert len(handle_a.registry.store.endpoints) == 1000


async def test_a_reload_feeds_watchers_no_faster_than_they_drain(etcd_server: EtcdServer) -> None:
    """A reload after an outage applies its diff entry by entry, yielding between entries.

    The whole prefix may have changed meanwhile (every entry expired): applied at once, that
    diff once closed every watcher with ResourceExhausted (more events than its buffer).
    """
    from trionsm.actors.registry._etcd_store import EtcdStore

    count, buffer = 500, 16
    store = EtcdStore(f"etcd://{etcd_server.endpoint}/reload", watch_buffer=buffer)
    async with open_etcd(etcd_server.endpoint) as client:
        for i in range(count):
            await client.put(f"/reload/nse/n{i}".encode(), bytes(nse(f"n{i}")))
        store._client = client
        received: list[str] = []
        all_received = trio.Event()
        with store.endpoints.watch(NetworkServiceEndpoint()) as (snapshot, watcher):
            assert snapshot == []

            async def drain(task_status: trio.TaskStatus[None]) -> None:
                task_status.started()
                async for change in watcher:
                    received.append(change.value.name)
                    if len(received) == 2 * count:
                        all_received.set()

            with trio.fail_after(15):
                async with trio.open_nursery() as nursery:
                    await nursery.start(drain)
                    await store._load()
                    await client.delete_prefix(b"/reload/nse/")
                    await store._load()
                    await all_received.wait()
                    nursery.cancel_scope.cancel()
            assert not watcher.overflowed
        assert len(store.endpoints) == 0
