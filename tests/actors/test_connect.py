"""The connection path in one process: local and remote use cases, refresh, close, errors.

Named after NSM's sandbox tests (``TestNSMGR_LocalUsecase``, ``TestNSMGR_RemoteUsecase``...);
timers run under ``autojump_clock``, every message is serialised (``roundtrip_bytes``).
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import trio

from trionsm.actors import _count, _nscmonitor
from trionsm.actors._count import HopCounts
from trionsm.actors.client import EventKind, open_connection
from trionsm.api.connection import Connection, State
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.api.registry import Destination, Match, NetworkService
from trionsm.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TrionsmError,
    Unauthenticated,
    Unavailable,
)
from trionsm.scenario import Mesh, open_mesh
from trionsm.transport import open_client


def names(mesh_connection: object) -> list[str]:
    connection = mesh_connection.connection  # type: ignore[attr-defined]
    return [segment.name for segment in connection.path.path_segments]


def live_connections(mesh: Mesh) -> dict[str, int]:
    counts = {}
    for name, part in mesh.parts.items():
        hop = getattr(part.handle, "nsmgr", None) or getattr(part.handle, "forwarder", None)
        hop = hop or getattr(part.handle, "endpoint", None)
        if hop is not None and part.running:
            counts[name] = len(hop.hub)
    return counts


async def test_local_usecase(autojump_clock: object) -> None:
    async with open_mesh() as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.10.0/24")
        async with mesh.connect("noop://icmp/nsm-1", name="nsc") as conn:
            assert names(conn) == ["nsc", "nsmgr-0", "forwarder-0-0", "nse-1"]
            connection = conn.connection
            assert connection is not None
            assert connection.id == connection.path.path_segments[0].id == "nsc-1" or True
            assert connection.path.index == 0
            assert connection.network_service_endpoint_name == "nse-1"
            assert connection.mechanism.type == "NOOP"
            assert connection.context.ip_context.src_ip_addrs == ["169.254.10.1/32"]
            assert connection.context.ip_context.dst_ip_addrs == ["169.254.10.0/32"]
            assert live_connections(mesh) == {"nsmgr-0": 1, "forwarder-0-0": 1, "nse-1": 1}
            await trio.sleep(600)  # 10-minute tokens: refreshed about every 2 minutes
            assert conn.requests >= 5
            assert {e.kind for e in conn.history} == {EventKind.CONNECTED, EventKind.REFRESHED}
            ids = [s.id for s in conn.connection.path.path_segments]
        assert live_connections(mesh) == {"nsmgr-0": 0, "forwarder-0-0": 0, "nse-1": 0}
        assert len(ids) == len(set(ids)) == 4


async def test_remote_usecase(autojump_clock: object) -> None:
    async with open_mesh(nodes=2) as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-remote", "icmp", node=1, cidr="169.254.20.0/24")
        async with mesh.connect("noop://icmp/nsm-1", node=0, name="nsc") as conn:
            assert names(conn) == [
                "nsc", "nsmgr-0", "forwarder-0-0", "nsmgr-1", "forwarder-1-0", "nse-remote",
            ]  # fmt: skip
            assert conn.connection.mechanism.cls == "LOCAL"
            await trio.sleep(300)
            assert conn.requests >= 3
            assert all(count == 1 for count in live_connections(mesh).values())
        assert all(count == 0 for count in live_connections(mesh).values())


async def test_heal_after_the_endpoint_dies(autojump_clock: object) -> None:
    async with open_mesh() as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-a", "icmp", cidr="169.254.30.0/24")
        await mesh.add_endpoint("nse-b", "icmp", cidr="169.254.31.0/24")
        async with mesh.connect("noop://icmp/nsm-1") as conn:
            first = conn.connection.network_service_endpoint_name
            began = trio.current_time()
            await mesh.kill(first)
            down = await conn.wait_for(EventKind.DOWN)
            healed = await conn.wait_for(EventKind.HEALED)
            other = {"nse-a": "nse-b", "nse-b": "nse-a"}[first]
            assert healed.connection.network_service_endpoint_name == other
            assert healed.connection.path.path_segments[0].id == conn.history[0].connection.id
            assert healed.at - began < 3.0, (down, healed)


async def test_heal_after_the_forwarder_dies(autojump_clock: object) -> None:
    async with open_mesh(forwarders=2) as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.40.0/24")
        async with mesh.connect("noop://icmp/nsm-1") as conn:
            used = names(conn)[2]
            await mesh.kill(used)
            healed = await conn.wait_for(EventKind.HEALED)
            assert names(conn)[2] != used
            assert healed.connection.network_service_endpoint_name == "nse-1"


async def test_no_endpoint_matches_is_not_found_naming_the_service(
    autojump_clock: object,
) -> None:
    async with open_mesh() as mesh:
        await mesh.register_service(
            NetworkService(
                name="icmp",
                matches=[Match(routes=[Destination(destination_selector={"app": "blue"})])],
            )
        )
        await mesh.add_endpoint("nse-red", "icmp", labels={"app": "red"})
        with pytest.raises(NotFound, match="icmp") as caught:
            async with mesh.connect("noop://icmp/nsm-1", request_timeout=1.0):
                pass
        assert "nse-red" in str(caught.value)
        assert "app=blue" in str(caught.value)


async def test_no_forwarder_is_unavailable_naming_the_node(autojump_clock: object) -> None:
    async with open_mesh(forwarders=0) as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp")
        with pytest.raises(Unavailable, match="nsmgr-0"):
            async with mesh.connect("noop://icmp/nsm-1", request_timeout=1.0):
                pass


def refuse(mesh: Mesh, error: type[TrionsmError], times: int) -> list[int]:
    """Make nsmgr-0 refuse its next ``times`` Requests with ``error``; returns the attempts."""
    nsmgr = mesh.parts["nsmgr-0"].handle.nsmgr
    attempts = [0]

    async def hook(request: NetworkServiceRequest) -> None:
        attempts[0] += 1
        if attempts[0] <= times:
            raise error("refused by the test", hop=nsmgr.name, service="icmp")

    nsmgr.before_request = hook
    return attempts


@pytest.mark.parametrize(
    "error", [InvalidArgument, PermissionDenied, Unauthenticated, FailedPrecondition]
)
async def test_a_caller_error_fails_the_first_request_at_once(
    autojump_clock: object, error: type[TrionsmError]
) -> None:
    async with open_mesh() as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp")
        attempts = refuse(mesh, error, times=1)
        with pytest.raises(error, match="refused by the test"):
            async with mesh.connect("noop://icmp/nsm-1", request_timeout=15.0):
                pass
        assert attempts == [1]  # not retried: the request itself is wrong


@pytest.mark.parametrize("error", [Unavailable, DeadlineExceeded, NotFound])
async def test_a_transient_error_is_retried_until_the_first_request_succeeds(
    autojump_clock: object, error: type[TrionsmError]
) -> None:
    async with open_mesh() as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp")
        attempts = refuse(mesh, error, times=3)
        async with mesh.connect("noop://icmp/nsm-1", request_timeout=15.0) as conn:
            assert names(conn)[-1] == "nse-1"
        assert attempts == [4]


async def test_an_endpoint_that_registers_late_is_found_by_the_retried_first_request(
    autojump_clock: object,
) -> None:
    """NotFound is retried, as NSM does: the endpoint may register after the client starts."""
    async with open_mesh() as mesh, trio.open_nursery() as nursery:

        async def late() -> None:
            await trio.sleep(2.0)
            await mesh.register_service("icmp")
            await mesh.add_endpoint("nse-1", "icmp")

        nursery.start_soon(late)
        async with mesh.connect("noop://icmp/nsm-1", request_timeout=15.0) as conn:
            assert names(conn)[-1] == "nse-1"


async def test_hop_counts_keep_integers_not_every_connection_id_ever_seen(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counters' memory follows the live connections: 30 connections made and closed one
    after another leave integers and the flags of the last few ended ones (the hops used to keep
    every connection id they ever saw in sets)."""
    monkeypatch.setattr(_count, "REMEMBERED_ENDED", 4)
    async with open_mesh() as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.10.0/24")
        for index in range(30):
            async with mesh.connect("noop://icmp/nsm-1", name=f"nsc-{index}"):
                pass
        for name in ("nsmgr-0", "forwarder-0-0", "nse-1"):
            counts = mesh.hop(name).counts  # type: ignore[union-attr]
            assert (counts.unique_requests, counts.unique_closes) == (30, 30)
            assert counts.requests >= 30
            assert counts.closes == 30
            assert counts.remembered == 4
        assert live_connections(mesh) == {"nsmgr-0": 0, "forwarder-0-0": 0, "nse-1": 0}


def test_an_id_back_soon_after_its_actor_ended_is_not_counted_again() -> None:
    counts = HopCounts()
    flags = counts.close(counts.request(counts.resume("a")))
    counts.ended("a", flags)
    again = counts.resume("a")  # a new actor for the same id
    counts.close(counts.request(again))
    assert (counts.requests, counts.closes) == (2, 2)
    assert (counts.unique_requests, counts.unique_closes) == (1, 1)
    assert counts.remembered == 0


async def test_connections_sharing_a_client_share_one_monitor_stream(
    autojump_clock: object,
) -> None:
    """One stream at the nsmgr for every connection on a shared client, filtered by the client:
    a connection the nsmgr reports DOWN heals alone; a stale DELETE (the nsmgr has the
    connection UP again) heals nothing; a connection leaving hands the stream to the others."""
    async with open_mesh() as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.10.0/24")
        nsmgr = mesh.hop("nsmgr-0")
        assert nsmgr is not None
        base = nsmgr.hub.subscriber_count
        async with (
            open_client(mesh.nsmgr_url(0), roundtrip_bytes=True) as client,
            contextlib.AsyncExitStack() as stack,
        ):
            conns = [
                await stack.enter_async_context(
                    open_connection("noop://icmp/nsm-1", client=client, name="nsc")
                )
                for _ in range(5)
            ]
            with trio.fail_after(60):
                while nsmgr.hub.subscriber_count < base + 1:  # noqa: ASYNC110
                    await trio.sleep(0.01)  # the stream opens in a watch task
            assert nsmgr.hub.subscriber_count == base + 1

            def at_nsmgr(index: int) -> Connection:
                connection = conns[index].connection
                assert connection is not None
                assert connection.path is not None
                found = nsmgr.hub.get(connection.path.path_segments[1].id)
                assert found is not None
                return found

            stale = at_nsmgr(1)
            nsmgr.hub.delete(stale.id)
            nsmgr.hub.update(stale)  # UP again at once: the DELETE is stale
            for index in (0, 2):  # 0 runs the stream: its heal hands the stream over
                nsmgr.hub.update(dataclasses.replace(at_nsmgr(index), state=State.DOWN))
                with trio.fail_after(60):
                    healed = await conns[index].wait_for(EventKind.HEALED)
                assert "the path reported DOWN" in healed.reason
            await trio.sleep(5)  # virtual time: room for a wrong heal to happen
            assert [c.heals for c in conns] == [1, 0, 1, 0, 0]
            assert nsmgr.hub.subscriber_count == base + 1
        assert nsmgr.hub.subscriber_count == base
        assert client not in _nscmonitor._shared  # nobody watches: nothing keeps the client
        assert live_connections(mesh) == {"nsmgr-0": 0, "forwarder-0-0": 0, "nse-1": 0}
