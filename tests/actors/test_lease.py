"""LeaseActor against a real registry: register, refresh, heal after a restart, unregister.

Timer behaviour runs under ``autojump_clock`` over ``inproc://`` with every message serialised
(``roundtrip_bytes=True``); one test runs over a real gRPC socket with the real clock, every wait
bounded by ``fail_after``. Sleeps only script a scenario (when the registry dies, how long it stays
down); conditions are always waited for on events.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from itertools import count
from typing import Any

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from trionsm.actors import Lease, lease_spec, serve_lease, serve_service_lease
from trionsm.actors.registry import RegistryHandle, serve_registry
from trionsm.api.registry import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceQuery,
)
from trionsm.clock import current_clock
from trionsm.errors import DeadlineExceeded, InvalidArgument, PermissionDenied, Unavailable
from trionsm.supervision import Restart, open_supervisor
from trionsm.transport import Client, InprocServer, open_client

HANG = 10  # seconds of mock time: a hang catcher
_names = count()


def nse(name: str = "nse-1", **extra: Any) -> NetworkServiceEndpoint:
    fields: dict[str, Any] = {"network_service_names": ["icmp"], "url": "tcp://127.0.0.1:5001"}
    return NetworkServiceEndpoint(name=name, **(fields | extra))


def by_name(name: str, *, watch: bool) -> NetworkServiceEndpointQuery:
    return NetworkServiceEndpointQuery(
        network_service_endpoint=NetworkServiceEndpoint(name=name), watch=watch
    )


async def names(client: Client, name: str) -> list[str]:
    async with client.nse_registry.find(by_name(name, watch=False)) as stream:
        return [r.network_service_endpoint.name async for r in stream]


class RegistryProcess:
    """A registry on one URL that a test can kill and start again (with an empty memory store)."""

    def __init__(self, nursery: trio.Nursery, url: str, expiry: float) -> None:
        self.nursery, self.url, self.expiry = nursery, url, expiry
        self.handle: RegistryHandle | None = None
        self._scope = trio.CancelScope()
        self._done = trio.Event()

    async def start(self) -> RegistryHandle:
        self._scope, self._done = trio.CancelScope(), trio.Event()
        self.handle = await self.nursery.start(self._run)
        return self.handle

    async def _run(self, task_status: trio.TaskStatus[RegistryHandle]) -> None:
        try:
            with self._scope:
                await serve_registry(
                    self.url, expiry=self.expiry, roundtrip_bytes=True, task_status=task_status
                )
        finally:
            self._done.set()

    async def kill(self) -> None:
        self._scope.cancel()
        await self._done.wait()
        self.handle = None

    def server(self) -> InprocServer:
        """The listener's inproc server (for its fault hooks)."""
        assert self.handle is not None
        for child in self.handle.supervisor.which_children():
            if child.id == f"listen:{self.url}":
                server: InprocServer = child.value
                return server
        raise AssertionError("no listener")


@asynccontextmanager
async def registry(expiry: float = 60.0) -> AsyncIterator[tuple[RegistryProcess, Client]]:
    url = f"inproc://lease-registry-{next(_names)}"
    async with trio.open_nursery() as nursery:
        process = RegistryProcess(nursery, url, expiry)
        await process.start()
        async with open_client(url, roundtrip_bytes=True) as client:
            yield process, client
        nursery.cancel_scope.cancel()


class Recorder:
    """A Find(watch=true) on one name in the background, recording (time, deleted)."""

    def __init__(self) -> None:
        self.events: list[tuple[float, bool]] = []
        self.changed = trio.Event()
        self.error: Exception | None = None

    async def run(self, client: Client, name: str, *, task_status: trio.TaskStatus[None]) -> None:
        async with client.nse_registry.find(by_name(name, watch=True)) as stream:
            task_status.started()
            try:
                async for response in stream:
                    self.events.append((trio.current_time(), response.deleted))
                    self.changed.set()
                    self.changed = trio.Event()
            except Unavailable as exc:
                self.error = exc
                self.changed.set()

    async def wait_events(self, count: int) -> None:
        while len(self.events) < count:
            await self.changed.wait()

    async def wait_deleted(self) -> float:
        while True:
            for when, deleted in self.events:
                if deleted:
                    return when
            await self.changed.wait()

    @property
    def deletions(self) -> int:
        return sum(deleted for _, deleted in self.events)


async def record_times(lease: Lease[Any], times: list[float]) -> None:
    async for _ in lease.updates():
        times.append(trio.current_time())


async def start_lease(
    nursery: trio.Nursery, url: str, entry: NetworkServiceEndpoint | None = None, **options: Any
) -> Lease[NetworkServiceEndpoint]:
    start = partial(serve_lease, url, entry or nse(), roundtrip_bytes=True, **options)
    lease: Lease[NetworkServiceEndpoint] = await nursery.start(start)
    return lease


async def test_reports_the_lease_after_the_first_register(autojump_clock: object) -> None:
    async with registry(expiry=60.0) as (process, client), trio.open_nursery() as nursery:
        await trio.sleep(1.0)
        lease = await start_lease(nursery, process.url)
        clock = current_clock()
        assert (lease.kind, lease.name, lease.registry_url) == ("endpoint", "nse-1", process.url)
        assert lease.registrations == 1
        assert lease.registered_at == pytest.approx(1.0)
        assert lease.current.expiration_time == clock.timestamp(61.0)
        assert lease.expires_at == pytest.approx(61.0, abs=1e-3)
        assert lease.refresh_at == pytest.approx(1.0 + 40.0, abs=1e-3)  # 2/3 of 60 s
        assert lease.alive
        assert await names(client, "nse-1") == ["nse-1"]
        nursery.cancel_scope.cancel()


async def test_refresh_at_two_thirds_keeps_it_alive_for_many_periods(
    autojump_clock: object,
) -> None:
    async with registry(expiry=3.0) as (process, client), trio.open_nursery() as nursery:
        recorder = Recorder()
        await nursery.start(recorder.run, client, "nse-1")
        lease = await start_lease(nursery, process.url)
        times: list[float] = []
        nursery.start_soon(record_times, lease, times)
        with trio.fail_after(30 + HANG):
            await lease.wait_registrations(16)  # 30 s of refreshes every 2 s
        await wait_all_tasks_blocked()  # let record_times note the last one
        assert times == pytest.approx([2.0 * n for n in range(1, 16)], abs=1e-3)
        assert trio.current_time() == pytest.approx(30.0, abs=1e-3)
        assert recorder.deletions == 0
        assert lease.watch_breaks == 0
        assert await names(client, "nse-1") == ["nse-1"]
        nursery.cancel_scope.cancel()


async def test_requested_expiry_sets_the_refresh_period(autojump_clock: object) -> None:
    async with registry(expiry=60.0) as (process, _), trio.open_nursery() as nursery:
        lease = await start_lease(nursery, process.url, expiry=1.5)
        assert lease.current.expiration_time == current_clock().timestamp(1.5)
        times: list[float] = []
        nursery.start_soon(record_times, lease, times)
        with trio.fail_after(HANG):
            await lease.wait_registrations(4)
        await wait_all_tasks_blocked()
        assert times == pytest.approx([1.0, 2.0, 3.0], abs=1e-3)
        nursery.cancel_scope.cancel()


async def test_failed_refresh_is_retried_every_retry_interval(autojump_clock: object) -> None:
    async with registry(expiry=3.0) as (process, client), trio.open_nursery() as nursery:
        recorder = Recorder()
        await nursery.start(recorder.run, client, "nse-1")
        lease = await start_lease(nursery, process.url)
        await trio.sleep(1.9)
        process.server().faults.fail_next(3, Unavailable("injected", hop="test"))
        with trio.fail_after(HANG):
            await lease.wait_registrations(2)
        # Refresh at 2.0 and retries at 2.2 and 2.4 fail; 2.6 succeeds, before the 3.0 expiry.
        assert lease.registered_at == pytest.approx(2.6, abs=1e-3)
        assert isinstance(lease.last_error, Unavailable)
        assert lease.refresh_at == pytest.approx(2.6 + 2.0, abs=1e-3)
        assert recorder.deletions == 0
        nursery.cancel_scope.cancel()


async def test_registry_restart_is_healed_at_once_through_the_watch(
    autojump_clock: object,
) -> None:
    async with registry(expiry=30.0) as (process, _), trio.open_nursery() as nursery:
        lease = await start_lease(nursery, process.url)
        await trio.sleep(1.0)
        await process.kill()
        await trio.sleep(5.0)
        assert lease.watch_breaks == 1
        assert lease.registrations == 1
        await process.start()  # an empty memory store
        restarted = trio.current_time()
        with trio.fail_after(HANG):
            await lease.wait_registrations(2)
        # Long before the refresh due at 20 s: the broken watch made it retry, backoff <= 1 s.
        assert lease.registered_at - restarted <= 1.0
        assert lease.refresh_at == pytest.approx(lease.registered_at + 20.0, abs=1e-3)
        async with open_client(process.url, roundtrip_bytes=True) as client:
            assert await names(client, "nse-1") == ["nse-1"]
            # The watch was reopened on the new registry: a deletion is noticed at once.
            await trio.sleep(1.0)
            await client.nse_registry.unregister(nse())
            removed = trio.current_time()
            with trio.fail_after(HANG):
                await lease.wait_registrations(3)
            assert lease.registered_at == pytest.approx(removed, abs=1e-3)
        nursery.cancel_scope.cancel()


async def test_registry_down_longer_than_a_registration_lives(autojump_clock: object) -> None:
    async with registry(expiry=3.0) as (process, _), trio.open_nursery() as nursery:
        lease = await start_lease(nursery, process.url)
        await trio.sleep(1.0)
        await process.kill()
        await trio.sleep(10.0)
        assert not lease.alive
        assert lease.registrations == 1
        await process.start()
        restarted = trio.current_time()
        with trio.fail_after(HANG):
            await lease.wait_registrations(2)
        assert lease.registered_at - restarted <= 1.0
        await trio.sleep(9.0)  # refreshed every 2 s on the new registry
        assert lease.registrations == 2 + 4
        async with open_client(process.url, roundtrip_bytes=True) as client:
            assert await names(client, "nse-1") == ["nse-1"]
        nursery.cancel_scope.cancel()


async def test_deleted_behind_its_back_is_registered_again(autojump_clock: object) -> None:
    async with registry(expiry=60.0) as (process, client), trio.open_nursery() as nursery:
        lease = await start_lease(nursery, process.url)
        recorder = Recorder()
        await nursery.start(recorder.run, client, "nse-1")
        await trio.sleep(5.0)
        await client.nse_registry.unregister(nse())
        with trio.fail_after(HANG):
            current = await lease.wait_registrations(2)
        assert lease.registered_at == pytest.approx(5.0, abs=1e-3)
        assert lease.watch_breaks == 1
        assert current.expiration_time == current_clock().timestamp(65.0)
        assert [deleted for _, deleted in recorder.events] == [False, True, False]
        assert await names(client, "nse-1") == ["nse-1"]
        nursery.cancel_scope.cancel()


async def test_a_refused_register_is_a_start_error(autojump_clock: object) -> None:
    async with registry() as (process, client), trio.open_nursery() as nursery:
        with pytest.raises(InvalidArgument, match="network_service_names") as info:
            await start_lease(nursery, process.url, nse(network_service_names=[]))
        assert info.value.hop == "registry"
        assert trio.current_time() == 0.0  # refused at once, never retried
        assert await names(client, "nse-1") == []


async def test_start_waits_for_the_registry_to_come_up(autojump_clock: object) -> None:
    url = f"inproc://lease-late-{next(_names)}"
    async with trio.open_nursery() as nursery:
        process = RegistryProcess(nursery, url, expiry=60.0)

        async def start_later() -> None:
            await trio.sleep(3.0)
            await process.start()

        nursery.start_soon(start_later)
        lease = await start_lease(nursery, url)
        assert 3.0 <= lease.registered_at <= 4.0
        assert isinstance(lease.last_error, Unavailable)
        nursery.cancel_scope.cancel()


async def test_start_gives_up_after_start_timeout(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        with pytest.raises(DeadlineExceeded, match="not registered within 2s") as info:
            await start_lease(nursery, "inproc://nobody-serves-this", start_timeout=2.0)
        assert info.value.service == "nse-1"
        assert isinstance(info.value.__cause__, Unavailable)
        assert trio.current_time() == pytest.approx(2.0)


async def test_shutdown_unregisters(autojump_clock: object) -> None:
    async with registry(expiry=60.0) as (process, client), trio.open_nursery() as nursery:
        recorder = Recorder()
        await nursery.start(recorder.run, client, "nse-1")
        spec = lease_spec(process.url, nse(), roundtrip_bytes=True)
        assert (spec.id, spec.restart) == ("lease:nse-1", Restart.TRANSIENT)
        async with open_supervisor([spec]) as supervisor:
            lease = supervisor.which_children()[0].value
            assert isinstance(lease, Lease)
            await trio.sleep(7.0)
        assert await recorder.wait_deleted() == pytest.approx(7.0, abs=1e-3)
        assert not lease.alive
        assert await names(client, "nse-1") == []
        nursery.cancel_scope.cancel()


async def test_a_refused_refresh_crashes_and_the_supervisor_restarts_it(
    autojump_clock: object,
) -> None:
    async with registry(expiry=3.0) as (process, client), trio.open_nursery() as nursery:
        recorder = Recorder()
        await nursery.start(recorder.run, client, "nse-1")
        spec = lease_spec(process.url, nse(), roundtrip_bytes=True)
        async with open_supervisor([spec], intensity=3) as supervisor:
            first = supervisor.which_children()[0].value
            await trio.sleep(1.9)
            process.server().faults.fail_next(1, PermissionDenied("injected", hop="test"))
            with trio.fail_after(HANG):
                await recorder.wait_events(2)  # the restarted lease registered again
            child = supervisor.which_children()[0]
            assert child.restarts == 1
            second = child.value
            assert second is not first
            assert second.registered_at == pytest.approx(2.0, abs=1e-3)
            assert first.registrations == 1  # the refused refresh did not count
        assert recorder.deletions == 1  # only the final Unregister: the crash did not unregister
        nursery.cancel_scope.cancel()


async def test_service_lease_re_registers_and_stays_on_shutdown(autojump_clock: object) -> None:
    async with registry() as (process, client):
        async with trio.open_nursery() as nursery:
            start = partial(
                serve_service_lease, process.url, NetworkService(name="icmp"), roundtrip_bytes=True
            )
            lease: Lease[NetworkService] = await nursery.start(start)
            assert lease.kind == "service"
            assert lease.current.payload == "IP"
            assert (lease.expires_at, lease.refresh_at) == (math.inf, math.inf)
            await trio.sleep(100.0)
            assert lease.registrations == 1  # services never expire: nothing to refresh
            await client.ns_registry.unregister(NetworkService(name="icmp"))
            with trio.fail_after(HANG):
                await lease.wait_registrations(2)
            assert lease.registered_at == pytest.approx(100.0, abs=1e-3)
            nursery.cancel_scope.cancel()
        query = NetworkServiceQuery(network_service=NetworkService(name="icmp"))
        async with client.ns_registry.find(query) as stream:
            assert [r.network_service.name async for r in stream] == ["icmp"]


async def test_lease_over_grpc_with_the_real_clock() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(partial(serve_registry, ["tcp://127.0.0.1:0"], expiry=1.5))
            url = handle.urls[0]
            async with open_client(url) as client:
                recorder = Recorder()
                await nursery.start(recorder.run, client, "nse-1")
                async with trio.open_nursery() as leases:
                    lease: Lease[NetworkServiceEndpoint] = await leases.start(
                        serve_lease, url, nse()
                    )
                    await lease.wait_registrations(3)  # two refreshes, about 1 s apart
                    assert recorder.deletions == 0
                    leases.cancel_scope.cancel()
                await recorder.wait_deleted()
                assert await names(client, "nse-1") == []
            nursery.cancel_scope.cancel()
