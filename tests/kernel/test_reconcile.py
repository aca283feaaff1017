"""Reconcile on real namespaces: find a forwarder's interfaces, adopt a wire exactly as it is,
remove exactly, and a restarted forwarder inside a mesh that adopts without a flap.

Real clock; every wait is bounded by a generous hang guard. Addresses come from 169.254.0.0/16
and fd00::/8 only, in namespaces the tests made (removed by their exact names). Forwarders get
names of their own (``fwd-<random>``): the reconcile scan looks at every namespace of the host,
and it must only ever meet this test's interfaces.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable

import pytest
import trio

from trionsm.api.connectioncontext import IpContext, PolicyRoute, Route
from trionsm.kernel import Netlink, create_kernel_wire, plan_wire
from trionsm.kernel._reconcile import inspect_wire, remove_interfaces, scan_namespaces

from .conftest import Host

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

BOUND = 30.0
"""Seconds any step may take before the test fails (a hang guard: most take milliseconds)."""


def owner_name() -> str:
    return f"fwd-{secrets.token_hex(3)}"


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
        wire = await create_kernel_wire(
            "nsc-1",
            client_ns,
            "nsm-1",
            nse_ns,
            "",
            mtu=1400,
            ip_context=context,
            owner=owner,
            netlink=netlink,
        )
        await create_kernel_wire(
            "nsc-2",
            client_ns,
            "nsm-2",
            nse_ns,
            "",
            ip_context=pair(41),
            owner=other,
            netlink=netlink,
        )
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
        await create_kernel_wire(
            "nsc-1",
            client_ns,
            "nsm-1",
            nse_ns,
            "",
            mtu=1400,
            ip_context=context,
            owner=owner,
            netlink=netlink,
        )
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
        old = await create_kernel_wire(
            "nsc-1",
            client_ns,
            "nsm-1",
            nse_ns,
            "",
            ip_context=pair(44),
            owner=owner,
            netlink=netlink,
        )
        alias = f"trionsm:{owner}:nsc-1"
        ends = [(end.namespace, end.index, alias) for end in old.ends]
        assert await remove_interfaces(ends, netlink=netlink) == 1  # the peer went along
        assert sorted(await host.links(client_ns)) == ["lo"]
        # The same name, the same alias, made again: the old record does not remove it.
        new = await create_kernel_wire(
            "nsc-1",
            client_ns,
            "nsm-1",
            nse_ns,
            "",
            ip_context=pair(44),
            owner=owner,
            netlink=netlink,
        )
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
