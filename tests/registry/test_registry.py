"""The registry served on a transport: Register/Find/Unregister, expiry, watchers, ownership.

Timer behaviour runs under ``autojump_clock`` over ``inproc://`` with every message serialised
(``roundtrip_bytes=True``), so expiry is checked to the exact Trio time and wire bugs cannot hide.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from itertools import count

import pytest
import trio

from trionsm.actors.registry import (
    DEFAULT_EXPIRY,
    MemoryStore,
    Registry,
    RegistryHandle,
    serve_registry,
)
from trionsm.api.registry import (
    Match,
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceEndpointResponse,
    NetworkServiceLabels,
    NetworkServiceQuery,
)
from trionsm.clock import current_clock
from trionsm.errors import (
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from trionsm.supervision import ChildState
from trionsm.transport import Client, Peer, open_client

_names = count()


def nse(
    name: str, *services: str, url: str = "tcp://127.0.0.1:5001", **extra: object
) -> NetworkServiceEndpoint:
    return NetworkServiceEndpoint(
        name=name, network_service_names=list(services or ("icmp",)), url=url, **extra
    )


def by_service(*services: str, watch: bool = False) -> NetworkServiceEndpointQuery:
    return NetworkServiceEndpointQuery(
        network_service_endpoint=NetworkServiceEndpoint(network_service_names=list(services)),
        watch=watch,
    )


@asynccontextmanager
async def running_registry(
    expiry: float = DEFAULT_EXPIRY, **options: object
) -> AsyncIterator[tuple[RegistryHandle, Client]]:
    url = f"inproc://registry-{next(_names)}"
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            lambda task_status: serve_registry(
                url, expiry=expiry, roundtrip_bytes=True, task_status=task_status, **options
            )
        )
        async with open_client(handle.urls[0], roundtrip_bytes=True) as client:
            yield handle, client
        nursery.cancel_scope.cancel()


async def collect(client: Client, query: NetworkServiceEndpointQuery) -> list[str]:
    async with client.nse_registry.find(query) as stream:
        return [response.network_service_endpoint.name async for response in stream]


class Recorder:
    """A Find(watch=true) running in the background, recording (time, name, deleted)."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, bool]] = []
        self.changed = trio.Event()
        self.error: BaseException | None = None

    async def run(
        self,
        client: Client,
        query: NetworkServiceEndpointQuery,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with client.nse_registry.find(query) as stream:
            task_status.started()
            try:
                async for response in stream:
                    self._note(response)
            except (ResourceExhausted, Unavailable) as exc:
                self.error = exc
                self.changed.set()

    def _note(self, response: NetworkServiceEndpointResponse) -> None:
        name = response.network_service_endpoint.name
        self.events.append((trio.current_time(), name, response.deleted))
        self.changed.set()
        self.changed = trio.Event()

    def view(self) -> set[str]:
        """The names the watcher believes are registered, replaying its events."""
        names: set[str] = set()
        for _, name, deleted in self.events:
            (names.discard if deleted else names.add)(name)
        return names

    async def wait_view(self, expected: set[str]) -> None:
        while self.view() != expected:
            await self.changed.wait()

    async def wait_for(self, name: str, deleted: bool) -> float:
        while True:
            for when, seen, was_deleted in self.events:
                if seen == name and was_deleted == deleted:
                    return when
            await self.changed.wait()


async def test_register_sets_expiry_and_keeps_first_registration_time(
    autojump_clock: object,
) -> None:
    async with running_registry(expiry=30.0) as (_, client):
        clock = current_clock()
        first = await client.nse_registry.register(nse("nse-1"))
        assert first.expiration_time == clock.timestamp(30.0)
        assert first.initial_registration_time == clock.timestamp(0.0)
        await trio.sleep(10)
        again = await client.nse_registry.register(nse("nse-1"))
        assert again.expiration_time == clock.timestamp(40.0)
        assert again.initial_registration_time == first.initial_registration_time
        # A shorter requested expiry is honoured; a longer one is capped at now + expiry.
        short = await client.nse_registry.register(
            nse("nse-1", expiration_time=clock.timestamp(15.0))
        )
        assert short.expiration_time == clock.timestamp(15.0)
        long = await client.nse_registry.register(
            nse("nse-2", expiration_time=clock.timestamp(1000.0))
        )
        assert long.expiration_time == clock.timestamp(40.0)


async def test_missed_refresh_removes_the_entry_at_its_deadline(autojump_clock: object) -> None:
    async with running_registry(expiry=5.0) as (handle, client), trio.open_nursery() as nursery:
        recorder = Recorder()
        await nursery.start(recorder.run, client, by_service("icmp", watch=True))
        await client.nse_registry.register(nse("nse-1"))
        deleted_at = await recorder.wait_for("nse-1", deleted=True)
        assert deleted_at == pytest.approx(5.0, abs=1e-6)
        assert await collect(client, by_service("icmp")) == []
        assert handle.registry.entries() == {}
        nursery.cancel_scope.cancel()


async def test_refresh_keeps_the_entry_alive(autojump_clock: object) -> None:
    async with running_registry(expiry=3.0) as (_, client), trio.open_nursery() as nursery:
        recorder = Recorder()
        await nursery.start(recorder.run, client, by_service("icmp", watch=True))
        for _ in range(15):  # 30 s of refreshes at 2/3 of a 3 s lifetime
            await client.nse_registry.register(nse("nse-1"))
            await trio.sleep(2.0)
        assert [deleted for _, _, deleted in recorder.events] == [False] * 15
        assert await collect(client, by_service("icmp")) == ["nse-1"]
        # Stop refreshing: it goes 3 s after the last refresh (at 28 + 3 = 31 s).
        assert await recorder.wait_for("nse-1", deleted=True) == pytest.approx(31.0, abs=1e-6)
        nursery.cancel_scope.cancel()


async def test_find_without_watch_streams_matches_and_ends(autojump_clock: object) -> None:
    async with running_registry() as (_, client):
        labels = {"icmp": NetworkServiceLabels(labels={"app": "a", "zone": "z1"})}
        await client.nse_registry.register(nse("a", "icmp", network_service_labels=labels))
        await client.nse_registry.register(nse("b", "icmp", "vpn", url="tcp://127.0.0.2:5001"))
        await client.nse_registry.register(nse("c", "vpn"))
        assert await collect(client, by_service("icmp")) == ["a", "b"]
        assert await collect(client, by_service("icmp", "vpn")) == ["b"]
        assert await collect(client, by_service("nothing")) == []
        everything = NetworkServiceEndpointQuery(network_service_endpoint=NetworkServiceEndpoint())
        assert await collect(client, everything) == ["a", "b", "c"]
        by_url = NetworkServiceEndpointQuery(
            network_service_endpoint=NetworkServiceEndpoint(url="127.0.0.2")
        )
        assert await collect(client, by_url) == ["b"]
        by_label = NetworkServiceEndpointQuery(
            network_service_endpoint=NetworkServiceEndpoint(
                network_service_labels={"icmp": NetworkServiceLabels(labels={"app": "a"})}
            )
        )
        assert await collect(client, by_label) == ["a"]


async def test_watch_sends_current_matches_then_changes(autojump_clock: object) -> None:
    async with running_registry() as (_, client), trio.open_nursery() as nursery:
        await client.nse_registry.register(nse("before", "icmp"))
        recorder = Recorder()
        await nursery.start(recorder.run, client, by_service("icmp", watch=True))
        await client.nse_registry.register(nse("other", "vpn"))  # not for this watcher
        await client.nse_registry.register(nse("after", "icmp"))
        await client.nse_registry.register(nse("before", "vpn"))  # leaves the query
        await client.nse_registry.unregister(nse("after", "icmp"))
        await recorder.wait_for("after", deleted=True)
        assert [(name, deleted) for _, name, deleted in recorder.events] == [
            ("before", False),
            ("after", False),
            ("before", True),
            ("after", True),
        ]
        nursery.cancel_scope.cancel()


async def test_unregister_tells_watchers_and_unknown_names_are_harmless(
    autojump_clock: object,
) -> None:
    async with running_registry() as (handle, client), trio.open_nursery() as nursery:
        recorder = Recorder()
        await nursery.start(recorder.run, client, by_service("icmp", watch=True))
        await client.nse_registry.register(nse("nse-1"))
        await client.nse_registry.unregister(nse("nse-1"))
        await client.nse_registry.unregister(nse("never-registered"))
        assert await recorder.wait_for("nse-1", deleted=True) == 0.0
        assert handle.registry.entries() == {}
        nursery.cancel_scope.cancel()


async def test_watch_order_under_concurrent_writes(autojump_clock: object) -> None:
    async with running_registry(expiry=2.0) as (handle, client), trio.open_nursery() as nursery:
        recorder = Recorder()
        await nursery.start(recorder.run, client, by_service("icmp", watch=True))

        async def churn(worker: int) -> None:
            for step in range(20):
                name = f"nse-{(worker + step) % 7}"
                if step % 3 == 2:
                    await client.nse_registry.unregister(nse(name))
                else:
                    await client.nse_registry.register(nse(name))
                await trio.sleep(0.1 * (worker % 3))

        async with trio.open_nursery() as writers:
            for worker in range(8):
                writers.start_soon(churn, worker)
        # Replaying the watcher's events gives exactly what the registry holds.
        expected = set(await collect(client, by_service("icmp")))
        assert expected
        await recorder.wait_view(expected)
        assert len(recorder.events) > 100
        # After the last write everything expires, and the watcher sees it all go.
        await recorder.wait_view(set())
        assert await collect(client, by_service("icmp")) == []
        assert handle.registry.entries() == {}
        nursery.cancel_scope.cancel()


async def test_a_slow_watcher_is_closed_and_others_go_on(autojump_clock: object) -> None:
    async with running_registry(watch_buffer=32) as (_, client), trio.open_nursery() as nursery:
        fast = Recorder()
        await nursery.start(fast.run, client, by_service("icmp", watch=True))
        async with client.nse_registry.find(by_service("icmp", watch=True)) as slow:
            for index in range(100):  # nobody reads `slow` meanwhile
                await client.nse_registry.register(nse(f"nse-{index}"))
            with pytest.raises(ResourceExhausted, match="fell more than 32"):
                async for _ in slow:
                    pass
        await fast.wait_for("nse-99", deleted=False)
        assert fast.error is None
        assert [name for _, name, _ in fast.events] == [f"nse-{i}" for i in range(100)]
        nursery.cancel_scope.cancel()


async def test_network_services_default_to_ip_and_never_expire(autojump_clock: object) -> None:
    async with running_registry(expiry=1.0) as (_, client):
        match = Match(source_selector={"app": "a"}, fallthrough=True)
        stored = await client.ns_registry.register(NetworkService(name="icmp", matches=[match]))
        assert stored.payload == "IP"
        await client.ns_registry.register(NetworkService(name="l2", payload="ETHERNET"))
        await trio.sleep(100.0)

        async def names(query: NetworkService) -> list[str]:
            async with client.ns_registry.find(NetworkServiceQuery(network_service=query)) as s:
                return [response.network_service.name async for response in s]

        assert await names(NetworkService()) == ["icmp", "l2"]
        assert await names(NetworkService(payload="ETHERNET")) == ["l2"]
        assert await names(NetworkService(matches=[match])) == ["icmp"]
        await client.ns_registry.unregister(NetworkService(name="icmp"))
        assert await names(NetworkService()) == ["l2"]


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (nse(""), "network_service_endpoint.name"),
        (nse("x", url=""), "network_service_endpoint.url"),
        (nse("x", url="http://example"), "network_service_endpoint.url"),
        (NetworkServiceEndpoint(name="x", url="tcp://127.0.0.1:1"), "network_service_names"),
        (
            nse(
                "x",
                network_service_labels={
                    "icmp": NetworkServiceLabels(labels={f"k{i}": "v" for i in range(65)})
                },
            ),
            "network_service_labels",
        ),
        (
            nse("x", expiration_time=datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)),
            "expiration_time",
        ),
    ],
)
async def test_bad_registrations_name_the_field_and_store_nothing(
    autojump_clock: object, entry: NetworkServiceEndpoint, field: str
) -> None:
    async with running_registry() as (handle, client):
        with pytest.raises(InvalidArgument, match=field) as caught:
            await client.nse_registry.register(entry)
        assert caught.value.hop == "registry"
        everything = NetworkServiceEndpointQuery(network_service_endpoint=NetworkServiceEndpoint())
        assert await collect(client, everything) == []
        assert handle.registry.entries() == {}
        # The registry keeps serving.
        await client.nse_registry.register(nse("good"))
        assert await collect(client, everything) == ["good"]


async def test_bad_network_services_are_refused(autojump_clock: object) -> None:
    async with running_registry() as (_, client):
        with pytest.raises(InvalidArgument, match=r"network_service\.payload"):
            await client.ns_registry.register(NetworkService(name="x", payload="MPLS"))
        with pytest.raises(InvalidArgument, match=r"network_service\.name"):
            await client.ns_registry.register(NetworkService())
        with pytest.raises(InvalidArgument, match=r"network_service_endpoint\.name"):
            await client.nse_registry.unregister(NetworkServiceEndpoint())


async def test_the_first_authenticated_registrant_owns_the_name(autojump_clock: object) -> None:
    registry = Registry(MemoryStore())

    async def spawn(entry: object) -> None:
        return None

    registry.attach(spawn)
    alice, bob = Peer("tcp://a", "spiffe://example.org/alice"), Peer("tcp://b", "spiffe://x/bob")
    stored = await registry.register_endpoint(nse("nse-1"), alice)
    assert stored.path_ids == ["spiffe://example.org/alice"]
    with pytest.raises(PermissionDenied, match=r"owned by spiffe://example\.org/alice") as caught:
        await registry.register_endpoint(nse("nse-1"), bob)
    assert caught.value.service == "nse-1"
    with pytest.raises(PermissionDenied):
        await registry.unregister_endpoint(nse("nse-1"), bob)
    with pytest.raises(PermissionDenied):
        await registry.register_endpoint(nse("nse-1"), Peer("tcp://c"))  # unauthenticated
    await registry.register_endpoint(nse("nse-1"), alice)
    await registry.unregister_endpoint(nse("nse-1"), alice)
    # Without TLS nobody is authenticated: allowed, and counted as unverified.
    await registry.register_service(NetworkService(name="icmp"), Peer("tcp://d"))
    await registry.register_service(NetworkService(name="icmp"), Peer("tcp://e"))
    assert registry.unverified == 2


async def test_entries_are_supervised_children(autojump_clock: object) -> None:
    async with running_registry(expiry=10.0) as (handle, client):
        await client.nse_registry.register(nse("nse-1"))
        await client.ns_registry.register(NetworkService(name="icmp"))
        entries = next(c for c in handle.supervisor.tree().children if c.id == "entries")
        assert entries.supervisor is not None
        assert len(entries.supervisor.children) == 2
        assert all(c.state is ChildState.RUNNING for c in entries.supervisor.children)
        # The entry supervisor restarts: stored registrations get entries again and still expire
        # at their deadline.
        await trio.sleep(4.0)
        await handle.supervisor.terminate_child("entries")
        await handle.supervisor.restart_child("entries")
        assert set(handle.registry.entries()) == {("endpoint", "nse-1"), ("service", "icmp")}
        await trio.sleep(5.9)
        assert await collect(client, by_service("icmp")) == ["nse-1"]
        await trio.sleep(0.2)
        assert await collect(client, by_service("icmp")) == []


async def test_watchers_see_unavailable_when_the_registry_stops(autojump_clock: object) -> None:
    recorder = Recorder()
    async with running_registry() as (handle, client):
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run, client, by_service("icmp", watch=True))
            await handle.supervisor.terminate_child("store")
            with trio.fail_after(1):
                await recorder.changed.wait()
        assert isinstance(recorder.error, Unavailable)


async def test_register_and_find_over_grpc() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_registry, ["tcp://127.0.0.1:0"])
            assert handle.urls[0].startswith("tcp://127.0.0.1:")
            async with open_client(handle.urls[0]) as client:
                stored = await client.nse_registry.register(nse("nse-1", "icmp", "vpn"))
                assert stored.expiration_time is not None
                assert await collect(client, by_service("vpn")) == ["nse-1"]
                with pytest.raises(InvalidArgument, match="network_service_names"):
                    await client.nse_registry.register(
                        NetworkServiceEndpoint(name="x", url="tcp://127.0.0.1:1")
                    )
                await client.nse_registry.unregister(nse("nse-1"))
                assert await collect(client, by_service("vpn")) == []
            nursery.cancel_scope.cancel()
