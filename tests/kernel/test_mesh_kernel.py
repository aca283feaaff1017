"""The KERNEL (LOCAL) mechanism end to end on one node: NSC namespace -> veth -> NSE namespace.

A ``kernel=True`` mesh runs in this process; only the interfaces live in the namespaces the tests
make (``tnsm-<random>``, removed by their exact names). Real clock; every wait is bounded.
Addresses come from 169.254.0.0/16 and fd00::/8 only.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from tests.netns import Host
from trionsm.actors._mechanisms import kernel_mechanism
from trionsm.actors.client import ClientConnection, EventKind
from trionsm.api.connection import Connection
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from trionsm.identity import JwtTokenProvider
from trionsm.kernel import ping
from trionsm.scenario import Mesh, open_mesh
from trionsm.transport import open_client

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

BOUND = 30.0
"""Seconds any step may take before the test fails (a hang guard: most take milliseconds)."""


def addresses(conn: ClientConnection, field: str) -> list[str]:
    assert conn.connection is not None
    assert conn.connection.context is not None
    ip_context = conn.connection.context.ip_context
    assert ip_context is not None
    return [address.split("/")[0] for address in getattr(ip_context, field)]


def forwarder_id(conn: ClientConnection) -> str:
    """The forwarder's connection id."""
    assert conn.connection is not None
    assert conn.connection.path is not None
    return conn.connection.path.path_segments[2].id


def wire_alias(conn: ClientConnection) -> str:
    """The wire's alias: ``trionsm:<forwarder>:<the NSC's connection id>``."""
    assert conn.connection is not None
    assert conn.connection.path is not None
    segments = conn.connection.path.path_segments
    return f"trionsm:{segments[2].name}:{segments[0].id}"


async def pings(mesh: Mesh, netns: str, targets: list[str]) -> bool:
    results = [await ping(netns, target, timeout=2.0, netlink=mesh.netlink) for target in targets]
    return all(results)


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait until ``check()`` holds (bounded by the caller), looking every 50 ms."""
    while True:
        if await check():
            return
        await trio.sleep(0.05)


def open_connections(mesh: Mesh) -> dict[str, int]:
    counts = {}
    for name in mesh.parts:
        hop = mesh.hop(name)
        if hop is not None and mesh.parts[name].running:
            counts[name] = len(hop.hub)
    return counts


async def test_kernel_connection_pings_with_routes_mtu_and_alias_and_close_removes_it(
    host: Host,
) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    async with open_mesh(kernel=True) as mesh:
        await mesh.register_service("icmp")
        cidr = ["169.254.100.0/24", "fd00::100:0/120"]
        await mesh.add_endpoint("nse-1", "icmp", cidr=cidr, netns=nse_ns)
        with trio.fail_after(BOUND):
            async with mesh.connect(
                "kernel://icmp/nsm-1", netns=client_ns, mtu=1400, name="nsc"
            ) as conn:
                assert conn.connection is not None
                mechanism = conn.connection.mechanism
                assert mechanism is not None
                assert mechanism.type == "KERNEL"
                assert mechanism.parameters["name"] == "nsm-1"
                assert mechanism.parameters["inodeURL"] == client_ns
                dst, src = addresses(conn, "dst_ip_addrs"), addresses(conn, "src_ip_addrs")
                assert dst == ["169.254.100.0", "fd00::100:0"]
                assert src == ["169.254.100.1", "fd00::100:1"]
                assert await pings(mesh, client_ns, dst)
                assert await pings(mesh, nse_ns, src)

                client_links, nse_links = await host.links(client_ns), await host.links(nse_ns)
                assert sorted(client_links) == ["lo", "nsm-1"]
                (nse_if,) = set(nse_links) - {"lo"}
                alias = wire_alias(conn)
                for link in (client_links["nsm-1"], nse_links[nse_if]):
                    assert link["ifalias"] == alias
                    assert link["mtu"] == 1400
                    assert "UP" in link["flags"]
                routes4 = await host.json(client_ns, "route", "show")
                assert {"dst": "169.254.100.0", "dev": "nsm-1", "scope": "link"}.items() <= (
                    routes4[0].items()
                )
                assert "fd00::100:0 dev nsm-1" in await host.run(client_ns, "-6", "route")
                assert "169.254.100.1 dev " + nse_if in await host.run(nse_ns, "route")
                assert open_connections(mesh) == {"nsmgr-0": 1, "forwarder-0-0": 1, "nse-1": 1}
            assert list(await host.links(client_ns)) == ["lo"]
            assert list(await host.links(nse_ns)) == ["lo"]
            await trio.testing.wait_all_tasks_blocked()
            assert open_connections(mesh) == {"nsmgr-0": 0, "forwarder-0-0": 0, "nse-1": 0}


async def test_refresh_keeps_the_wire_and_recreates_one_deleted_behind_its_back(
    host: Host,
) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    async with open_mesh(kernel=True) as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.101.0/24", netns=nse_ns)
        tokens = JwtTokenProvider("spiffe://trionsm.local/nsc/refresher", lifetime=6.0)
        with trio.fail_after(BOUND):
            async with mesh.connect(
                "kernel://icmp/nsm-1",
                netns=client_ns,
                tokens=tokens,
                request_timeout=2.0,
                liveness=False,  # the forwarder's refresh repairs it, not a heal
            ) as conn:
                index = (await host.links(client_ns))["nsm-1"]["ifindex"]
                await conn.wait_for(EventKind.REFRESHED, 2)
                assert (await host.links(client_ns))["nsm-1"]["ifindex"] == index  # untouched

                await host.run(client_ns, "link", "del", "nsm-1")
                assert not await ping(client_ns, "169.254.101.0", timeout=0.2)
                refreshes = sum(e.kind is EventKind.REFRESHED for e in conn.history)
                await conn.wait_for(EventKind.REFRESHED, refreshes + 1)
                assert await pings(mesh, client_ns, ["169.254.101.0"])
                assert sorted(await host.links(client_ns)) == ["lo", "nsm-1"]
                assert conn.heals == 0
            assert list(await host.links(client_ns)) == ["lo"]
            assert list(await host.links(nse_ns)) == ["lo"]


async def test_endpoint_death_heals_onto_another_endpoint_and_removes_the_old_wire(
    host: Host,
) -> None:
    client_ns = await host.netns()
    pods = {"nse-a": await host.netns(), "nse-b": await host.netns()}
    cidrs = {"nse-a": "169.254.102.0/24", "nse-b": "169.254.103.0/24"}
    async with open_mesh(kernel=True) as mesh:
        await mesh.register_service("icmp")
        for name, netns in pods.items():
            # strict: a client healed here keeps none of the other endpoint's addresses
            await mesh.add_endpoint(name, "icmp", cidr=cidrs[name], netns=netns, strict_ipam=True)
        with trio.fail_after(BOUND):
            async with mesh.connect("kernel://icmp/nsm-1", netns=client_ns) as conn:
                assert conn.connection is not None
                first = conn.connection.network_service_endpoint_name
                other = "nse-b" if first == "nse-a" else "nse-a"
                old_dst = addresses(conn, "dst_ip_addrs")
                assert await pings(mesh, client_ns, old_dst)

                await mesh.kill(first)  # the NSE's pod dies: its process and its namespace
                await mesh.remove_netns(pods[first])
                healed = await conn.wait_for(EventKind.HEALED)
                assert healed.connection is not None
                assert healed.connection.network_service_endpoint_name == other
                net = cidrs[other].removesuffix("0/24")
                assert addresses(conn, "dst_ip_addrs") == [net + "0"]
                assert addresses(conn, "src_ip_addrs") == [net + "1"]
                assert await pings(mesh, client_ns, [net + "0"])
                assert not await ping(client_ns, old_dst[0], timeout=0.2)
                assert sorted(await host.links(client_ns)) == ["lo", "nsm-1"]
                assert f"{net}1/32" in await host.run(client_ns, "addr", "show", "nsm-1")
                assert len(await host.links(pods[other])) == 2  # lo and the new wire's end
                alias = wire_alias(conn)
                assert (await host.links(client_ns))["nsm-1"]["ifalias"] == alias
            assert list(await host.links(client_ns)) == ["lo"]
            assert list(await host.links(pods[other])) == ["lo"]


async def test_interface_deleted_behind_the_mesh_fails_liveness_and_heals(host: Host) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    async with open_mesh(kernel=True) as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.104.0/24", netns=nse_ns)
        with trio.fail_after(BOUND):
            async with mesh.connect("kernel://icmp/nsm-1", netns=client_ns) as conn:
                await host.run(client_ns, "link", "del", "nsm-1")
                down = await conn.wait_for(EventKind.DOWN)
                assert "liveness" in down.reason
                await conn.wait_for(EventKind.HEALED)
                assert await pings(mesh, client_ns, addresses(conn, "dst_ip_addrs"))
                assert sorted(await host.links(client_ns)) == ["lo", "nsm-1"]
                assert len(await host.links(nse_ns)) == 2
            assert list(await host.links(client_ns)) == ["lo"]
            assert list(await host.links(nse_ns)) == ["lo"]


async def test_a_vanished_client_s_wire_is_removed_when_its_connection_expires(
    host: Host,
) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    async with open_mesh(kernel=True) as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.110.0/24", netns=nse_ns)
        tokens = JwtTokenProvider("spiffe://trionsm.local/nsc/vanishing", lifetime=4.0)
        with trio.fail_after(BOUND):
            async with mesh.connect(
                "kernel://icmp/nsm-1",
                netns=client_ns,
                tokens=tokens,
                request_timeout=1.0,
                close_on_exit=False,  # the client crashes: nobody closes, nobody refreshes
            ):
                assert sorted(await host.links(client_ns)) == ["lo", "nsm-1"]

            async def all_closed() -> bool:  # at its tokens' expiry (about 3 s)
                return set(open_connections(mesh).values()) == {0}

            await eventually(all_closed)
            assert list(await host.links(client_ns)) == ["lo"]
            assert list(await host.links(nse_ns)) == ["lo"]


async def test_a_restarted_forwarder_adopts_its_own_leftover_wire_on_re_request(
    host: Host,
) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    async with open_mesh(kernel=True) as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.111.0/24", netns=nse_ns)
        with trio.fail_after(BOUND):
            async with mesh.connect("kernel://icmp/nsm-1", netns=client_ns) as conn:
                alias, first_id = wire_alias(conn), forwarder_id(conn)
                index = (await host.links(client_ns))["nsm-1"]["ifindex"]
                await mesh.kill("forwarder-0-0")  # its wire stays: nobody removed it
                await mesh.restart("forwarder-0-0")
                healed = await conn.wait_for(EventKind.HEALED)
                assert "re-requested (data plane alive)" in healed.reason
                assert forwarder_id(conn) == first_id  # same path ids
                assert (await host.links(client_ns))["nsm-1"]["ifindex"] == index  # adopted
                assert await pings(mesh, client_ns, addresses(conn, "dst_ip_addrs"))
                links = await host.links(client_ns)
                assert sorted(links) == ["lo", "nsm-1"]
                assert links["nsm-1"]["ifalias"] == alias
                assert len(await host.links(nse_ns)) == 2
            assert list(await host.links(client_ns)) == ["lo"]
            assert list(await host.links(nse_ns)) == ["lo"]


async def test_connections_in_many_namespaces_are_made_concurrently(host: Host) -> None:
    nse_ns = await host.netns()
    clients = [await host.netns() for _ in range(6)]
    async with open_mesh(kernel=True) as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.105.0/24", netns=nse_ns)
        reachable: list[bool] = []

        async def client(netns: str, ready: trio.Event, done: trio.Event) -> None:
            async with mesh.connect("kernel://icmp/nsm-1", netns=netns) as conn:
                reachable.append(await pings(mesh, netns, addresses(conn, "dst_ip_addrs")))
                ready.set()
                await done.wait()

        with trio.fail_after(BOUND):
            done = trio.Event()
            async with trio.open_nursery() as nursery:
                readies = []
                for netns in clients:
                    ready = trio.Event()
                    readies.append(ready)
                    nursery.start_soon(client, netns, ready, done)
                for ready in readies:
                    await ready.wait()
                assert reachable == [True] * len(clients)
                assert len(await host.links(nse_ns)) == len(clients) + 1
                done.set()
            for netns in [*clients, nse_ns]:
                assert list(await host.links(netns)) == ["lo"]


async def test_missing_client_namespace_is_not_found_naming_it_and_leaves_nothing(
    host: Host,
) -> None:
    nse_ns = await host.netns()
    missing = "file:///run/netns/tnsm-missing-0"
    async with open_mesh(kernel=True) as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.106.0/24", netns=nse_ns)
        with trio.fail_after(BOUND), pytest.raises(NotFound) as caught:
            async with mesh.connect("kernel://icmp/nsm-1", netns=missing, request_timeout=1.0):
                pass
        assert missing in str(caught.value)
        assert "[forwarder-0-0] service 'icmp': the client's namespace" in str(caught.value)
        hop = mesh.hop("nse-1")
        assert hop is not None
        assert hop.counts.requests == 0  # refused before the endpoint was asked
        await trio.testing.wait_all_tasks_blocked()
        assert open_connections(mesh) == {"nsmgr-0": 0, "forwarder-0-0": 0, "nse-1": 0}
        assert list(await host.links(nse_ns)) == ["lo"]


async def test_failed_wire_closes_the_endpoint_connection_and_leaves_nothing(
    host: Host,
) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    await host.run(client_ns, "link", "add", "nsm-1", "type", "veth", "peer", "name", "taken")
    async with open_mesh(kernel=True) as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.107.0/24", netns=nse_ns)
        # One Request, straight to the nsmgr (a client would retry until its request_timeout).
        request = NetworkServiceRequest(
            connection=Connection(id="nsc-taken", network_service="icmp"),
            mechanism_preferences=[kernel_mechanism(client_ns, "nsm-1")],
        )
        with trio.fail_after(BOUND), pytest.raises(AlreadyExists) as caught:
            async with open_client(mesh.nsmgr_url(0)) as nsmgr:
                await nsmgr.network_service.request(request, timeout=BOUND)
        reason = str(caught.value)
        assert "[forwarder-0-0] service 'icmp': creating the wire nsm-1 in" in reason
        assert f"nsm-1 in {client_ns} is taken by an interface that trionsm did not make" in reason
        await trio.testing.wait_all_tasks_blocked()
        endpoint = mesh.hop("nse-1")
        assert endpoint is not None
        assert (endpoint.counts.requests, endpoint.counts.closes) == (1, 1)  # closed again
        assert open_connections(mesh) == {"nsmgr-0": 0, "forwarder-0-0": 0, "nse-1": 0}
        assert list(await host.links(nse_ns)) == ["lo"]
        links: dict[str, Any] = await host.links(client_ns)
        assert sorted(links) == ["lo", "nsm-1", "taken"]
        assert "ifalias" not in links["nsm-1"]  # the test's own interface, untouched


async def test_bad_input_is_refused_at_open_connection(host: Host) -> None:
    client_ns = await host.netns()
    async with open_mesh(kernel=True) as mesh:
        await mesh.register_service("icmp")
        with pytest.raises(InvalidArgument, match="17 bytes long; Linux allows at most 15"):
            async with mesh.connect("kernel://icmp/nsm-much-too-long", netns=client_ns):
                pass
        with pytest.raises(InvalidArgument, match="MTU"):
            async with mesh.connect("kernel://icmp/nsm-1", netns=client_ns, mtu=20):
                pass
        with pytest.raises(InvalidArgument, match="kernel://"):
            async with mesh.connect("noop://icmp/nsm-1", netns=client_ns):
                pass
        nsmgr = mesh.hop("nsmgr-0")
        assert nsmgr is not None
        assert nsmgr.counts.requests == 0


async def test_kernel_is_refused_by_an_endpoint_without_a_namespace(host: Host) -> None:
    client_ns = await host.netns()
    async with open_mesh(kernel=True) as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-local", "icmp", node=0, cidr="169.254.108.0/24")
        with trio.fail_after(BOUND), pytest.raises(FailedPrecondition) as caught:
            async with mesh.connect("kernel://icmp/nsm-1", netns=client_ns, request_timeout=1.0):
                pass
        assert "netns" in str(caught.value)
        assert list(await host.links(client_ns)) == ["lo"]
