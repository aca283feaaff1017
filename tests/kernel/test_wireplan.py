"""plan_wire: the input checks and the route rules, without a kernel."""

from __future__ import annotations

import ipaddress

import pytest

from trionsm.api.connectioncontext import IpContext, IpNeighbor, PolicyRoute, Route
from trionsm.errors import InvalidArgument
from trionsm.kernel import plan_wire


def plan(context: IpContext | None = None, client: str = "", endpoint: str = "", mtu: int = 0):  # type: ignore[no-untyped-def]
    return plan_wire("conn-1", client, endpoint, mtu=mtu, ip_context=context, hop="forwarder")


def test_defaults_and_alias() -> None:
    wire = plan()
    assert wire.alias == "trionsm:conn-1"
    assert wire.client.ifname == "nsm-1"
    assert wire.endpoint.ifname.startswith("nsm-")
    assert len(wire.endpoint.ifname) == 15
    assert plan_wire("conn-2", "", "", mtu=0, ip_context=None, hop=None).endpoint.ifname != (
        wire.endpoint.ifname
    )


@pytest.mark.parametrize("name", ["x" * 16, "a/b", "a:b", "a b", ".", ".."])
def test_bad_interface_names(name: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        plan_wire("c", "ok", name, mtu=0, ip_context=None, hop="forwarder")
    assert caught.value.hop == "forwarder"
    assert "interface" in caught.value.reason


def test_fifteen_bytes_is_the_limit() -> None:
    assert plan(client="x" * 15).client.ifname == "x" * 15
    with pytest.raises(InvalidArgument, match="16 bytes long; Linux allows at most 15"):
        plan(client="x" * 16)


@pytest.mark.parametrize("mtu", [67, 65536, -1])
def test_mtu_range(mtu: int) -> None:
    with pytest.raises(InvalidArgument, match="MTU"):
        plan(mtu=mtu)


def test_ipv6_needs_1280() -> None:
    with pytest.raises(InvalidArgument, match="1280"):
        plan(IpContext(src_ip_addrs=["fd00::1/128"]), mtu=1200)
    assert plan(IpContext(src_ip_addrs=["169.254.0.1/32"]), mtu=1200).mtu == 1200


def test_empty_next_hop_is_the_other_sides_address() -> None:
    context = IpContext(
        src_ip_addrs=["169.254.0.1/32", "fd00::1/128"],
        dst_ip_addrs=["169.254.0.2/32", "fd00::2/128"],
        src_routes=[Route(prefix="169.254.0.2/32"), Route(prefix="169.254.100.0/24")],
        dst_routes=[Route(prefix="fd00:1::/64"), Route(prefix="169.254.50.0/24", next_hop="")],
    )
    wire = plan(context)
    to_peer, subnet = wire.client.routes
    assert to_peer.gateway is None  # a route to the peer itself is a link route
    assert subnet.gateway == ipaddress.ip_address("169.254.0.2")
    v6, v4 = wire.endpoint.routes
    assert v6.gateway == ipaddress.ip_address("fd00::1")
    assert v4.gateway == ipaddress.ip_address("169.254.0.1")


def test_no_address_of_the_family_means_a_link_route() -> None:
    wire = plan(IpContext(src_routes=[Route(prefix="fd00:5::/64")]))
    assert wire.client.routes[0].gateway is None


@pytest.mark.parametrize(
    ("context", "field"),
    [
        (IpContext(src_ip_addrs=["169.254.0.300/32"]), "src_ip_addrs"),
        (IpContext(dst_ip_addrs=["nope"]), "dst_ip_addrs"),
        (IpContext(src_routes=[Route(prefix="x")]), "src_routes"),
        (IpContext(dst_routes=[Route(prefix="169.254.0.0/16", next_hop="fd00::1")]), "dst_routes"),
        (IpContext(ip_neighbors=[IpNeighbor(ip="169.254.0.9", hardware_address="zz")]), "ip_n"),
        (IpContext(policies=[PolicyRoute(proto="999")]), "proto"),
        (IpContext(policies=[PolicyRoute(dst_port="80-70")]), "dst_port"),
        (IpContext(policies=[PolicyRoute(src_port="x")]), "src_port"),
    ],
)
def test_bad_context_names_the_field(context: IpContext, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        plan(context)


def test_policies_expand_per_family_with_default_routes() -> None:
    context = IpContext(
        src_ip_addrs=["169.254.0.1/32", "fd00::1/128"],
        dst_ip_addrs=["169.254.0.2/32", "fd00::2/128"],
        policies=[
            PolicyRoute(from_="169.254.0.1/32", proto="tcp", dst_port="80-90"),
            PolicyRoute(proto="17", src_port="53"),
        ],
    )
    first, *rest = plan(context).client.policies
    assert (first.family, first.protocol, first.dst_ports) == (4, 6, (80, 90))
    assert [str(r.prefix) for r in first.routes] == ["0.0.0.0/0"]
    assert first.routes[0].gateway == ipaddress.ip_address("169.254.0.2")
    assert [(p.family, p.protocol, p.src_ports) for p in rest] == [
        (4, 17, (53, 53)),
        (6, 17, (53, 53)),
    ]
