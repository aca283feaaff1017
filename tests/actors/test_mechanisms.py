"""Mechanisms: NSM's strings, constructors, negotiation with errors naming both sides, filtering
by URL, the forwarder's translation, interface names."""

from __future__ import annotations

import copy
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trionsm.actors._mechanisms import (
    DEFAULT_VXLAN_PORT,
    KERNEL,
    LOCAL,
    MEMIF,
    NOOP,
    REMOTE,
    TYPES,
    VXLAN,
    WIREGUARD,
    Param,
    check_interface_name,
    default_interface_name,
    describe,
    filter_by_cls,
    filter_for_url,
    is_local_url,
    kernel_mechanism,
    negotiate,
    noop_mechanism,
    translate_reply,
    translate_request,
    vxlan_mechanism,
    with_parameters,
)
from trionsm.api.connection import Connection, Mechanism
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.errors import FailedPrecondition, InvalidArgument
from trionsm.transport import parse_url


def test_nsm_strings() -> None:
    assert (LOCAL, REMOTE) == ("LOCAL", "REMOTE")
    assert {"KERNEL", "VXLAN", "NOOP", "MEMIF", "VFIO", "WIREGUARD", "IPSEC", "VLAN"} <= TYPES
    assert (Param.NAME, Param.INODE_URL, Param.MTU, Param.VNI) == ("name", "inodeURL", "MTU", "vni")
    assert (Param.SRC_IP, Param.DST_IP, Param.SRC_PORT, Param.DST_PORT) == (
        "src_ip",
        "dst_ip",
        "src_port",
        "dst_port",
    )
    assert DEFAULT_VXLAN_PORT == 4789


def test_constructors() -> None:
    kernel = kernel_mechanism("inode://4/4026532", "nsm-1", mtu=1450)
    assert kernel == Mechanism(
        cls=LOCAL,
        type=KERNEL,
        parameters={"inodeURL": "inode://4/4026532", "name": "nsm-1", "MTU": "1450"},
    )
    assert kernel_mechanism() == Mechanism(cls=LOCAL, type=KERNEL, parameters={})
    extra = {Param.PCI_ADDRESS: "0000:01:00.0"}
    assert kernel_mechanism(extra=extra).parameters == extra
    assert noop_mechanism() == Mechanism(cls=LOCAL, type=NOOP)
    assert noop_mechanism(REMOTE).cls == REMOTE
    vxlan = vxlan_mechanism("10.0.0.1", dst_port=4789, vni=0xABCDEF, mtu=1400)
    assert vxlan.cls == REMOTE
    assert vxlan.type == VXLAN
    assert vxlan.parameters == {
        "src_ip": "10.0.0.1",
        "dst_port": "4789",
        "vni": str(0xABCDEF),
        "MTU": "1400",
    }


@pytest.mark.parametrize(
    "make",
    [
        lambda: kernel_mechanism(interface="much-too-long-name"),
        lambda: kernel_mechanism(mtu=20),
        lambda: vxlan_mechanism(vni=2**24),
        lambda: vxlan_mechanism(src_port=70000),
        lambda: vxlan_mechanism(dst_port=-1),
    ],
)
def test_constructors_check_ranges(make: object) -> None:
    with pytest.raises(InvalidArgument):
        make()  # type: ignore[operator]


def test_with_parameters_copies() -> None:
    original = kernel_mechanism(interface="nsm-1")
    updated = with_parameters(original, {Param.INODE_URL: "inode://1/2"})
    assert original.parameters == {"name": "nsm-1"}
    assert updated.parameters == {"name": "nsm-1", "inodeURL": "inode://1/2"}


def test_describe() -> None:
    assert describe(kernel_mechanism()) == "KERNEL/LOCAL"
    assert describe(None) == "(none)"
    assert describe(Mechanism()) == "(no type)/(no cls)"


# -- negotiate ------------------------------------------------------------------------------------

OFFERED = [kernel_mechanism(interface="nsm-1"), vxlan_mechanism("10.0.0.1")]


def test_negotiate_first_supported_preference() -> None:
    chosen = negotiate(None, OFFERED, [VXLAN, KERNEL], hop="forwarder@node-1")
    assert chosen == OFFERED[0]
    assert chosen is not OFFERED[0]
    chosen.parameters["name"] = "changed"
    assert OFFERED[0].parameters["name"] == "nsm-1"
    assert negotiate(None, OFFERED, [VXLAN], hop="f") == OFFERED[1]


def test_negotiate_keeps_the_connection_mechanism() -> None:
    current = vxlan_mechanism("10.0.0.1", "10.0.0.2", vni=7)
    assert negotiate(current, OFFERED, [KERNEL, VXLAN], hop="f") == current
    # a mechanism without a type is no mechanism: the preferences decide
    assert negotiate(Mechanism(), OFFERED, [KERNEL], hop="f") == OFFERED[0]


def test_negotiate_failure_names_both_sides() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        negotiate(None, OFFERED, [NOOP], hop="forwarder@node-1", service="icmp")
    error = caught.value
    assert (error.hop, error.service) == ("forwarder@node-1", "icmp")
    assert "offered KERNEL/LOCAL, VXLAN/REMOTE" in error.reason
    assert "forwarder@node-1 supports NOOP" in error.reason
    assert str(error).startswith("[forwarder@node-1] service 'icmp': ")


def test_negotiate_failure_other_cases() -> None:
    with pytest.raises(FailedPrecondition, match="offered nothing; f supports KERNEL, MEMIF"):
        negotiate(None, [], [KERNEL, MEMIF], hop="f")
    with pytest.raises(FailedPrecondition, match="offered KERNEL/LOCAL; f supports nothing"):
        negotiate(None, OFFERED[:1], [], hop="f")
    current = Mechanism(cls=REMOTE, type=WIREGUARD)
    with pytest.raises(FailedPrecondition) as caught:
        negotiate(current, OFFERED, [VXLAN], hop="f")
    assert "connection's mechanism WIREGUARD/REMOTE is not supported" in caught.value.reason
    assert "f supports VXLAN" in caught.value.reason


@given(
    st.lists(st.sampled_from(sorted(TYPES)), max_size=5), st.sets(st.sampled_from(sorted(TYPES)))
)
def test_negotiate_picks_first_supported(offered_types: list[str], supported: set[str]) -> None:
    offered = [Mechanism(cls=LOCAL, type=kind) for kind in offered_types]
    wanted = next((kind for kind in offered_types if kind in supported), None)
    if wanted is None:
        with pytest.raises(FailedPrecondition):
            negotiate(None, offered, sorted(supported), hop="h")
    else:
        assert negotiate(None, offered, sorted(supported), hop="h").type == wanted


# -- filtering and translation --------------------------------------------------------------------

MIXED = [
    kernel_mechanism(),
    vxlan_mechanism(),
    Mechanism(cls=LOCAL, type=MEMIF),
    Mechanism(cls=REMOTE, type=WIREGUARD),
]


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("unix:///var/lib/networkservicemesh/nsm.io.sock", True),
        ("inode://4/4026532", True),
        ("inproc://forwarder-1", True),
        ("zmq+ipc:///run/trionsm/fwd.sock", True),
        ("tcp://10.0.0.2:5001", False),
        ("zmq+tcp://10.0.0.2:5002", False),
    ],
)
def test_filter_for_url(url: str, local: bool) -> None:
    assert is_local_url(url) is local
    assert is_local_url(parse_url(url)) is local
    kept = filter_for_url(MIXED, url)
    assert kept == ([MIXED[0], MIXED[2]] if local else [MIXED[1], MIXED[3]])


def test_filter_for_url_override_and_errors() -> None:
    assert filter_for_url(MIXED, "inproc://node-2-forwarder", local=False) == [MIXED[1], MIXED[3]]
    assert filter_for_url(MIXED, "tcp://10.0.0.2:5001", local=True) == [MIXED[0], MIXED[2]]
    assert filter_by_cls(MIXED, REMOTE) == [MIXED[1], MIXED[3]]
    with pytest.raises(InvalidArgument):
        filter_for_url(MIXED, "not a url")


def test_translate_request_and_reply() -> None:
    incoming_mechanism = kernel_mechanism("inode://4/5", "nsm-1")
    request = NetworkServiceRequest(
        connection=Connection(id="c-1", network_service="icmp", mechanism=incoming_mechanism),
        mechanism_preferences=[incoming_mechanism, noop_mechanism()],
    )
    before = copy.deepcopy(request)
    outgoing_preferences = [vxlan_mechanism("10.0.0.1")]
    outgoing = translate_request(request, mechanism=None, preferences=outgoing_preferences)
    assert outgoing.connection is not None
    assert outgoing.connection.mechanism is None
    assert outgoing.connection.id == "c-1"
    assert outgoing.connection.network_service == "icmp"
    assert outgoing.mechanism_preferences == outgoing_preferences
    assert request == before

    remote = vxlan_mechanism("10.0.0.1", "10.0.0.2", vni=9)
    refresh = translate_request(request, mechanism=remote)
    assert refresh.connection is not None
    assert refresh.connection.mechanism == remote
    assert refresh.mechanism_preferences == []

    reply = Connection(id="c-1", mechanism=remote, network_service_endpoint_name="nse-1")
    upstream = translate_reply(reply, incoming_mechanism)
    assert upstream.mechanism == incoming_mechanism
    assert upstream.network_service_endpoint_name == "nse-1"
    assert reply.mechanism == remote

    bare = translate_request(NetworkServiceRequest(), mechanism=remote)
    assert bare.connection == Connection(mechanism=remote)


# -- interface names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nsm-1", "eth0", "a" * 15, "veth@if5", "é" * 7])
def test_valid_interface_names(name: str) -> None:
    check_interface_name(name)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "is empty"),
        ("a" * 16, "16 bytes long"),
        ("é" * 8, "16 bytes long"),
        (".", "'.' or '..'"),
        ("..", "'.' or '..'"),
        ("a/b", "contains '/'"),
        ("a:1", "contains ':'"),
        ("a b", "contains ' '"),
        ("a\x00", "contains '\\x00'"),
    ],
)
def test_invalid_interface_names(name: str, problem: str) -> None:
    with pytest.raises(InvalidArgument, match="interface name") as caught:
        check_interface_name(name, hop="forwarder", service="icmp")
    assert problem in caught.value.reason
    assert (caught.value.hop, caught.value.service) == ("forwarder", "icmp")


def test_default_interface_name() -> None:
    name = default_interface_name("icmp-responder", rng=random.Random(1))
    assert name.startswith("icmp-respo-")
    assert len(name) == 15
    assert name == default_interface_name("icmp-responder", rng=random.Random(1))
    assert default_interface_name("ab").startswith("ab-")
    assert default_interface_name("svc@my.cluster2", rng=random.Random(2)).startswith("svcmy.clus-")
    assert default_interface_name("@@@").startswith("nsm-")


@given(st.text(max_size=40))
def test_default_interface_name_is_always_valid(service: str) -> None:
    name = default_interface_name(service)
    check_interface_name(name)
    assert len(name) == 15
