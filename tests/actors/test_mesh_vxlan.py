"""Remote KERNEL connections over VXLAN, end to end: NSC on node 0, NSE on node 1.

A two-node ``kernel=True`` mesh runs in this process: each node has an underlay namespace on the
mesh's bridge (``169.254.200.<node + 1>``), the interfaces live in namespaces the tests make
(``tnsm-<random>``, removed by their exact names). Path: NSC, nsmgr-0, forwarder-0-0, nsmgr-1,
forwarder-1-0, NSE. Real clock; every wait is bounded.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

import pytest
import trio
import trio.testing

from tests.netns import Host
from trionsm.actors._vni import choose_vni
from trionsm.actors.client import ClientConnection, EventKind
from trionsm.errors import FailedPrecondition
from trionsm.identity import JwtTokenProvider
from trionsm.kernel import list_wires, ping
from trionsm.scenario import Mesh, open_mesh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

BOUND = 30.0
"""Seconds any step may take before the test fails (a hang guard: most take milliseconds)."""
CIDRS = ["169.254.120.0/24", "fd00::120:0/120"]
NODE0, NODE1 = "169.254.200.1", "169.254.200.2"


def addresses(conn: ClientConnection, field: str) -> list[str]:
    assert conn.connection is not None
    assert conn.connection.context is not None
    ip_context = conn.connection.context.ip_context
    assert ip_context is not None
    return [address.split("/")[0] for address in getattr(ip_context, field)]


async def pings(mesh: Mesh, netns: str, targets: list[str]) -> bool:
    results = [await ping(netns, target, timeout=2.0, netlink=mesh.netlink) for target in targets]
    return all(results)


async def vxlan(host: Host, netns: str, ifname: str) -> dict[str, Any]:
    """``ip -d`` of a link: its vxlan data, ifindex and MTU."""
    (link,) = await host.json(netns, "-d", "link", "show", ifname)
    assert link["linkinfo"]["info_kind"] == "vxlan"
    data: dict[str, Any] = link["linkinfo"]["info_data"]
    return {**data, "ifindex": link["ifindex"], "mtu": link["mtu"]}


async def nse_ifname(host: Host, netns: str) -> str:
    links = await host.links(netns)
    names = set(links) - {"lo"}
    assert len(names) == 1, links
    (name,) = names
    return name


async def test_remote_connection_pings_over_vxlan_keeps_its_interfaces_on_refresh_and_closes(
    host: Host,
) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    async with open_mesh(nodes=2, kernel=True) as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", node=1, cidr=CIDRS, netns=nse_ns)
        baseline = mesh.baseline()
        tokens = JwtTokenProvider("spiffe://trionsm.local/nsc/remote", lifetime=6.0)
        with trio.fail_after(BOUND):
            async with mesh.connect(
                "kernel://icmp/nsm-1", netns=client_ns, tokens=tokens, request_timeout=2.0
            ) as conn:
                assert conn.connection is not None
                assert conn.connection.path is not None
                names = [segment.name for segment in conn.connection.path.path_segments]
                assert names[1:] == [
                    "nsmgr-0",
                    "forwarder-0-0",
                    "nsmgr-1",
                    "forwarder-1-0",
                    "nse-1",
                ]
                mechanism = conn.connection.mechanism
                assert mechanism is not None
                assert (mechanism.type, mechanism.parameters["name"]) == ("KERNEL", "nsm-1")
                assert mechanism.parameters["MTU"] == "1450"
                dst, src = addresses(conn, "dst_ip_addrs"), addresses(conn, "src_ip_addrs")
                assert await pings(mesh, client_ns, dst)  # IPv4 and IPv6
                assert await pings(mesh, nse_ns, src)

                nse_if = await nse_ifname(host, nse_ns)
                near, far = await vxlan(host, client_ns, "nsm-1"), await vxlan(host, nse_ns, nse_if)
                assert (near["local"], near["remote"]) == (NODE0, NODE1)
                assert (far["local"], far["remote"]) == (NODE1, NODE0)
                assert near["id"] == far["id"]
                assert near["id"] % 2 == 0  # NSM's parity: src 169.254.200.1 <= dst .2
                assert near["port"] == far["port"] == 4789
                assert near["mtu"] == far["mtu"] == 1450  # the underlay's 1500 - 50
                (wire,) = await list_wires(client_ns, netlink=mesh.netlink)
                assert (wire.ifname, wire.kind) == ("nsm-1", "vxlan")

                await conn.wait_for(EventKind.REFRESHED)
                assert (await vxlan(host, client_ns, "nsm-1"))["ifindex"] == near["ifindex"]
                assert (await vxlan(host, nse_ns, nse_if))["ifindex"] == far["ifindex"]
                assert await pings(mesh, client_ns, dst)
                assert conn.heals == 0
            assert list(await host.links(client_ns)) == ["lo"]
            assert list(await host.links(nse_ns)) == ["lo"]
            assert await mesh.leaks(baseline) == []


async def test_remote_endpoint_death_heals_onto_another_endpoint_on_its_node(host: Host) -> None:
    client_ns = await host.netns()
    pods = {"nse-a": await host.netns(), "nse-b": await host.netns()}
    cidrs = {"nse-a": "169.254.121.0/24", "nse-b": "169.254.122.0/24"}
    async with open_mesh(nodes=2, kernel=True) as mesh:
        await mesh.register_service("icmp")
        for name, netns in pods.items():
            await mesh.add_endpoint(
                name, "icmp", node=1, cidr=cidrs[name], netns=netns, strict_ipam=True
            )
        baseline = mesh.baseline()
        with trio.fail_after(BOUND):
            async with mesh.connect("kernel://icmp/nsm-1", netns=client_ns) as conn:
                assert conn.connection is not None
                first = conn.connection.network_service_endpoint_name
                other = "nse-b" if first == "nse-a" else "nse-a"
                assert await pings(mesh, client_ns, addresses(conn, "dst_ip_addrs"))

                await mesh.kill(first)  # the NSE's pod dies: its process and its namespace
                await mesh.remove_netns(pods[first])
                healed = await conn.wait_for(EventKind.HEALED)
                assert healed.connection is not None
                assert healed.connection.network_service_endpoint_name == other
                net = cidrs[other].removesuffix("0/24")
                assert addresses(conn, "dst_ip_addrs") == [net + "0"]
                assert await pings(mesh, client_ns, [net + "0"])
                assert sorted(await host.links(client_ns)) == ["lo", "nsm-1"]
                assert len(await host.links(pods[other])) == 2  # lo and the new end
            assert list(await host.links(client_ns)) == ["lo"]
            assert list(await host.links(pods[other])) == ["lo"]
            await mesh.kill(other)  # neither endpoint is in the baseline's shape any more
            del baseline[first], baseline[other]
            assert await mesh.leaks(baseline) == []


@pytest.mark.parametrize("where", ["endpoint's node", "client's node"])
async def test_a_vni_the_kernel_refuses_is_replaced_on_either_node(host: Host, where: str) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    async with open_mesh(nodes=2, kernel=True) as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", node=1, cidr=CIDRS, netns=nse_ns)
        baseline = mesh.baseline()
        # The far side's first choice, known in advance: someone else has it in that underlay.
        mesh.hop("forwarder-1-0").vni_rng = random.Random(5)  # type: ignore[union-attr]
        taken = choose_vni(NODE0, NODE1, rng=random.Random(5))
        assert mesh.underlay is not None
        node = 1 if where == "endpoint's node" else 0
        underlay = mesh.underlay.url(node)
        local = NODE1 if node == 1 else NODE0
        await host.run(
            underlay, "link", "add", "squatter", "type", "vxlan", "id", str(taken),
            "local", local, "dstport", "4789", "dev", "ul0",
        )  # fmt: skip
        with trio.fail_after(BOUND):
            async with mesh.connect("kernel://icmp/nsm-1", netns=client_ns) as conn:
                assert await pings(mesh, client_ns, addresses(conn, "dst_ip_addrs"))
                near = await vxlan(host, client_ns, "nsm-1")
                far = await vxlan(host, nse_ns, await nse_ifname(host, nse_ns))
                assert near["id"] == far["id"] != taken
                assert near["id"] % 2 == 0
                endpoint = mesh.hop("nse-1")
                assert endpoint is not None
                assert len(endpoint.hub) == 1  # asked again on the same connection, not a new one
            assert list(await host.links(client_ns)) == ["lo"]
            assert list(await host.links(nse_ns)) == ["lo"]
            await host.run(underlay, "link", "del", "squatter")
            assert await mesh.leaks(baseline) == []


@pytest.mark.parametrize(
    ("underlay_mtus", "wanted", "mtu"),
    [
        ((1400, 1500), None, 1350),  # the client's node has the smaller underlay
        ((1500, 1400), None, 1350),  # the endpoint's node has
        ((1400, 1500), 1300, 1300),  # the NSC asks for less than either allows
    ],
)
async def test_both_ends_get_one_mtu_whichever_node_has_the_smaller_underlay(
    host: Host, underlay_mtus: tuple[int, int], wanted: int | None, mtu: int
) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    async with open_mesh(nodes=2, kernel=True) as mesh:
        assert mesh.underlay is not None
        for node, underlay_mtu in enumerate(underlay_mtus):
            await host.run(mesh.underlay.url(node), "link", "set", "ul0", "mtu", str(underlay_mtu))
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", node=1, cidr=CIDRS, netns=nse_ns)
        tokens = JwtTokenProvider("spiffe://trionsm.local/nsc/mtu", lifetime=6.0)
        with trio.fail_after(BOUND):
            async with mesh.connect(
                "kernel://icmp/nsm-1",
                netns=client_ns,
                tokens=tokens,
                request_timeout=2.0,
                mtu=wanted,
            ) as conn:
                nse_if = await nse_ifname(host, nse_ns)
                near, far = await vxlan(host, client_ns, "nsm-1"), await vxlan(host, nse_ns, nse_if)
                assert near["mtu"] == far["mtu"] == mtu
                assert conn.connection is not None
                assert conn.connection.mechanism is not None
                assert conn.connection.mechanism.parameters["MTU"] == str(mtu)
                assert await pings(mesh, client_ns, addresses(conn, "dst_ip_addrs"))

                await conn.wait_for(EventKind.REFRESHED)  # the refresh keeps both as they are
                assert await vxlan(host, client_ns, "nsm-1") == near
                assert await vxlan(host, nse_ns, nse_if) == far
                assert conn.heals == 0


async def test_a_forwarder_without_tunnel_ip_refuses_a_remote_kernel_connection(
    host: Host,
) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    async with open_mesh(nodes=0, kernel=True) as mesh:
        await mesh.add_node(forwarders=0)
        await mesh.add_forwarder("forwarder-plain", node=0, tunnel_ip="")
        await mesh.add_node()
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", node=1, cidr=CIDRS, netns=nse_ns)
        with trio.fail_after(BOUND), pytest.raises(FailedPrecondition) as caught:
            async with mesh.connect("kernel://icmp/nsm-1", netns=client_ns, request_timeout=1.0):
                pass
        reason = str(caught.value)
        assert "forwarder-plain" in reason
        assert "service 'icmp'" in reason
        assert "no tunnel_ip configured" in reason
        endpoint = mesh.hop("nse-1")
        assert endpoint is not None
        assert endpoint.counts.requests == 0
        assert list(await host.links(client_ns)) == ["lo"]
        assert await mesh.leaks() == []


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--tunnel-ip", "1.2.3"], "argument --tunnel-ip: '1.2.3': expected an IP address"),
        (["--underlay-netns", "tnsm-no-such-0"], "argument --underlay-netns: 'tnsm-no-such-0'"),
        (["--underlay-netns", "file:///proc/self/ns/net"], "--underlay-netns: needs --tunnel-ip"),
    ],
)
async def test_the_forwarder_command_checks_its_vxlan_flags(flags: list[str], words: str) -> None:
    command = [sys.executable, "-m", "trionsm.cli", "forwarder", "--name", "f"]
    command += ["--listen", "unix:///tmp/tnsm-unused.sock", "--nsmgr", "unix:///tmp/tnsm-no.sock"]
    with trio.fail_after(BOUND):
        done = await trio.run_process([*command, *flags], check=False, capture_stderr=True)
    assert done.returncode == 2
    assert words in done.stderr.decode()
