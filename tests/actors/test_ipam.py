"""Point-to-point IPAM: NSM's point2pointipam cases, recovery, exhaustion, scale and properties.

The example cases follow NSM's ``point2pointipam/server_test.go`` (first pair, several
connections, excluded prefixes, refresh, recovery, out of IPs, several servers), moved to
169.254.0.0/16 and fd00::/8. The property tests drive the IPAM against a model that enumerates
small pools, so the lowest-free choice, refresh, recovery and rollback are checked exactly.
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from trionsm.actors._ipam import AddressPair, PointToPointIpam
from trionsm.api.connectioncontext import IpContext, IpNeighbor, PolicyRoute, Route
from trionsm.errors import InvalidArgument, ResourceExhausted


def pairs(context: IpContext) -> tuple[list[str], list[str]]:
    """(dst addresses, src addresses), after checking each side's routes point at the other."""
    assert [route.prefix for route in context.src_routes] == context.dst_ip_addrs
    assert [route.prefix for route in context.dst_routes] == context.src_ip_addrs
    return context.dst_ip_addrs, context.src_ip_addrs


def pair(context: IpContext) -> tuple[str, str]:
    """The single (dst, src) pair of a one-family context."""
    dsts, srcs = pairs(context)
    assert len(dsts) == len(srcs) == 1
    return dsts[0], srcs[0]


def excluding(*prefixes: str) -> IpContext:
    return IpContext(excluded_prefixes=list(prefixes))


def carrying(dst: str, src: str, *excluded: str) -> IpContext:
    """A request context as a client re-sends it after the NSE restarted."""
    return IpContext(
        dst_ip_addrs=[dst],
        src_ip_addrs=[src],
        src_routes=[Route(prefix=dst)],
        dst_routes=[Route(prefix=src)],
        excluded_prefixes=list(excluded),
    )


# ---- NSM's cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cidr", "expected"),
    [
        (
            "169.254.3.4/16",
            ["169.254.0.0/32", "169.254.0.1/32", "169.254.0.2/32", "169.254.0.3/32"],
        ),
        ("fd00::/64", ["fd00::/128", "fd00::1/128", "fd00::2/128", "fd00::3/128"]),
    ],
)
def test_pairs_are_the_lowest_free_and_come_back_after_release(
    cidr: str, expected: list[str]
) -> None:
    ipam = PointToPointIpam([cidr])
    assert pair(ipam.assign("c-1", IpContext())) == (expected[0], expected[1])
    assert pair(ipam.assign("c-2", None)) == (expected[2], expected[3])
    ipam.release("c-1")
    assert pair(ipam.assign("c-3", IpContext())) == (expected[0], expected[1])
    dst, src = pair(ipam.assign("c-4", IpContext()))
    assert dst.endswith((".4/32", "::4/128"))
    assert src.endswith((".5/32", "::5/128"))


def test_the_first_address_goes_to_the_nse_side_with_routes_to_each_other() -> None:
    context = PointToPointIpam(["169.254.0.0/24"]).assign("c-1", None)
    assert context.dst_ip_addrs == ["169.254.0.0/32"]
    assert context.src_ip_addrs == ["169.254.0.1/32"]
    assert context.src_routes == [Route(prefix="169.254.0.0/32")]  # the NSC reaches the NSE
    assert context.dst_routes == [Route(prefix="169.254.0.1/32")]  # and back


@pytest.mark.parametrize(
    ("cidr", "excluded", "expected"),
    [
        (
            "169.254.1.0/24",
            ["169.254.1.1/32", "169.254.1.3/32", "169.254.1.6/32"],
            [(".0", ".2"), (".4", ".5"), (".7", ".8")],  # in the middle, before and after them
        ),
        (
            "fd00::1:0/112",
            ["fd00::1:1/128", "fd00::1:3/128", "fd00::1:6/128"],
            [(":0", ":2"), (":4", ":5"), (":7", ":8")],
        ),
    ],
)
def test_excluded_host_prefixes_are_skipped(
    cidr: str, excluded: list[str], expected: list[tuple[str, str]]
) -> None:
    ipam = PointToPointIpam([cidr])
    base, width = cidr.rsplit("/")[0][:-2], "/32" if "." in cidr else "/128"
    got = [pair(ipam.assign(f"c-{n}", excluding(*excluded))) for n in range(3)]
    assert got == [(base + dst + width, base + src + width) for dst, src in expected]


def test_overlapping_excluded_prefixes_and_the_argument_add_up() -> None:
    ipam = PointToPointIpam(["169.254.1.0/24"])
    context = excluding("169.254.1.0/30", "169.254.1.2/31", "169.254.1.0/29", "fd00::/8")
    assert pair(ipam.assign("c-1", context, ["169.254.1.9/32", "10.0.0.0/8"])) == (
        "169.254.1.8/32",
        "169.254.1.10/32",
    )
    assert context == excluding("169.254.1.0/30", "169.254.1.2/31", "169.254.1.0/29", "fd00::/8")


@pytest.mark.parametrize(("cidr", "pairs_held"), [("169.254.1.2/31", 1), ("169.254.1.0/30", 2)])
def test_an_exhausted_pool_names_the_cidr_and_how_many_are_in_use(
    cidr: str, pairs_held: int
) -> None:
    ipam = PointToPointIpam([cidr], hop="nse-a")
    for n in range(pairs_held):
        ipam.assign(f"c-{n}", None)
    with pytest.raises(ResourceExhausted) as caught:
        ipam.assign("late", None)
    size = 2 * pairs_held
    assert caught.value.hop == "nse-a"
    assert f"{ipaddress.ip_network(cidr, strict=False)}: {size} of {size} in use" in str(
        caught.value
    )
    assert "'late'" in caught.value.reason
    assert "late" not in ipam.allocated
    assert ipam.free_count() == 0


@pytest.mark.parametrize("cidr", ["169.254.1.2/31", "fd00::1:2/127"])
def test_a_pool_hidden_by_excluded_prefixes_says_so(cidr: str) -> None:
    ipam = PointToPointIpam([cidr])
    with pytest.raises(ResourceExhausted, match="0 of 2 in use, 2 free but excluded"):
        ipam.assign("c-1", excluding(cidr))
    assert ipam.free_count() == 2


def test_a_refresh_keeps_the_pair_until_a_new_exclusion_hits_it() -> None:
    ipam = PointToPointIpam(["169.254.3.4/16"])
    first = ipam.assign("c-1", excluding("169.254.0.1/32"))
    assert pair(first) == ("169.254.0.0/32", "169.254.0.2/32")
    assert pair(ipam.assign("c-1", IpContext())) == ("169.254.0.0/32", "169.254.0.2/32")
    assert ipam.assign("c-1", first) == first  # idempotent on its own output

    moved = copy.deepcopy(first)
    moved.excluded_prefixes = ["169.254.0.1/30"]
    assert pair(ipam.assign("c-1", moved)) == ("169.254.0.4/32", "169.254.0.5/32")
    assert ipam.free_count() == 2**16 - 2  # the old pair went back
    assert pair(ipam.assign("c-2", None)) == ("169.254.0.0/32", "169.254.0.1/32")


def test_an_exclusion_hitting_half_the_pair_may_reuse_the_other_half() -> None:
    ipam = PointToPointIpam(["169.254.0.0/24"])
    assert pair(ipam.assign("c-1", excluding("169.254.0.1/32"))) == (
        "169.254.0.0/32",
        "169.254.0.2/32",
    )
    assert pair(ipam.assign("c-1", excluding("169.254.0.0/32"))) == (
        "169.254.0.1/32",
        "169.254.0.2/32",
    )
    assert ipam.free_count() == 254


@pytest.mark.parametrize(
    ("cidr", "dst", "src", "fresh"),
    [
        (
            "169.254.3.4/16",
            "169.254.10.0/32",
            "169.254.10.1/32",
            ("169.254.0.0/32", "169.254.0.1/32"),
        ),
        ("fd00::/64", "fd00::fa00/128", "fd00::fa01/128", ("fd00::/128", "fd00::1/128")),
    ],
)
def test_addresses_are_recovered_unless_another_connection_holds_them(
    cidr: str, dst: str, src: str, fresh: tuple[str, str]
) -> None:
    ipam = PointToPointIpam([cidr])
    assert pair(ipam.assign("c-1", carrying(dst, src))) == (dst, src)
    # NSM appends the fresh pair after the conflicting one (sdk#1680); we drop the conflict.
    assert pair(ipam.assign("c-2", carrying(dst, src))) == fresh
    ipam.release("c-1")
    assert pair(ipam.assign("c-3", carrying(dst, src))) == (dst, src)


def test_a_restarted_nse_gives_every_connection_its_addresses_back() -> None:
    before = PointToPointIpam(["169.254.0.0/16", "fd00::/64"])
    contexts = {f"c-{n}": before.assign(f"c-{n}", None) for n in range(50)}
    after = PointToPointIpam(["169.254.0.0/16", "fd00::/64"])  # empty state: the NSE restarted
    for connection_id, context in reversed(contexts.items()):
        assert after.assign(connection_id, context) == context
    assert after.allocated == before.allocated
    assert after.assign("new", None).dst_ip_addrs == ["169.254.0.100/32", "fd00::64/128"]


@pytest.mark.parametrize(
    "context",
    [
        pytest.param(
            carrying("169.254.10.0/32", "169.254.10.1/32", "169.254.10.0/31"), id="excluded"
        ),
        pytest.param(carrying("192.0.2.0/32", "169.254.10.1/32"), id="dst-outside-the-pool"),
        pytest.param(IpContext(src_ip_addrs=["169.254.10.1/32"]), id="no-dst"),
        pytest.param(carrying("169.254.10.1/32", "169.254.10.1/32"), id="one-address-twice"),
        pytest.param(carrying("fd00::10/128", "fd00::11/128"), id="another-family"),
        pytest.param(carrying("not-an-address", "169.254.10.1/32"), id="malformed-dst"),
    ],
)
def test_unrecoverable_addresses_get_a_fresh_pair(context: IpContext) -> None:
    ipam = PointToPointIpam(["169.254.0.0/16"])
    got = ipam.assign("c-1", context)
    assert ipam.allocated["c-1"] == (
        AddressPair("169.254.0.0/16", dst="169.254.0.0/32", src="169.254.0.1/32"),
    )
    assert ipam.free_count() == 2**16 - 2
    pool = ipaddress.ip_network("169.254.0.0/16")
    for address in [*got.dst_ip_addrs, *got.src_ip_addrs]:  # no stale pool address is left
        if address.startswith("169.254."):
            assert address in {"169.254.0.0/32", "169.254.0.1/32"}, address
            assert ipaddress.ip_interface(address).ip in pool


def test_recovery_takes_the_first_usable_address_of_each_side() -> None:
    ipam = PointToPointIpam(["169.254.0.0/16"])
    ipam.assign("other", carrying("169.254.20.0/32", "169.254.20.1/32"))
    context = IpContext(
        dst_ip_addrs=["192.0.2.1/32", "169.254.20.0/32", "169.254.30.0/32", "169.254.30.9/32"],
        src_ip_addrs=["169.254.20.1/32", "169.254.30.1/32/x", "169.254.30.1/32"],
    )
    got = ipam.assign("c-1", context)
    assert ipam.allocated["c-1"] == (
        AddressPair("169.254.0.0/16", dst="169.254.30.0/32", src="169.254.30.1/32"),
    )
    assert got.dst_ip_addrs == ["192.0.2.1/32", "169.254.30.0/32"]
    assert got.src_ip_addrs == ["169.254.30.1/32/x", "169.254.30.1/32"]


def test_mixed_families_get_one_pair_each() -> None:
    ipam = PointToPointIpam(["169.254.3.4/16", "fd00::/8"])
    assert pairs(ipam.assign("c-1", None)) == (
        ["169.254.0.0/32", "fd00::/128"],
        ["169.254.0.1/32", "fd00::1/128"],
    )
    assert pairs(ipam.assign("c-2", None)) == (
        ["169.254.0.2/32", "fd00::2/128"],
        ["169.254.0.3/32", "fd00::3/128"],
    )
    ipam.release("c-1")
    assert pairs(ipam.assign("c-3", None))[0] == ["169.254.0.0/32", "fd00::/128"]
    assert pairs(ipam.assign("c-4", None))[0] == ["169.254.0.4/32", "fd00::4/128"]


def test_mixed_families_refresh_and_exclusion_per_family() -> None:
    ipam = PointToPointIpam(["169.254.3.4/16", "fd00::/64"])
    context = ipam.assign("c-1", excluding("169.254.0.1/32", "fd00::1/128"))
    assert pairs(context) == (["169.254.0.0/32", "fd00::/128"], ["169.254.0.2/32", "fd00::2/128"])
    assert ipam.assign("c-1", context) == context
    context.excluded_prefixes = ["169.254.0.1/30"]  # only the IPv4 pair is hit
    assert pairs(ipam.assign("c-1", context)) == (
        ["fd00::/128", "169.254.0.4/32"],
        ["fd00::2/128", "169.254.0.5/32"],
    )


def test_mixed_families_recover_one_family_and_allocate_the_other() -> None:
    ipam = PointToPointIpam(["169.254.0.0/16", "fd00::/64"])
    got = ipam.assign("c-1", carrying("fd00::fa00/128", "fd00::fa01/128"))
    assert pairs(got) == (
        ["fd00::fa00/128", "169.254.0.0/32"],
        ["fd00::fa01/128", "169.254.0.1/32"],
    )


def test_a_family_that_runs_out_fails_the_request_and_changes_nothing() -> None:
    ipam = PointToPointIpam(["fd00::/64", "169.254.1.2/31"])  # IPv6 is taken, then given back
    held = ipam.assign("c-1", None)
    with pytest.raises(ResourceExhausted, match=re.escape("169.254.1.2/31: 2 of 2 in use")):
        ipam.assign("c-2", None)
    assert ipam.free_count("fd00::/64") == 2**64 - 2
    assert list(ipam.allocated) == ["c-1"]
    # a refresh of c-1 whose new exclusion leaves no IPv4 pair: c-1 keeps what it had
    with pytest.raises(ResourceExhausted, match="0 of 2 in use, 1 free but excluded"):
        ipam.assign("c-1", excluding("169.254.1.3/32", "fd00::/126"))
    assert ipam.assign("c-1", held) == held
    assert ipam.free_count() == 2**64 - 2


def test_several_cidrs_of_one_family_overflow_in_order() -> None:
    ipam = PointToPointIpam(["169.254.1.0/31", "169.254.2.0/31"])
    assert pair(ipam.assign("c-1", None)) == ("169.254.1.0/32", "169.254.1.1/32")
    assert pair(ipam.assign("c-2", None)) == ("169.254.2.0/32", "169.254.2.1/32")
    with pytest.raises(ResourceExhausted) as caught:
        ipam.assign("c-3", None)
    assert "169.254.1.0/31: 2 of 2 in use; 169.254.2.0/31: 2 of 2 in use" in caught.value.reason
    ipam.release("c-1")
    assert ipam.allocated["c-2"] == (
        AddressPair("169.254.2.0/31", "169.254.2.0/32", "169.254.2.1/32"),
    )
    assert pair(ipam.assign("c-3", None)) == ("169.254.1.0/32", "169.254.1.1/32")


# ---- the returned context ------------------------------------------------------------------------


def test_the_argument_is_never_modified_and_unrelated_fields_are_kept() -> None:
    incoming = IpContext(
        src_ip_addrs=["192.0.2.7/24"],
        dst_ip_addrs=["192.0.2.8/24"],
        src_ip_required=True,
        dst_ip_required=True,
        src_routes=[Route(prefix="192.0.2.0/24", next_hop="192.0.2.8"), Route(prefix="0.0.0.0/0")],
        dst_routes=[Route(prefix="192.0.2.7/32")],
        excluded_prefixes=["10.0.0.0/8"],
        ip_neighbors=[IpNeighbor(ip="169.254.0.1", hardware_address="02:00:00:00:00:01")],
        extra_prefixes=["169.254.128.0/24"],
        policies=[PolicyRoute(from_="169.254.0.1/32", proto="6", dst_port="80")],
    )
    before = copy.deepcopy(incoming)
    got = PointToPointIpam(["169.254.0.0/24"]).assign("c-1", incoming)
    assert incoming == before
    assert got.src_ip_addrs == ["192.0.2.7/24", "169.254.0.1/32"]
    assert got.dst_ip_addrs == ["192.0.2.8/24", "169.254.0.0/32"]
    assert got.src_routes == [*before.src_routes, Route(prefix="169.254.0.0/32")]
    assert got.dst_routes == [*before.dst_routes, Route(prefix="169.254.0.1/32")]
    for name in ("src_ip_required", "dst_ip_required", "excluded_prefixes", "ip_neighbors"):
        assert getattr(got, name) == getattr(before, name)
    assert (got.extra_prefixes, got.policies) == (before.extra_prefixes, before.policies)
    got.policies[0].proto = "17"
    assert incoming.policies[0].proto == "6"  # a copy, not shared


def test_stale_pool_addresses_and_their_routes_are_replaced_in_place() -> None:
    ipam = PointToPointIpam(["169.254.0.0/16"])
    ipam.assign("c-1", carrying("169.254.0.10/32", "169.254.0.11/32"))
    incoming = IpContext(
        dst_ip_addrs=["169.254.0.10/32", "192.0.2.1/32", "169.254.0.10/32"],
        src_ip_addrs=["169.254.0.11/32"],
        src_routes=[Route(prefix="169.254.0.10/32", next_hop="x"), Route(prefix="169.254.0.0/16")],
        dst_routes=[Route(prefix="169.254.0.11/32"), Route(prefix="169.254.0.99/32")],
    )
    got = ipam.assign("c-2", incoming)  # c-1 holds the recovered pair: c-2 gets a fresh one
    assert got.dst_ip_addrs == ["192.0.2.1/32", "169.254.0.0/32"]
    assert got.src_ip_addrs == ["169.254.0.1/32"]
    assert got.src_routes == [Route(prefix="169.254.0.0/16"), Route(prefix="169.254.0.0/32")]
    assert got.dst_routes == [Route(prefix="169.254.0.1/32")]


def test_own_addresses_keep_their_place_and_next_hop_and_are_written_canonically() -> None:
    ipam = PointToPointIpam(["fd00::/64"])
    incoming = IpContext(
        dst_ip_addrs=["FD00:0::A/128", "fd00:ffff::1/64"],
        src_ip_addrs=["fd00:ffff::2/64", "fd00::b/128", "fd00::b/128"],
        src_routes=[Route(prefix="fd00::a/128", next_hop="fd00::b")],
    )
    got = ipam.assign("c-1", incoming)
    assert got.dst_ip_addrs == ["fd00::a/128", "fd00:ffff::1/64"]
    assert got.src_ip_addrs == ["fd00:ffff::2/64", "fd00::b/128"]
    assert got.src_routes == [Route(prefix="fd00::a/128", next_hop="fd00::b")]
    assert got.dst_routes == [Route(prefix="fd00::b/128")]
    assert ipam.assign("c-1", got) == got


def test_strict_drops_addresses_outside_the_pools_with_their_routes() -> None:
    old_nse = carrying("192.0.2.0/32", "192.0.2.1/32")  # healed here from an NSE with another CIDR
    old_nse.src_routes.append(Route(prefix="198.51.100.0/24"))
    old_nse.src_ip_addrs.append("garbage")
    ipam = PointToPointIpam(["169.254.0.0/16"], strict=True)
    got = ipam.assign("c-1", old_nse)
    assert got.dst_ip_addrs == ["169.254.0.0/32"]
    assert got.src_ip_addrs == ["169.254.0.1/32"]
    assert got.src_routes == [Route(prefix="198.51.100.0/24"), Route(prefix="169.254.0.0/32")]
    assert got.dst_routes == [Route(prefix="169.254.0.1/32")]
    lenient = PointToPointIpam(["169.254.0.0/16"]).assign("c-1", old_nse)  # NSM's default
    assert lenient.dst_ip_addrs == ["192.0.2.0/32", "169.254.0.0/32"]


# ---- input errors and introspection --------------------------------------------------------------


@pytest.mark.parametrize(
    ("cidrs", "message"),
    [
        ([], "one or more CIDRs"),
        ("169.254.0.0/16", "one or more CIDRs"),
        (["169.254.0.0/16", "169.254.0.0/33"], "bad CIDR '169.254.0.0/33'"),
        (["nonsense"], "bad CIDR 'nonsense'"),
        (["169.254.0.1/32"], "'169.254.0.1/32' holds one address"),
        (["fd00::1/128"], "holds one address"),
        (["169.254.0.0/16", "fd00::/64", "169.254.7.0/24"], "169.254.0.0/16 and '169.254.7.0/24'"),
    ],
)
def test_bad_cidrs_are_invalid_arguments_naming_them(cidrs: list[str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)) as caught:
        PointToPointIpam(cidrs, hop="nse-b")
    assert caught.value.hop == "nse-b"


def test_bad_requests_are_invalid_arguments_and_change_nothing() -> None:
    ipam = PointToPointIpam(["169.254.0.0/24"])
    with pytest.raises(InvalidArgument, match=re.escape("bad excluded prefix '169.254.0.0/40'")):
        ipam.assign("c-1", excluding("169.254.0.0/40"))
    with pytest.raises(InvalidArgument, match="bad excluded prefix 'x'"):
        ipam.assign("c-1", None, ["x"])
    with pytest.raises(InvalidArgument, match="connection id"):
        ipam.assign("", None)
    assert ipam.free_count() == 256
    assert pair(ipam.assign("c-1", excluding("", " "))) == ("169.254.0.0/32", "169.254.0.1/32")


def test_introspection() -> None:
    ipam = PointToPointIpam(["169.254.9.9/24", "fd00::/64", "169.254.8.0/31"])
    assert ipam.cidrs == ("169.254.9.0/24", "169.254.8.0/31", "fd00::/64")
    view = ipam.allocated
    ipam.assign("c-1", None)
    assert view == {
        "c-1": (
            AddressPair("169.254.9.0/24", "169.254.9.0/32", "169.254.9.1/32"),
            AddressPair("fd00::/64", "fd00::/128", "fd00::1/128"),
        )
    }
    with pytest.raises(TypeError):
        view["c-2"] = ()  # type: ignore[index]
    assert ipam.free_count("169.254.9.0/24") == ipam.free_count("169.254.9.9/24") == 254
    assert ipam.free_count("169.254.8.0/31") == 2
    assert ipam.free_count() == 254 + 2 + 2**64 - 2
    with pytest.raises(InvalidArgument, match="not one of the pools"):
        ipam.free_count("169.254.10.0/24")
    ipam.release("c-1")
    ipam.release("c-1")
    ipam.release("never-seen")
    assert view == {}
    assert ipam.free_count() == 256 + 2 + 2**64


# ---- scale ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cidr", "width"), [("169.254.0.0/16", 32), ("fd00::/64", 128)])
def test_ten_thousand_connections_without_enumerating_the_pool(cidr: str, width: int) -> None:
    ipam = PointToPointIpam([cidr])
    size = ipaddress.ip_network(cidr).num_addresses
    first = int(ipaddress.ip_network(cidr).network_address)
    for n in range(10_000):
        ipam.assign(f"c-{n}", None)
    held = {a for held in ipam.allocated.values() for p in held for a in (p.dst, p.src)}
    assert len(held) == 20_000
    assert ipam.free_count() == size - 20_000
    for n in range(0, 10_000, 2):
        ipam.release(f"c-{n}")
    assert ipam.free_count() == size - 10_000
    # the lowest holes come back first, each released pair in turn
    assert pair(ipam.assign("again-0", None)) == (
        f"{ipaddress.ip_address(first)}/{width}",
        f"{ipaddress.ip_address(first + 1)}/{width}",
    )
    assert pair(ipam.assign("again-1", None)) == (
        f"{ipaddress.ip_address(first + 4)}/{width}",
        f"{ipaddress.ip_address(first + 5)}/{width}",
    )
    for n in range(1, 10_000, 2):
        ipam.release(f"c-{n}")
    ipam.release("again-0")
    ipam.release("again-1")
    assert ipam.free_count() == size


# ---- properties ----------------------------------------------------------------------------------

V4 = ipaddress.ip_network("169.254.10.0/28")
V6 = ipaddress.ip_network("fd00::10:0/124")
NETWORKS = {4: V4, 6: V6}
IDS = [f"c-{n}" for n in range(6)]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def host(network: Network, offset: int) -> str:
    return f"{network.network_address + offset}/{network.max_prefixlen}"


def prefixes_around(network: Network, shortest: int) -> st.SearchStrategy[str]:
    """Prefixes inside the pool, covering it, or just past it, overlapping each other at will."""
    return st.tuples(st.integers(shortest, network.max_prefixlen), st.integers(0, 31)).map(
        lambda drawn: str(
            ipaddress.ip_network(f"{network.network_address + drawn[1]}/{drawn[0]}", strict=False)
        )
    )


EXCLUDED = st.lists(st.one_of(prefixes_around(V4, 27), prefixes_around(V6, 123)), max_size=3)
ADDRESSES = st.lists(st.tuples(st.sampled_from([4, 6]), st.integers(0, 15)), max_size=3)


def offsets_inside(prefixes: list[str], family: int) -> set[int]:
    networks = [ipaddress.ip_network(p) for p in prefixes]
    base = NETWORKS[family].network_address
    return {
        offset
        for offset in range(16)
        if any(base + offset in n for n in networks if n.version == family)
    }


class Model:
    """The IPAM's decisions over small enumerated pools: plain sets and ``range(16)``."""

    def __init__(self) -> None:
        self.used: dict[int, set[int]] = {4: set(), 6: set()}
        self.leases: dict[str, dict[int, tuple[int, int]]] = {}

    def assign(
        self,
        cid: str,
        srcs: list[tuple[int, int]],
        dsts: list[tuple[int, int]],
        excluded: list[str],
    ) -> dict[int, tuple[int, int]] | None:
        """The connection's (dst, src) offsets per family, or None: exhausted, nothing changed."""
        current = self.leases.get(cid, {})
        used = {family: set(values) for family, values in self.used.items()}
        result: dict[int, tuple[int, int]] = {}
        for family in (4, 6):
            hidden = offsets_inside(excluded, family)
            old = current.get(family)
            if old is not None and not set(old) & hidden:
                result[family] = old
                continue
            mine = set(old or ())
            others = used[family] - mine
            blocked = others | hidden
            src = next((o for f, o in srcs if f == family and o not in blocked | mine), None)
            dst = next(
                (o for f, o in dsts if f == family and o != src and o not in blocked | mine), None
            )
            if src is None or dst is None:
                free = [o for o in range(16) if o not in blocked]
                if len(free) < 2:
                    return None
                dst, src = free[0], free[1]
            used[family] = others | {dst, src}
            result[family] = (dst, src)
        self.used = used
        self.leases[cid] = result
        return result

    def release(self, cid: str) -> None:
        for family, lease in self.leases.pop(cid, {}).items():
            self.used[family] -= set(lease)


class IpamMachine(RuleBasedStateMachine):
    """Random Request, refresh, recovery and Close sequences, checked against :class:`Model`."""

    def __init__(self) -> None:
        super().__init__()
        self.ipam = PointToPointIpam([str(V4), str(V6)])
        self.model = Model()
        self.last: dict[str, IpContext] = {}

    @rule(cid=st.sampled_from(IDS), srcs=ADDRESSES, dsts=ADDRESSES, excluded=EXCLUDED)
    def request(
        self,
        cid: str,
        srcs: list[tuple[int, int]],
        dsts: list[tuple[int, int]],
        excluded: list[str],
    ) -> None:
        """A Request carrying addresses (a new connection, or one recovered after a restart)."""
        context = IpContext(
            src_ip_addrs=[host(NETWORKS[f], o) for f, o in srcs],
            dst_ip_addrs=[host(NETWORKS[f], o) for f, o in dsts],
            excluded_prefixes=excluded,
        )
        self.check(cid, context, self.model.assign(cid, srcs, dsts, excluded))

    @precondition(lambda self: bool(self.last))
    @rule(data=st.data(), excluded=EXCLUDED)
    def refresh(self, data: st.DataObject, excluded: list[str]) -> None:
        """A refresh re-sends the last returned context, maybe with new excluded prefixes."""
        cid = data.draw(st.sampled_from(sorted(self.last)))
        context = copy.deepcopy(self.last[cid])
        context.excluded_prefixes = excluded
        # its only pool addresses are its own pair, which a re-pick never recovers
        self.check(cid, context, self.model.assign(cid, [], [], excluded))

    def check(
        self, cid: str, context: IpContext, expected: dict[int, tuple[int, int]] | None
    ) -> None:
        before = copy.deepcopy(context)
        if expected is None:
            with pytest.raises(ResourceExhausted):
                self.ipam.assign(cid, context)
            assert context == before
            return
        got = self.ipam.assign(cid, context)
        assert context == before
        assert self.ipam.allocated[cid] == tuple(
            AddressPair(str(NETWORKS[f]), host(NETWORKS[f], d), host(NETWORKS[f], s))
            for f, (d, s) in sorted(expected.items())
        )
        dsts = {host(NETWORKS[f], d) for f, (d, _) in expected.items()}
        srcs = {host(NETWORKS[f], s) for f, (_, s) in expected.items()}
        assert (set(got.dst_ip_addrs), set(got.src_ip_addrs)) == (dsts, srcs)
        assert {r.prefix for r in got.src_routes} == dsts
        assert {r.prefix for r in got.dst_routes} == srcs
        for family, (dst, src) in expected.items():
            assert not {dst, src} & offsets_inside(context.excluded_prefixes, family)
        self.last[cid] = got

    @rule(cid=st.sampled_from(IDS))
    def close(self, cid: str) -> None:
        self.ipam.release(cid)
        self.model.release(cid)
        self.last.pop(cid, None)

    @precondition(lambda self: bool(self.model.leases))
    @rule()
    def close_everything_then_the_lowest_pairs_come_back(self) -> None:
        for cid in list(self.model.leases):
            self.close(cid)
        assert self.ipam.free_count() == 32
        assert pairs(self.ipam.assign("fresh", None)) == (
            [host(V4, 0), host(V6, 0)],
            [host(V4, 1), host(V6, 1)],
        )
        self.ipam.release("fresh")

    @invariant()
    def no_address_is_held_by_two_live_connections(self) -> None:
        held = [
            address
            for held_pairs in self.ipam.allocated.values()
            for held_pair in held_pairs
            for address in (held_pair.dst, held_pair.src)
        ]
        assert len(held) == len(set(held))
        assert self.ipam.free_count() == 32 - len(held)
        assert set(self.ipam.allocated) == set(self.model.leases)


TestIpamMachine = IpamMachine.TestCase
TestIpamMachine.settings = settings(max_examples=300, stateful_step_count=30)


@given(
    ops=st.lists(
        st.tuples(
            st.booleans(), st.integers(0, 40), st.lists(st.integers(0, 2**64 - 1), max_size=3)
        ),
        max_size=60,
    )
)
def test_a_large_ipv6_pool_hands_out_each_address_once(
    ops: list[tuple[bool, int, list[int]]],
) -> None:
    """Random assign/release with excluded host prefixes anywhere in a /64: never a double lease."""
    network = ipaddress.ip_network("fd00:1::/64")
    ipam = PointToPointIpam([str(network)])
    live: dict[str, set[str]] = {}
    for is_assign, number, offsets in ops:
        cid = f"c-{number}"
        if not is_assign:
            ipam.release(cid)
            live.pop(cid, None)
            continue
        excluded = [host(network, offset) for offset in offsets]
        dst, src = pair(ipam.assign(cid, excluding(*excluded, "fd00:1::/126")))
        assert dst not in excluded
        assert src not in excluded
        assert int(ipaddress.ip_interface(dst).ip) - int(network.network_address) >= 4
        others = set(itertools.chain.from_iterable(v for k, v in live.items() if k != cid))
        assert not {dst, src} & others
        live[cid] = {dst, src}
    assert ipam.free_count() == 2**64 - 2 * len(live)
