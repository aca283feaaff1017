"""KERNEL wires on real namespaces: what gets made, what pings, and that nothing remains."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

import pytest
import trio

from tests.netns import Host
from trionsm.api.connectioncontext import IpContext, IpNeighbor, PolicyRoute, Route
from trionsm.kernel import (
    Netlink,
    check_liveness,
    check_wire,
    create_kernel_wire,
    list_wires,
    ping,
    remove_wire,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

Pair = Callable[..., IpContext]


async def only_loopback(host: Host, *urls: str) -> None:
    for url in urls:
        assert list(await host.links(url)) == ["lo"], url
        assert "proto 126" not in await host.run(url, "rule", "show")
        assert "proto 126" not in await host.run(url, "-6", "rule", "show")


async def test_wire_pings_both_families_and_carries_routes_mtu_alias(
    host: Host, netlink: Netlink, pair: Pair
) -> None:
    client, endpoint = await host.netns(), await host.netns()
    context = pair(7)
    context.src_routes.append(Route(prefix="169.254.200.0/24"))
    with trio.fail_after(10):
        wire = await create_kernel_wire(
            "conn-7", client, "nsm-1", endpoint, "nse-7", mtu=1400, ip_context=context,
            hop="forwarder", netlink=netlink,
        )  # fmt: skip
        assert (wire.client.ifname, wire.endpoint.ifname, wire.mtu) == ("nsm-1", "nse-7", 1400)
        assert await ping(client, "169.254.7.2", timeout=2, netlink=netlink)
        assert await ping(client, "fd00::7:2", timeout=2, netlink=netlink)
        assert await ping(endpoint, "169.254.7.1", source="169.254.7.2", netlink=netlink)
        assert await check_liveness(client, context, netlink=netlink)
    client_link = (await host.links(client))["nsm-1"]
    endpoint_link = (await host.links(endpoint))["nse-7"]
    for link in (client_link, endpoint_link):
        assert link["ifalias"] == "trionsm:conn-7"
        assert link["mtu"] == 1400
        assert "UP" in link["flags"]
    routes = await host.json(client, "route", "show")
    assert {"dst": "169.254.7.2", "dev": "nsm-1", "scope": "link"}.items() <= routes[0].items()
    via = next(r for r in routes if r["dst"] == "169.254.200.0/24")
    assert (via["gateway"], via["dev"], via["flags"]) == ("169.254.7.2", "nsm-1", ["onlink"])
    assert "fd00::7:1 dev nse-7" in await host.run(endpoint, "-6", "route", "show")
    addresses = await host.run(client, "-6", "addr", "show", "dev", "nsm-1")
    assert "fd00::7:1/128 scope global nodad" in addresses
    found = await list_wires(endpoint, netlink=netlink)
    assert [(w.connection_id, w.ifname, w.up) for w in found] == [("conn-7", "nse-7", True)]

    with trio.fail_after(10):
        assert await remove_wire("conn-7", [client, endpoint], netlink=netlink) >= 1
        assert not await ping(client, "169.254.7.2", timeout=0.2, netlink=netlink)
        assert await remove_wire("conn-7", [client, endpoint], netlink=netlink) == 0
    await only_loopback(host, client, endpoint)


async def test_neighbours_and_policy_routes_are_made_and_removed(
    host: Host, netlink: Netlink, pair: Pair
) -> None:
    client, endpoint = await host.netns(), await host.netns()
    context = pair(3)
    context.ip_neighbors = [IpNeighbor(ip="169.254.3.9", hardware_address="02:00:00:00:03:09")]
    context.policies = [
        PolicyRoute(from_="169.254.3.1/32", proto="6", dst_port="8080"),
        PolicyRoute(proto="17", routes=[Route(prefix="fd00:99::/64")]),
    ]
    with trio.fail_after(10):
        wire = await create_kernel_wire(
            "conn-3", client, "", endpoint, "", ip_context=context, hop="t", netlink=netlink
        )
    neighbours = {n["dst"]: n for n in await host.json(client, "neigh", "show", "dev", "nsm-1")}
    given = neighbours["169.254.3.9"]
    assert (given["lladdr"], given["state"]) == ("02:00:00:00:03:09", ["PERMANENT"])
    peer_mac = (await host.links(endpoint))[wire.endpoint.ifname]["address"]
    for peer in ("169.254.3.2", "fd00::3:2"):  # the peer's addresses need no resolution
        assert (neighbours[peer]["lladdr"], neighbours[peer]["state"]) == (peer_mac, ["PERMANENT"])
    rule = next(r for r in await host.json(client, "rule", "show") if r.get("protocol") == "126")
    assert (rule["src"], rule["ipproto"], rule["dport"]) == ("169.254.3.1", "tcp", 8080)
    table = await host.run(client, "route", "show", "table", rule["table"])
    assert "default via 169.254.3.2 dev nsm-1" in table
    rule6 = next(r for r in await host.json(client, "-6", "rule", "show") if "ipproto" in r)
    assert "fd00:99::/64 via fd00::3:2 dev nsm-1" in await host.run(
        client, "-6", "route", "show", "table", rule6["table"]
    )
    with trio.fail_after(10):
        await remove_wire("conn-3", [client, endpoint], netlink=netlink)
    await only_loopback(host, client, endpoint)


async def test_fifty_wires_at_once(host: Host, netlink: Netlink, pair: Pair) -> None:
    """Five client namespaces of ten wires each, one endpoint namespace: all made, all alive,
    all removed, concurrently."""
    clients = [await host.netns() for _ in range(5)]
    endpoint = await host.netns()
    made: list[int] = []

    async def one(i: int) -> None:
        client = clients[i % 5]
        await create_kernel_wire(
            f"conn-{i}", client, f"nsm-{i}", endpoint, f"nse-{i}", ip_context=pair(i),
            hop="forwarder", netlink=netlink,
        )  # fmt: skip
        assert await check_liveness(client, pair(i), timeout=5, netlink=netlink)
        made.append(i)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, i)
    assert sorted(made) == list(range(50))
    assert len(await host.links(endpoint)) == 51
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(
                    partial(
                        remove_wire, f"conn-{i}", [clients[i % 5], endpoint],
                        ifnames=[f"nsm-{i}", f"nse-{i}"], netlink=netlink,
                    )
                )  # fmt: skip
    await only_loopback(host, endpoint, *clients)


async def test_ping_gives_up_within_its_timeout(host: Host, netlink: Netlink, pair: Pair) -> None:
    client, endpoint = await host.netns(), await host.netns()
    context = pair(9)
    context.src_routes.append(Route(prefix="169.254.9.0/24"))
    await create_kernel_wire(
        "conn-9", client, "", endpoint, "", ip_context=context, hop="t", netlink=netlink
    )
    with trio.fail_after(5):
        assert not await ping(client, "169.254.250.250", timeout=0.5, netlink=netlink)  # no route
        assert not await ping(client, "169.254.9.77", timeout=0.5, packets=3, netlink=netlink)
        assert not await ping(client, "fd00::9:77", timeout=0.5, netlink=netlink)
        dead = IpContext(src_ip_addrs=["169.254.9.1/32"], dst_ip_addrs=["169.254.9.77/32"])
        assert not await check_liveness(client, dead, timeout=0.5, netlink=netlink)
    assert await check_liveness(client, IpContext(), netlink=netlink)  # nothing to ping: alive


async def test_the_default_executor_is_used_when_none_is_given(host: Host, pair: Pair) -> None:
    client, endpoint = await host.netns(), await host.netns()
    with trio.fail_after(10):
        await create_kernel_wire("conn-d", client, "", endpoint, "", ip_context=pair(4))
        assert await check_liveness(client, pair(4))
        await remove_wire("conn-d", [client, endpoint])
    await only_loopback(host, client, endpoint)


async def test_removing_one_wire_keeps_anothers_policies_and_sweeps_orphans(
    host: Host, netlink: Netlink, pair: Pair
) -> None:
    client, first_nse, second_nse = await host.netns(), await host.netns(), await host.netns()
    policy = [PolicyRoute(proto="6")]
    for i, endpoint in ((1, first_nse), (2, second_nse)):
        context = pair(i)
        context.policies = policy
        await create_kernel_wire(
            f"conn-{i}", client, f"nsm-{i}", endpoint, "", ip_context=context, netlink=netlink
        )
    ours = [r for r in await host.json(client, "rule", "show") if r.get("protocol") == "126"]
    assert len(ours) == 2
    await remove_wire("conn-1", [client, first_nse], netlink=netlink)
    left = [r for r in await host.json(client, "rule", "show") if r.get("protocol") == "126"]
    assert [r["table"] for r in left] == [ours[1]["table"]]  # conn-2's rule stays

    # conn-2's wire vanishes behind our back (its endpoint's pod went): the rule is orphaned
    gone = (await list_wires(second_nse, netlink=netlink))[0].ifname
    await host.run(second_nse, "link", "del", gone)
    assert list(await host.links(client)) == ["lo"]
    assert await remove_wire("conn-2", [client], netlink=netlink) == 0
    await only_loopback(host, client)


async def test_removal_by_name_spares_a_foreign_interface_of_that_name(
    host: Host, netlink: Netlink, pair: Pair
) -> None:
    client, endpoint = await host.netns(), await host.netns()
    await host.run(client, "link", "add", "nsm-5", "type", "veth", "peer", "name", "theirs")
    await create_kernel_wire(
        "conn-5", client, "nsm-6", endpoint, "nse-5", ip_context=pair(5), netlink=netlink
    )
    names = ["nsm-5", "nse-5"]  # the first is not ours: it carries no alias
    assert await remove_wire("conn-5", [client, endpoint], ifnames=names, netlink=netlink) == 1
    assert sorted(await host.links(client)) == ["lo", "nsm-5", "theirs"]
    assert list(await host.links(endpoint)) == ["lo"]


async def test_check_wire_sees_a_whole_wire_and_a_missing_or_foreign_end(
    host: Host, netlink: Netlink, pair: Pair
) -> None:
    client, endpoint = await host.netns(), await host.netns()
    with trio.fail_after(10):
        wire = await create_kernel_wire(
            "conn-9", client, "nsm-1", endpoint, "nse-9", ip_context=pair(9), netlink=netlink
        )
        assert await check_wire(wire, netlink=netlink)
        await host.run(endpoint, "link", "set", "nse-9", "down")
        assert not await check_wire(wire, netlink=netlink)
        await host.run(client, "link", "del", "nsm-1")  # takes its peer along
        assert not await check_wire(wire, netlink=netlink)
        await host.run(client, "link", "add", "nsm-1", "up", "type", "veth", "peer", "name", "x")
        assert not await check_wire(wire, netlink=netlink)  # that name, but not our alias
        await host.run(client, "link", "del", "nsm-1")
    await only_loopback(host, client, endpoint)
