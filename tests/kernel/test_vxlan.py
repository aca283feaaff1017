"""VXLAN ends on real namespaces: two underlay namespaces joined by a veth, two workloads.

Underlay ``169.254.250.1/24`` <-> ``169.254.250.2/24``; the workloads' point-to-point addresses
come from :func:`pair_context`. ``ip`` (iproute2) checks the result independently.
"""

from __future__ import annotations

import os

import attrs
import pytest
import trio

from tests.netns import Host
from trionsm.api.connectioncontext import IpContext
from trionsm.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from trionsm.kernel import (
    Netlink,
    VniInUse,
    VxlanEnd,
    check_wire,
    create_vxlan_end,
    list_wires,
    ping,
    remove_wire,
    vxlan_macs,
)

from .conftest import pair_context

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

BOUND = 20.0
LOCAL, REMOTE = "169.254.250.1", "169.254.250.2"


@attrs.frozen
class Tunnel:
    """Two nodes' underlays (joined by a veth) and a workload namespace on each."""

    underlay: tuple[str, str]
    workload: tuple[str, str]


async def tunnel(host: Host, *, underlay_mtu: int = 1500) -> Tunnel:
    u1, u2, w1, w2 = [await host.netns() for _ in range(4)]
    name2 = u2.removeprefix("file:///run/netns/")
    await host.run(u1, "link", "add", "ul", "mtu", str(underlay_mtu), "type", "veth", "peer")
    await host.run(u1, "link", "set", "veth0", "netns", name2)
    await host.run(u1, "addr", "add", f"{LOCAL}/24", "dev", "ul")
    await host.run(u2, "addr", "add", f"{REMOTE}/24", "dev", "veth0")
    await host.run(u1, "link", "set", "ul", "up")
    await host.run(u2, "link", "set", "veth0", "mtu", str(underlay_mtu), "up")
    return Tunnel((u1, u2), (w1, w2))


async def both_ends(
    netlink: Netlink,
    net: Tunnel,
    *,
    vni: int = 100,
    mtu: int = 0,
    context: IpContext | None = None,
) -> tuple[VxlanEnd, VxlanEnd]:
    context = context or pair_context(7)
    endpoint = await create_vxlan_end(
        "conn-server",
        net.underlay[1],
        net.workload[1],
        "nse-if",
        side="endpoint",
        local_ip=REMOTE,
        remote_ip=LOCAL,
        vni=vni,
        mtu=mtu,
        ip_context=context,
        hop="forwarder-2",
        netlink=netlink,
    )
    client = await create_vxlan_end(
        "conn-client",
        net.underlay[0],
        net.workload[0],
        "nsm-1",
        side="client",
        local_ip=LOCAL,
        remote_ip=REMOTE,
        vni=vni,
        mtu=mtu,
        ip_context=context,
        hop="forwarder-1",
        netlink=netlink,
    )
    return client, endpoint


async def test_two_ends_ping_across_v4_and_v6_with_the_underlay_mtu_and_go_cleanly(
    host: Host, netlink: Netlink
) -> None:
    net = await tunnel(host)
    with trio.fail_after(BOUND):
        client, endpoint = await both_ends(netlink, net)
        assert (client.mtu, endpoint.mtu) == (1450, 1450)  # 1500 - 50
        for target in ("169.254.7.2", "fd00::7:2"):
            assert await ping(net.workload[0], target, timeout=2.0, netlink=netlink)
        for target in ("169.254.7.1", "fd00::7:1"):
            assert await ping(net.workload[1], target, timeout=2.0, netlink=netlink)

        links = await host.links(net.workload[0])
        assert sorted(links) == ["lo", "nsm-1"]
        link = links["nsm-1"]
        assert link["ifalias"] == "trionsm:conn-client"
        assert link["mtu"] == 1450
        assert link["address"] == vxlan_macs(LOCAL, REMOTE, 100)[0]
        details = (await host.json(net.workload[0], "-d", "link", "show", "nsm-1"))[0]
        data = details["linkinfo"]["info_data"]
        assert details["linkinfo"]["info_kind"] == "vxlan"
        assert (data["id"], data["local"], data["remote"], data["port"]) == (
            100,
            LOCAL,
            REMOTE,
            4789,
        )
        assert data["learning"] is False
        assert details["link_netnsid"] is not None  # the tunnel stays in the underlay
        assert sorted(await host.links(net.underlay[0])) == ["lo", "ul"]  # nothing left there
        (listed,) = await list_wires(net.workload[1], netlink=netlink)
        assert (listed.connection_id, listed.ifname, listed.kind) == (
            "conn-server",
            "nse-if",
            "vxlan",
        )
        assert await check_wire(client, netlink=netlink)

        removed = await remove_wire("conn-client", [net.workload[0]], netlink=netlink)
        removed += await remove_wire("conn-server", [net.workload[1]], netlink=netlink)
        assert removed == 2
        assert not await check_wire(client, netlink=netlink)
        for netns in net.workload:
            assert list(await host.links(netns)) == ["lo"]
        assert sorted(await host.links(net.underlay[0])) == ["lo", "ul"]
        assert sorted(await host.links(net.underlay[1])) == ["lo", "veth0"]
        # The VNI is free again in both underlays.
        again = await both_ends(netlink, net)
        assert await ping(net.workload[0], "169.254.7.2", timeout=2.0, netlink=netlink)
        assert again[0].vni == 100


async def test_an_ipv6_underlay_carries_the_tunnel_with_its_larger_overhead(
    host: Host, netlink: Netlink
) -> None:
    u1, u2, w1, w2 = [await host.netns() for _ in range(4)]
    local, remote = "fd00::250:1", "fd00::250:2"
    await host.run(u1, "link", "add", "ul", "type", "veth", "peer", "name", "veth0")
    await host.run(u1, "link", "set", "veth0", "netns", u2.removeprefix("file:///run/netns/"))
    for netns, name, address in ((u1, "ul", local), (u2, "veth0", remote)):
        await host.run(netns, "addr", "add", f"{address}/64", "dev", name, "nodad")
        await host.run(netns, "link", "set", name, "up")
    with trio.fail_after(BOUND):
        ends = []
        for side, underlay, netns, here, there in (
            ("endpoint", u2, w2, remote, local),
            ("client", u1, w1, local, remote),
        ):
            ends.append(
                await create_vxlan_end(
                    f"conn-{side}",
                    underlay,
                    netns,
                    "",
                    side=side,  # type: ignore[arg-type]
                    local_ip=here,
                    remote_ip=there,
                    vni=7,
                    ip_context=pair_context(11),
                    netlink=netlink,
                )
            )
        assert [end.mtu for end in ends] == [1430, 1430]  # 1500 - 70 over IPv6
        assert ends[1].end.ifname == "nsm-1"  # the client's default name
        assert await ping(w1, "169.254.11.2", timeout=2.0, netlink=netlink)
        assert await ping(w2, "fd00::b:1", timeout=2.0, netlink=netlink)
        (details,) = await host.json(w1, "-d", "link", "show", "nsm-1")
        assert details["linkinfo"]["info_data"]["local6"] == local


async def test_mtu_is_the_requested_one_when_smaller_else_what_the_underlay_allows(
    host: Host, netlink: Netlink
) -> None:
    net = await tunnel(host, underlay_mtu=1400)
    with trio.fail_after(BOUND):
        client, endpoint = await both_ends(netlink, net, mtu=1300)
        assert (client.mtu, endpoint.mtu) == (1300, 1300)
        assert (await host.links(net.workload[0]))["nsm-1"]["mtu"] == 1300
        await remove_wire("conn-client", [net.workload[0]], netlink=netlink)
        await remove_wire("conn-server", [net.workload[1]], netlink=netlink)
        client, endpoint = await both_ends(netlink, net, vni=101, mtu=9000)
        assert (client.mtu, endpoint.mtu) == (1350, 1350)  # lowered to 1400 - 50
        assert (await host.links(net.workload[1]))["nse-if"]["mtu"] == 1350
        assert await ping(net.workload[0], "fd00::7:2", timeout=2.0, netlink=netlink)


async def test_a_vni_taken_in_the_underlay_is_vni_in_use_and_leaves_nothing(
    host: Host, netlink: Netlink
) -> None:
    net = await tunnel(host)
    other = await host.netns()
    with trio.fail_after(BOUND):
        await both_ends(netlink, net, vni=200)
        # Another connection from the same underlay, with the same VNI, into another workload:
        # the kernel refuses it although the first device moved away.
        with pytest.raises(VniInUse) as caught:
            await create_vxlan_end(
                "conn-other",
                net.underlay[0],
                other,
                "nsm-1",
                side="client",
                local_ip=LOCAL,
                remote_ip="169.254.250.3",
                vni=200,
                ip_context=pair_context(8),
                hop="forwarder-1",
                netlink=netlink,
            )
        assert isinstance(caught.value, AlreadyExists)
        assert caught.value.vni == 200
        assert caught.value.hop == "forwarder-1"
        assert "VNI 200" in caught.value.reason
        assert list(await host.links(other)) == ["lo"]
        assert sorted(await host.links(net.underlay[0])) == ["lo", "ul"]
        assert sorted(await host.links(net.workload[0])) == ["lo", "nsm-1"]  # the first, intact
        # Another VNI goes through.
        made = await create_vxlan_end(
            "conn-other",
            net.underlay[0],
            other,
            "nsm-1",
            side="client",
            local_ip=LOCAL,
            remote_ip="169.254.250.3",
            vni=202,
            ip_context=pair_context(8),
            netlink=netlink,
        )
        assert made.vni == 202


async def test_a_failure_after_creation_rolls_back_and_bad_input_changes_nothing(
    host: Host, netlink: Netlink
) -> None:
    net = await tunnel(host)
    await host.run(net.workload[0], "link", "add", "nsm-1", "type", "veth", "peer", "name", "x")
    with trio.fail_after(BOUND):
        with pytest.raises(AlreadyExists) as caught:  # the name is taken: after the creation
            await create_vxlan_end(
                "conn-client",
                net.underlay[0],
                net.workload[0],
                "nsm-1",
                side="client",
                local_ip=LOCAL,
                remote_ip=REMOTE,
                vni=300,
                ip_context=pair_context(9),
                netlink=netlink,
            )
        assert not isinstance(caught.value, VniInUse)
        assert "naming the interface 'nsm-1'" in caught.value.reason
        assert sorted(await host.links(net.workload[0])) == ["lo", "nsm-1", "x"]
        assert "ifalias" not in (await host.links(net.workload[0]))["nsm-1"]

        with pytest.raises(FailedPrecondition, match=r"holds the tunnel address 169\.254\.250\.9"):
            await create_vxlan_end(
                "conn-client",
                net.underlay[0],
                net.workload[1],
                "nsm-2",
                side="client",
                local_ip="169.254.250.9",
                remote_ip=REMOTE,
                vni=300,
                netlink=netlink,
            )
        bad = [
            ({"vni": 2**24}, "VNI"),
            ({"local_ip": "nope"}, "local tunnel address"),
            ({"remote_ip": "fd00::1"}, "different families"),
            ({"port": 0}, "port"),
            ({"mtu": 20}, "MTU"),
        ]
        for change, words in bad:
            options = {"local_ip": LOCAL, "remote_ip": REMOTE, "vni": 300, **change}
            with pytest.raises(InvalidArgument, match=words):
                await create_vxlan_end(
                    "conn-client",
                    net.underlay[0],
                    net.workload[1],
                    "nsm-2",
                    side="client",
                    netlink=netlink,
                    **options,  # type: ignore[arg-type]
                )
        for netns in (net.workload[1], net.underlay[1]):
            assert sorted(await host.links(netns)) in (["lo"], ["lo", "veth0"])
        assert sorted(await host.links(net.underlay[0])) == ["lo", "ul"]
        # VNI 300 was never taken: it still goes through.
        await host.run(net.workload[0], "link", "del", "nsm-1")
        await both_ends(netlink, net, vni=300, context=pair_context(10))
        assert await ping(net.workload[0], "169.254.10.2", timeout=2.0, netlink=netlink)


def test_both_sides_derive_the_same_distinct_unicast_macs() -> None:
    client, endpoint = vxlan_macs(LOCAL, REMOTE, 5)
    assert (client, endpoint) == vxlan_macs(LOCAL, REMOTE, 5)
    assert client != endpoint
    for mac in (client, endpoint):
        first = int(mac[:2], 16)
        assert first & 0x02
        assert not first & 0x01
    assert vxlan_macs(LOCAL, REMOTE, 6) != (client, endpoint)
