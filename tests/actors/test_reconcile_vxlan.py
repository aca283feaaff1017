"""A forwarder restarted on either node of a remote (VXLAN) connection adopts its vxlan ends.

A two-node ``kernel=True`` mesh in this process (NSCs on node 0, the NSE on node 1), its
forwarders named ``fwd-<random>`` (the reconcile scan looks at every namespace of the host and
must only meet this test's interfaces). One forwarder, or both, is killed (a crash: the wires
stay) and started again while every client pings through its wire: the re-requests find each
leftover vxlan end exactly as planned and adopt it (same ifindex, same VNI on both nodes, no
echo lost), the endpoint's forwarder re-learns the VNIs it had handed out, and when the grace
ends the sweep removes a stray vxlan end no client claims, and nothing live. Real clock; every
wait is bounded by a generous hang guard, nothing is timed.
"""

from __future__ import annotations

import os
import random
from contextlib import AsyncExitStack

import pytest
import trio

from tests.kernel.test_reconcile import (
    GRACE,
    destination,
    ifindexes,
    owner_name,
    reconciled,
    restart_while_pinging,
)
from tests.netns import Host
from trionsm.kernel import create_vxlan_end, ping
from trionsm.scenario import Mesh, open_mesh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

BOUND = 90.0
"""Seconds the whole test may take before it fails (a hang guard: it needs two graces and a few
heals, seconds in all)."""
NODE0, NODE1 = "169.254.200.1", "169.254.200.2"
STRAY_VNI = 7_777_777  # odd: never one the endpoint's forwarder picks for node 0 (even ones)


async def vxlan_id(host: Host, netns: str, ifname: str) -> int:
    (link,) = await host.json(netns, "-d", "link", "show", ifname)
    assert link["linkinfo"]["info_kind"] == "vxlan"
    vni: int = link["linkinfo"]["info_data"]["id"]
    return vni


def vnis_of(mesh: Mesh, forwarder: str) -> set[int]:
    """The VNIs ``forwarder``'s book holds for tunnels from node 0."""
    return mesh[forwarder].forwarder.vnis.taken(NODE0)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "nodes",
    [[0], [1], [0, 1]],
    ids=["on the client's node", "on the endpoint's node", "on both nodes"],
)
async def test_a_forwarder_restarted_on_either_node_adopts_its_vxlan_ends_without_a_flap(
    host: Host, nodes: list[int]
) -> None:
    nse_ns, stray_ns = await host.netns(), await host.netns()
    clients = [await host.netns() for _ in range(2)]
    forwarders = [owner_name(), owner_name()]
    restarted = [forwarders[node] for node in nodes]
    node = nodes[0]  # the stray end is this node's forwarder's
    async with open_mesh(nodes=2, kernel=True, forwarders=0) as mesh:
        assert mesh.underlay is not None
        for i, name in enumerate(forwarders):
            await mesh.add_forwarder(name, node=i, reconcile_grace=GRACE)
        mesh.hop(forwarders[1]).vni_rng = random.Random(5)  # type: ignore[union-attr]
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", node=1, cidr="169.254.124.0/24", netns=nse_ns)
        with trio.fail_after(BOUND):
            async with AsyncExitStack() as stack:
                conns = [
                    await stack.enter_async_context(
                        mesh.connect("kernel://icmp/nsm-1", netns=netns)
                    )
                    for netns in clients
                ]
                for name in forwarders:  # the first start's grace: nothing to remove
                    await reconciled(mesh, name)
                vnis = [await vxlan_id(host, netns, "nsm-1") for netns in clients]
                assert vnis_of(mesh, forwarders[1]) == set(vnis)
                # A vxlan end of the restarted forwarder that no client will claim again.
                here, there = mesh.underlay.address(node), mesh.underlay.address(1 - node)
                await create_vxlan_end(
                    "nsc-gone", mesh.underlay.url(node), stray_ns, "nsm-1",
                    side="client" if node == 0 else "endpoint", local_ip=here,
                    remote_ip=there, vni=STRAY_VNI, owner=restarted[0], netlink=mesh.netlink,
                )  # fmt: skip
                before = {netns: await host.links(netns) for netns in [*clients, nse_ns]}
                assert len(before[nse_ns]) == 1 + 2

                clients_of = dict(zip(clients, conns, strict=True))
                pingers = await restart_while_pinging(mesh, clients_of, *restarted)
                assert [p.lost for p in pingers] == [0, 0]
                assert all(p.answered > 3 for p in pingers)
                assert vnis_of(mesh, forwarders[1]) == set(vnis)  # kept, or re-learned

                for name in restarted:
                    await reconciled(mesh, name)
                for netns in [*clients, nse_ns]:  # the very same interfaces on both nodes
                    assert ifindexes(await host.links(netns)) == ifindexes(before[netns])
                assert [await vxlan_id(host, netns, "nsm-1") for netns in clients] == vnis
                assert sorted(await host.links(stray_ns)) == ["lo"]  # unclaimed: removed
                for netns, conn in zip(clients, conns, strict=True):
                    assert await ping(netns, destination(conn), timeout=2.0, netlink=mesh.netlink)

                # A later connection is never given a VNI the book holds: the endpoint's
                # forwarder draws the first connection's VNI again, and passes over it.
                mesh.hop(forwarders[1]).vni_rng = random.Random(5)  # type: ignore[union-attr]
                late_ns = await host.netns()
                async with mesh.connect("kernel://icmp/nsm-1", netns=late_ns) as late:
                    assert await ping(late_ns, destination(late), timeout=2.0, netlink=mesh.netlink)
                    assert await vxlan_id(host, late_ns, "nsm-1") not in vnis
