"""Reconcile on real namespaces: find a forwarder's interfaces, adopt a wire exactly as it is,
remove exactly, and a restarted forwarder inside a mesh that adopts without a flap.

Real clock; every wait is bounded by a generous hang guard. Addresses come from 169.254.0.0/16
and fd00::/8 only, in namespaces the tests made (removed by their exact names). Forwarders get
names of their own (``fwd-<random>``): the reconcile scan looks at every namespace of the host,
and it must only ever meet this test's interfaces.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import attrs
import pytest
import trio

from tests.netns import Host
from trionsm.actors._dataplane import DataPlane, VxlanSpec, WireSpec
from trionsm.actors._mechanisms import kernel_mechanism, vxlan_mechanism
from trionsm.actors.client import ClientConnection, EventKind
from trionsm.api.connectioncontext import ConnectionContext, IpContext, PolicyRoute, Route
from trionsm.api.registry import Match, Metadata, NetworkService
from trionsm.errors import AlreadyExists
from trionsm.identity import JwtTokenProvider
from trionsm.kernel import (
    KernelWire,
    Netlink,
    VxlanEnd,
    VxlanPlan,
    create_kernel_wire,
    create_vxlan_end,
    inspect_vxlan_end,
    inspect_wire,
    ping,
    plan_vxlan_end,
    plan_wire,
    remove_interfaces,
    scan_namespaces,
)
from trionsm.scenario import Mesh, open_mesh

from .conftest import pair_context
from .test_vxlan import LOCAL, REMOTE, Tunnel, tunnel

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

BOUND = 30.0
"""Seconds any step may take before the test fails (a hang guard: most take milliseconds)."""


def owner_name() -> str:
    return f"fwd-{secrets.token_hex(3)}"


async def made(
    netlink: Netlink,
    owner: str,
    connection_id: str,
    client_ns: str,
    nse_ns: str,
    context: IpContext,
    *,
    ifname: str = "nsm-1",
    mtu: int = 0,
) -> KernelWire:
    """A wire ``owner`` made for ``connection_id`` (the endpoint's end named after it)."""
    return await create_kernel_wire(
        connection_id,
        client_ns,
        ifname,
        nse_ns,
        "",
        mtu=mtu,
        ip_context=context,
        owner=owner,
        netlink=netlink,
    )


def policy_context(pair: Callable[..., IpContext], i: int) -> IpContext:
    context = pair(i)
    context.src_routes.append(Route(prefix=f"169.254.{i + 100}.0/24"))
    context.policies = [
        PolicyRoute(
            from_=f"169.254.{i}.1/32",
            proto="tcp",
            dst_port="80-90",
            routes=[Route(prefix=f"169.254.{i + 150}.0/24")],
        )
    ]
    return context


async def test_a_made_wire_is_found_by_its_owner_and_inspects_as_exactly_its_plan(
    host: Host, netlink: Netlink, pair: Callable[..., IpContext]
) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    owner, other = owner_name(), owner_name()
    context = policy_context(pair, 40)
    with trio.fail_after(BOUND):
        wire = await made(netlink, owner, "nsc-1", client_ns, nse_ns, context, mtu=1400)
        await made(netlink, other, "nsc-2", client_ns, nse_ns, pair(41), ifname="nsm-2")
        plan = plan_wire("nsc-1", "nsm-1", "", mtu=1400, ip_context=context, hop=None, owner=owner)
        seen = await inspect_wire(plan, client_ns, nse_ns, netlink=netlink)
        assert seen.difference == ""
        assert seen.wire == wire  # same interfaces, same indexes

        found = await scan_namespaces(owner, netlink=netlink)  # every namespace of the host
        assert {(f.namespace.url, f.ifname, f.index) for f in found} == {
            (end.namespace.url, end.ifname, end.index) for end in wire.ends
        }
        assert {str(f.parsed) for f in found} == {f"trionsm:{owner}:nsc-1"}
        limited = await scan_namespaces(other, namespaces=[nse_ns], netlink=netlink)
        assert [f.alias for f in limited] == [f"trionsm:{other}:nsc-2"]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"mtu": 1300}, "has MTU 1400, not 1300"),
        ({"owner": "someone-else"}, "does not carry trionsm:someone-else:nsc-1"),
        ({"ip_context": "other addresses"}, "has addresses"),
        ({"ip_context": "no routes"}, "has routes"),
        ({"ip_context": "no policy"}, "other policy routes than planned"),
    ],
)
async def test_a_wire_that_differs_from_the_plan_says_how(
    host: Host,
    netlink: Netlink,
    pair: Callable[..., IpContext],
    change: dict[str, object],
    why: str,
) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    owner = owner_name()
    context = policy_context(pair, 42)
    with trio.fail_after(BOUND):
        await made(netlink, owner, "nsc-1", client_ns, nse_ns, context, mtu=1400)
        wanted = {"mtu": 1400, "ip_context": context, "owner": owner, **change}
        if change.get("ip_context") == "other addresses":
            wanted["ip_context"] = pair(43)
        elif change.get("ip_context") == "no routes":
            wanted["ip_context"] = IpContext(
                src_ip_addrs=context.src_ip_addrs,
                dst_ip_addrs=context.dst_ip_addrs,
                policies=context.policies,
            )
        elif change.get("ip_context") == "no policy":
            wanted["ip_context"] = pair(42)
            wanted["ip_context"].src_routes.append(Route(prefix="169.254.142.0/24"))
        plan = plan_wire("nsc-1", "nsm-1", "", hop=None, **wanted)  # type: ignore[arg-type]
        seen = await inspect_wire(plan, client_ns, nse_ns, netlink=netlink)
        assert seen.wire is None
        assert why in seen.difference
        assert seen.client is not None
        assert seen.endpoint is not None


async def test_exact_removal_needs_the_namespace_the_index_and_the_alias(
    host: Host, netlink: Netlink, pair: Callable[..., IpContext]
) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    owner = owner_name()
    with trio.fail_after(BOUND):
        old = await made(netlink, owner, "nsc-1", client_ns, nse_ns, pair(44))
        alias = f"trionsm:{owner}:nsc-1"
        ends = [(end.namespace, end.index, alias) for end in old.ends]
        assert await remove_interfaces(ends, netlink=netlink) == 1  # the peer went along
        assert sorted(await host.links(client_ns)) == ["lo"]
        # The same name, the same alias, made again: the old record does not remove it.
        new = await made(netlink, owner, "nsc-1", client_ns, nse_ns, pair(44))
        assert new.client.index != old.client.index
        assert await remove_interfaces(ends, netlink=netlink) == 0
        wrong = [(end.namespace, end.index, "trionsm:other:nsc-1") for end in new.ends]
        assert await remove_interfaces(wrong, netlink=netlink) == 0
        assert (await host.links(client_ns))["nsm-1"]["ifindex"] == new.client.index
        empty = await host.netns()
        plan = plan_wire("nsc-1", "nsm-1", "", mtu=0, ip_context=pair(44), hop=None, owner=owner)
        seen = await inspect_wire(plan, client_ns, empty, netlink=netlink)
        assert seen.difference == "the endpoint end is missing"
        assert seen.client is not None
        assert seen.client.index == new.client.index


# --- a forwarder that restarts, dies, or stops, inside a kernel mesh -----------------------------

GRACE = 3.0
"""The tests' reconcile grace: long enough for every client's heal, short enough to wait out."""


def forwarder_of(conn: ClientConnection) -> str:
    assert conn.connection is not None
    assert conn.connection.path is not None
    return conn.connection.path.path_segments[2].name


def client_alias(conn: ClientConnection) -> str:
    """``trionsm:<forwarder>:<NSC connection id>``: what the client's wire carries."""
    assert conn.connection is not None
    assert conn.connection.path is not None
    return f"trionsm:{forwarder_of(conn)}:{conn.connection.path.path_segments[0].id}"


def destination(conn: ClientConnection) -> str:
    assert conn.connection is not None
    assert conn.connection.context is not None
    assert conn.connection.context.ip_context is not None
    return conn.connection.context.ip_context.dst_ip_addrs[0].split("/")[0]


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait until ``check()`` holds (bounded by the caller), looking every 50 ms."""
    while True:
        if await check():
            return
        await trio.sleep(0.05)


@attrs.define
class Pinger:
    """Pings through a wire from the client's namespace until stopped, counting the answers."""

    mesh: Mesh
    netns: str
    target: str
    answered: int = 0
    lost: int = 0

    async def run(self, stop: trio.Event) -> None:
        while not stop.is_set():
            ok = await ping(self.netns, self.target, timeout=1.0, netlink=self.mesh.netlink)
            self.answered += ok
            self.lost += not ok
            await trio.sleep(0.02)  # pacing, not waiting: about 40 echoes a second per wire


async def reconciled(mesh: Mesh, forwarder: str) -> None:
    """Wait until ``forwarder``'s reconcile grace is over and its sweep has run."""

    async def done() -> bool:
        reconciler = mesh[forwarder].forwarder.reconciler
        return bool(reconciler is not None and reconciler.finished)

    await eventually(done)


async def test_a_restarted_forwarder_adopts_live_wires_without_a_flap_and_removes_the_rest(
    host: Host,
) -> None:
    nse_ns, stray_ns = await host.netns(), await host.netns()
    clients = [await host.netns() for _ in range(3)]
    fwd = owner_name()
    async with open_mesh(kernel=True, forwarders=0) as mesh:
        assert mesh.netlink is not None
        await mesh.add_forwarder(fwd, node=0, reconcile_grace=GRACE)
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.120.0/24", netns=nse_ns)
        with trio.fail_after(BOUND):
            async with AsyncExitStack() as stack:
                conns = [
                    await stack.enter_async_context(
                        mesh.connect("kernel://icmp/nsm-1", netns=netns)
                    )
                    for netns in clients
                ]
                await reconciled(mesh, fwd)  # the first start's grace: nothing to remove
                # A wire its client will never claim again (the client is gone).
                stray = await create_kernel_wire(
                    "nsc-gone", stray_ns, "nsm-1", nse_ns, "", owner=fwd, netlink=mesh.netlink
                )
                before = {netns: await host.links(netns) for netns in [*clients, nse_ns]}
                assert len(before[nse_ns]) == 1 + 3 + 1

                by_netns = dict(zip(clients, conns, strict=True))
                pingers = await restart_while_pinging(mesh, by_netns, fwd)
                assert [p.lost for p in pingers] == [0, 0, 0]
                assert all(p.answered > 3 for p in pingers)

                await reconciled(mesh, fwd)
                for netns in clients:  # the very same interfaces
                    assert ifindexes(await host.links(netns)) == ifindexes(before[netns])
                nse_links = await host.links(nse_ns)
                assert stray.endpoint.ifname not in nse_links  # unclaimed: removed after the grace
                assert sorted(await host.links(stray_ns)) == ["lo"]
                del before[nse_ns][stray.endpoint.ifname]
                assert ifindexes(nse_links) == ifindexes(before[nse_ns])
                for netns, conn in zip(clients, conns, strict=True):
                    assert (await host.links(netns))["nsm-1"]["ifalias"] == client_alias(conn)
                    assert await ping(netns, destination(conn), timeout=2.0, netlink=mesh.netlink)


@pytest.mark.parametrize("mid_scan", [False, True])
async def test_a_reconcile_restarted_after_its_sweep_keeps_the_live_wires_and_removes_a_stray(
    host: Host, mid_scan: bool
) -> None:
    # The lease crashes after the first sweep: REST_FOR_ONE starts reconcile again (a new scan),
    # which may crash itself mid-scan and start once more. The clients do not re-request within
    # the grace (hour-long tokens): the wires their live connections hold must stay as they
    # are; only what no connection holds goes.
    nse_ns, stray_ns, client_ns = await host.netns(), await host.netns(), await host.netns()
    fwd = owner_name()
    async with open_mesh(kernel=True, forwarders=0) as mesh:
        await mesh.add_forwarder(fwd, node=0, reconcile_grace=GRACE)
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.124.0/24", netns=nse_ns)
        tokens = JwtTokenProvider("spiffe://trionsm.local/nsc/long", lifetime=3600.0)
        with trio.fail_after(BOUND):
            async with mesh.connect("kernel://icmp/nsm-1", netns=client_ns, tokens=tokens) as conn:
                await reconciled(mesh, fwd)  # the first sweep: nothing to remove
                before = {netns: await host.links(netns) for netns in (client_ns, nse_ns)}
                stray = await create_kernel_wire(
                    "nsc-gone", stray_ns, "nsm-1", nse_ns, "", owner=fwd, netlink=mesh.netlink
                )
                handle = mesh[fwd]
                await handle.supervisor.crash_child("lease")
                reconciler = handle.forwarder.reconciler
                assert reconciler is not None
                assert not reconciler.finished  # restarted with the lease: a new scan
                if mid_scan:

                    async def scanned() -> bool:
                        return reconciler.scanned

                    await eventually(scanned)
                    await handle.supervisor.crash_child("reconcile")
                    assert not reconciler.scanned  # a scan begun again
                await reconciled(mesh, fwd)
                assert sorted(await host.links(stray_ns)) == ["lo"]  # the stray went
                assert stray.endpoint.ifname not in await host.links(nse_ns)
                for netns in (client_ns, nse_ns):  # the live wire is the very same
                    assert ifindexes(await host.links(netns)) == ifindexes(before[netns])
                assert await ping(client_ns, destination(conn), timeout=2.0, netlink=mesh.netlink)
                assert conn.heals == 0


async def restart_while_pinging(
    mesh: Mesh, clients: dict[str, ClientConnection], *forwarders: str
) -> list[Pinger]:
    """Kill ``forwarders`` (a crash: their wires stay) and start them again while each client
    (by its namespace) pings through its wire; returns once every client has healed by a
    re-request on the same path and a few more echoes came back. The pingers, to count what was
    lost."""
    pingers = [Pinger(mesh, netns, destination(conn)) for netns, conn in clients.items()]
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        for pinger in pingers:
            nursery.start_soon(pinger.run, stop)
        for forwarder in forwarders:
            await mesh.kill(forwarder)
        for forwarder in forwarders:
            await mesh.restart(forwarder)
        for conn in clients.values():
            healed = await conn.wait_for(EventKind.HEALED)
            assert "re-requested (data plane alive)" in healed.reason
        for pinger in pingers:  # a few more echoes after the heals
            await eventually(partial(more_than, pinger, pinger.answered + 3))
        stop.set()
    return pingers


def more_than(pinger: Pinger, count: int) -> Awaitable[bool]:
    async def check() -> bool:
        return pinger.answered >= count

    return check()


def ifindexes(links: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {name: link["ifindex"] for name, link in links.items()}


def by_label(service: str, labels: list[str]) -> NetworkService:
    """``service`` whose clients labelled ``app=<x>`` go through the forwarder labelled
    ``fwd=<x>`` (NSM's forwarder selection by match metadata)."""
    return NetworkService(
        name=service,
        matches=[
            Match(source_selector={"app": x}, metadata=Metadata(labels={"fwd": x})) for x in labels
        ],
    )


async def test_restarting_one_of_two_forwarders_leaves_the_other_s_wires_alone(
    host: Host,
) -> None:
    nse_ns, client_a, client_b = await host.netns(), await host.netns(), await host.netns()
    fwd_a, fwd_b = owner_name(), owner_name()
    async with open_mesh(kernel=True, forwarders=0) as mesh:
        for name, label in ((fwd_a, "a"), (fwd_b, "b")):
            await mesh.add_forwarder(name, node=0, labels={"fwd": label}, reconcile_grace=GRACE)
        await mesh.register_service(by_label("icmp", ["a", "b"]))
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.121.0/24", netns=nse_ns)
        with trio.fail_after(BOUND):
            async with AsyncExitStack() as stack:
                conn_a = await stack.enter_async_context(
                    mesh.connect("kernel://icmp/nsm-1", netns=client_a, labels={"app": "a"})
                )
                conn_b = await stack.enter_async_context(
                    mesh.connect("kernel://icmp/nsm-1", netns=client_b, labels={"app": "b"})
                )
                assert (forwarder_of(conn_a), forwarder_of(conn_b)) == (fwd_a, fwd_b)
                before = {netns: await host.links(netns) for netns in (client_a, client_b, nse_ns)}

                await mesh.kill(fwd_a)
                await mesh.restart(fwd_a)
                await conn_a.wait_for(EventKind.HEALED)
                await reconciled(mesh, fwd_a)
                for netns in (client_a, client_b, nse_ns):
                    assert ifindexes(await host.links(netns)) == ifindexes(before[netns])
                assert conn_b.heals == 0
                assert (await host.links(client_b))["nsm-1"]["ifalias"] == client_alias(conn_b)
                assert await ping(client_b, destination(conn_b), timeout=2.0, netlink=mesh.netlink)


async def test_a_client_whose_forwarder_died_reselects_and_gets_nsm_1_despite_the_leftover(
    host: Host,
) -> None:
    nse_ns, client_ns = await host.netns(), await host.netns()
    fwd_a, fwd_b = owner_name(), owner_name()
    async with open_mesh(kernel=True, forwarders=0) as mesh:
        await mesh.add_forwarder(fwd_a, node=0, reconcile_grace=GRACE)
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.122.0/24", netns=nse_ns)
        with trio.fail_after(BOUND):
            async with mesh.connect("kernel://icmp/nsm-1", netns=client_ns) as conn:
                assert forwarder_of(conn) == fwd_a
                old = await host.links(client_ns)
                await mesh.add_forwarder(fwd_b, node=0, reconcile_grace=GRACE)
                await mesh.kill(fwd_a)  # for good: its nsm-1 stays in the client's namespace
                await conn.wait_for(EventKind.HEALED)
                assert forwarder_of(conn) == fwd_b
                links = await host.links(client_ns)
                assert sorted(links) == ["lo", "nsm-1"]
                assert links["nsm-1"]["ifalias"] == client_alias(conn)
                assert links["nsm-1"]["ifindex"] != old["nsm-1"]["ifindex"]  # the old one went
                assert len(await host.links(nse_ns)) == 2  # and its peer with it
                assert await ping(client_ns, destination(conn), timeout=2.0, netlink=mesh.netlink)
            assert sorted(await host.links(client_ns)) == ["lo"]
            assert sorted(await host.links(nse_ns)) == ["lo"]


async def test_a_stopped_forwarder_removes_its_wires_unless_told_to_keep_them(
    host: Host,
) -> None:
    nse_ns, kept_ns, removed_ns = await host.netns(), await host.netns(), await host.netns()
    keeper, cleaner = owner_name(), owner_name()
    async with open_mesh(kernel=True, forwarders=0) as mesh:
        await mesh.add_forwarder(keeper, node=0, labels={"fwd": "k"}, keep_dataplane_on_stop=True)
        await mesh.add_forwarder(cleaner, node=0, labels={"fwd": "c"}, keep_dataplane_on_stop=False)
        await mesh.register_service(by_label("icmp", ["k", "c"]))
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.123.0/24", netns=nse_ns)
        with trio.fail_after(BOUND):
            async with AsyncExitStack() as stack:
                for netns, label in ((kept_ns, "k"), (removed_ns, "c")):
                    await stack.enter_async_context(
                        mesh.connect(
                            "kernel://icmp/nsm-1",
                            netns=netns,
                            labels={"app": label},
                            liveness=False,
                        )
                    )
                kept = await host.links(kept_ns)
                endpoint = mesh.hop("nse-1")
                assert endpoint is not None
                closes = endpoint.counts.closes
                await mesh.kill(keeper)
                await mesh.kill(cleaner)  # a stop: its connections close downstream first
                assert ifindexes(await host.links(kept_ns)) == ifindexes(kept)
                assert sorted(await host.links(removed_ns)) == ["lo"]
                assert endpoint.counts.closes == closes + 1


# --- the data plane: adopt, replace, refuse, remove exactly ---------------------------------------


def wire_spec(
    dataplane: DataPlane, owner: str, client_ns: str, nse_ns: str, context: IpContext
) -> WireSpec:
    return dataplane.plan(
        "nsc-1",
        kernel_mechanism(client_ns, "nsm-1"),
        kernel_mechanism(nse_ns, "nse-end"),
        ConnectionContext(ip_context=context),
        hop=owner,
        service="icmp",
        owner=owner,
    )


async def test_the_data_plane_adopts_its_exact_leftover_and_replaces_a_different_one(
    host: Host, netlink: Netlink, pair: Callable[..., IpContext]
) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    owner = owner_name()
    first, restarted = DataPlane(netlink), DataPlane(netlink)  # two incarnations
    with trio.fail_after(BOUND):
        spec = wire_spec(first, owner, client_ns, nse_ns, pair(50))
        made = await first.ensure(None, spec, hop=owner, service="icmp")
        for adopt in (True, False):  # looked for first, or after the names were found taken
            adopted = await restarted.ensure(None, spec, hop=owner, service="icmp", adopt=adopt)
            assert adopted.kernel == made.kernel  # the very same interfaces
        other = wire_spec(first, owner, client_ns, nse_ns, pair(51))  # new addresses
        replaced = await restarted.ensure(None, other, hop=owner, service="icmp", adopt=True)
        assert replaced.kernel.client.index != made.kernel.client.index
        links = await host.links(client_ns)
        assert sorted(links) == ["lo", "nsm-1"]
        assert "169.254.51.1" in await host.run(client_ns, "addr", "show", "nsm-1")
        assert len(await host.links(nse_ns)) == 2


async def test_a_client_s_old_wire_of_another_forwarder_is_replaced_and_its_late_close_harmless(
    host: Host, netlink: Netlink, pair: Callable[..., IpContext]
) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    dead, alive = owner_name(), owner_name()
    old_plane, new_plane = DataPlane(netlink), DataPlane(netlink)
    with trio.fail_after(BOUND):
        old = await old_plane.ensure(
            None, wire_spec(old_plane, dead, client_ns, nse_ns, pair(52)), hop=dead, service="icmp"
        )
        spec = wire_spec(new_plane, alive, client_ns, nse_ns, pair(52))
        new = await new_plane.ensure(None, spec, hop=alive, service="icmp")
        links = await host.links(client_ns)
        assert links["nsm-1"]["ifalias"] == f"trionsm:{alive}:nsc-1"
        assert links["nsm-1"]["ifindex"] == new.kernel.client.index != old.kernel.client.index
        await old_plane.remove(old, hop=dead)  # the old forwarder's Close, late
        assert ifindexes(await host.links(client_ns)) == ifindexes(links)
        assert len(await host.links(nse_ns)) == 2
        await new_plane.remove(new, hop=alive)
        assert sorted(await host.links(client_ns)) == ["lo"]
        assert sorted(await host.links(nse_ns)) == ["lo"]


async def test_a_name_held_by_another_connection_or_not_by_trionsm_is_refused_naming_its_owner(
    host: Host, netlink: Netlink, pair: Callable[..., IpContext]
) -> None:
    client_ns, nse_ns, foreign_ns = await host.netns(), await host.netns(), await host.netns()
    other, mine = owner_name(), owner_name()
    plane = DataPlane(netlink)
    await host.run(foreign_ns, "link", "add", "nsm-1", "type", "veth", "peer", "name", "theirs")
    with trio.fail_after(BOUND):
        await made(netlink, other, "nsc-other", client_ns, nse_ns, pair(53))
        for adopt in (False, True):
            spec = wire_spec(plane, mine, client_ns, nse_ns, pair(54))
            with pytest.raises(AlreadyExists) as caught:
                await plane.ensure(None, spec, hop=mine, service="icmp", adopt=adopt)
            assert f"is taken by forwarder {other!r}'s wire of connection 'nsc-other'" in str(
                caught.value
            )
            spec = wire_spec(plane, mine, foreign_ns, nse_ns, pair(54))
            with pytest.raises(AlreadyExists, match="an interface that trionsm did not make"):
                await plane.ensure(None, spec, hop=mine, service="icmp", adopt=adopt)
        assert (await host.links(client_ns))["nsm-1"]["ifalias"] == f"trionsm:{other}:nsc-other"
        assert "ifalias" not in (await host.links(foreign_ns))["nsm-1"]
        assert len(await host.links(nse_ns)) == 2  # the other connection's end only


# --- a leftover vxlan end: adopt exactly, or say why not ------------------------------------------


def vxlan_args(net: Tunnel, maker: str, **change: Any) -> dict[str, Any]:
    """What the client side's end of ``net`` is made with (``change`` overrides)."""
    args: dict[str, Any] = {
        "connection_id": "nsc-1",
        "underlay_ns": net.underlay[0],
        "netns": net.workload[0],
        "ifname": "nsm-1",
        "side": "client",
        "local_ip": LOCAL,
        "remote_ip": REMOTE,
        "vni": 300,
        "ip_context": policy_context(pair_context, 60),
        "owner": maker,
    }
    return {**args, **change}


def planned(args: dict[str, Any]) -> tuple[VxlanPlan, str, str]:
    """``inspect_vxlan_end``'s arguments for the end ``create_vxlan_end(**args)`` makes."""
    rest = {k: v for k, v in args.items() if k not in ("underlay_ns", "netns")}
    return plan_vxlan_end(**rest), args["underlay_ns"], args["netns"]


async def test_a_vxlan_end_is_found_by_its_owner_and_inspects_as_exactly_its_plan(
    host: Host, netlink: Netlink
) -> None:
    net = await tunnel(host)
    owner = owner_name()
    with trio.fail_after(BOUND):
        end = await create_vxlan_end(**vxlan_args(net, owner), netlink=netlink)
        seen = await inspect_vxlan_end(*planned(vxlan_args(net, owner)), netlink=netlink)
        assert seen.difference == ""
        assert seen.wire == end  # the same interface, the same index, the underlay's MTU
        assert seen.wire.mtu == 1450
        (found,) = await scan_namespaces(owner, netlink=netlink)  # every namespace of the host
        assert (found.ifname, found.index, found.kind) == ("nsm-1", end.end.index, "vxlan")
        assert found.tunnel is not None
        assert (found.tunnel.vni, found.tunnel.local, found.tunnel.remote) == (300, LOCAL, REMOTE)
        links = await host.links(net.workload[0])
        assert links["nsm-1"]["ifindex"] == end.end.index  # inspecting changed nothing


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"vni": 302}, "has VNI 300, not 302"),
        ({"remote_ip": "169.254.250.3"}, "tunnels 169.254.250.1 -> 169.254.250.2, not"),
        ({"port": 4790}, "uses UDP port 4789, not 4790"),
        ({"mtu": 1400}, "has MTU 1450, not 1400"),
        ({"owner": "someone-else"}, "does not carry trionsm:someone-else:nsc-1"),
        ({"ip_context": "other addresses"}, "has addresses"),
        ({"ifname": "nsm-2"}, "the vxlan end nsm-2 is missing"),
        ({"kernel": "neighbour deleted"}, "lacks neighbour entries [('169.254.60.2'"),
        ({"kernel": "down"}, "is down"),
        ({"kernel": "another underlay"}, "in another namespace than the underlay"),
        ({"kernel": "a veth"}, "is a veth interface, not a vxlan device"),
    ],
)
async def test_a_vxlan_end_that_differs_from_its_plan_says_how(
    host: Host, netlink: Netlink, change: dict[str, Any], why: str
) -> None:
    net = await tunnel(host)
    owner = owner_name()
    what = change.pop("kernel", None)
    with trio.fail_after(BOUND):
        if what == "a veth":  # our alias on another kind of interface under the name
            made = await made_wire(netlink, owner, net)
            assert made.client.ifname == "nsm-1"
        else:
            await create_vxlan_end(**vxlan_args(net, owner), netlink=netlink)
        if what == "neighbour deleted":
            await host.run(net.workload[0], "neigh", "del", "169.254.60.2", "dev", "nsm-1")
        elif what == "down":
            await host.run(net.workload[0], "link", "set", "nsm-1", "down")
        elif what == "another underlay":  # the same address on another namespace's interface
            other = await host.netns()
            await host.run(other, "link", "add", "ul", "type", "veth", "peer", "name", "ul-p")
            await host.run(other, "addr", "add", f"{LOCAL}/24", "dev", "ul")
            change["underlay_ns"] = other
        elif change.get("ip_context") == "other addresses":
            change["ip_context"] = pair_context(61)
        seen = await inspect_vxlan_end(*planned(vxlan_args(net, owner, **change)), netlink=netlink)
        assert seen.wire is None
        assert why in seen.difference


async def made_wire(netlink: Netlink, owner: str, net: Tunnel) -> KernelWire:
    """A veth pair carrying the vxlan end's alias and name (``nsm-1`` in the first workload)."""
    return await made(netlink, owner, "nsc-1", net.workload[0], net.workload[1], pair_context(60))


def vxlan_spec(dataplane: DataPlane, owner: str, net: Tunnel, vni: int) -> VxlanSpec:
    """The client side's end of ``net`` as a forwarder plans it from the two mechanisms."""
    return dataplane.plan_vxlan(
        "nsc-1",
        "client",
        kernel_mechanism(net.workload[0], "nsm-1"),
        vxlan_mechanism(LOCAL, REMOTE, src_port=4789, dst_port=4789, vni=vni),
        ConnectionContext(ip_context=pair_context(62)),
        underlay_netns=net.underlay[0],
        hop=owner,
        service="icmp",
        owner=owner,
    )


async def test_the_data_plane_adopts_its_exact_leftover_vxlan_end_and_replaces_one_that_differs(
    host: Host, netlink: Netlink, caplog: pytest.LogCaptureFixture
) -> None:
    net = await tunnel(host)
    owner = owner_name()
    first, restarted = DataPlane(netlink), DataPlane(netlink)  # two incarnations
    client = kernel_mechanism(net.workload[0], "nsm-1")
    with trio.fail_after(BOUND):
        spec = vxlan_spec(first, owner, net, vni=310)
        made = await first.ensure(None, spec, hop=owner, service="icmp")
        for adopt in (True, False):  # looked for first, or after the VNI was found taken
            adopted = await restarted.ensure(None, spec, hop=owner, service="icmp", adopt=adopt)
            assert adopted.kernel == made.kernel  # the very same interface
        assert await restarted.leftover_vni(client, "nsc-1", owner=owner, hop=owner) == 310
        assert await restarted.leftover_vni(client, "nsc-2", owner=owner, hop=owner) is None

        other = vxlan_spec(first, owner, net, vni=312)  # the far side picked another VNI
        with caplog.at_level(logging.INFO, logger="trionsm.actors.dataplane"):
            replaced = await restarted.ensure(None, other, hop=owner, service="icmp", adopt=True)
        assert "has VNI 310, not 312" in caplog.text  # it says why
        assert isinstance(replaced.kernel, VxlanEnd)
        assert isinstance(made.kernel, VxlanEnd)
        assert replaced.kernel.end.index != made.kernel.end.index
        (link,) = await host.json(net.workload[0], "-d", "link", "show", "nsm-1")
        assert link["linkinfo"]["info_data"]["id"] == 312
        assert sorted(await host.links(net.workload[0])) == ["lo", "nsm-1"]
