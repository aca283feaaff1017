"""The VXLAN side of the data plane's pure parts: each forwarder's end, as planned from the
mechanisms (no kernel)."""

from __future__ import annotations

from typing import Any

import pytest

from trionsm.actors._dataplane import DataPlane, VxlanSpec
from trionsm.actors._mechanisms import kernel_mechanism, noop_mechanism, vxlan_mechanism
from trionsm.api.connectioncontext import ConnectionContext, IpContext
from trionsm.errors import FailedPrecondition, InvalidArgument

CLIENT = "file:///run/netns/client"
ENDPOINT = "file:///run/netns/endpoint"
UNDERLAY = "file:///run/netns/underlay"
TUNNEL = vxlan_mechanism("169.254.200.1", "169.254.200.2", dst_port=4790, vni=42, mtu=1450)


def plan(side: Any, workload: Any, tunnel: Any, context: Any = None) -> VxlanSpec:
    return DataPlane().plan_vxlan(
        "conn-1", side, workload, tunnel, context,
        underlay_netns=UNDERLAY, hop="forwarder-0", service="icmp",
    )  # fmt: skip


def test_each_side_takes_its_workload_and_its_own_tunnel_address() -> None:
    context = ConnectionContext(ip_context=IpContext(src_ip_addrs=["169.254.0.1/32"]), mtu=1500)
    near = plan("client", kernel_mechanism(CLIENT, mtu=1400), TUNNEL, context)
    assert (near.netns, near.ifname, near.underlay_netns) == (CLIENT, "nsm-1", UNDERLAY)
    assert (near.local_ip, near.remote_ip, near.vni, near.port) == (
        "169.254.200.1",
        "169.254.200.2",
        42,
        4790,
    )
    assert near.mtu == 1400  # the smallest the mechanisms and the context give
    assert near.ip_context is context.ip_context
    far = plan("endpoint", kernel_mechanism(ENDPOINT, "nse-if"), TUNNEL)
    assert (far.netns, far.ifname) == (ENDPOINT, "nse-if")
    assert (far.local_ip, far.remote_ip) == ("169.254.200.2", "169.254.200.1")
    assert far.mtu == 1450
    assert plan("endpoint", kernel_mechanism(ENDPOINT, "nse-if"), TUNNEL) == far  # a refresh
    assert "nse-if in file:///run/netns/endpoint over VXLAN 42" in far.description
    assert (far.namespaces, far.ifnames) == ((ENDPOINT,), ("nse-if",))
    default = plan("client", kernel_mechanism(CLIENT), vxlan_mechanism("a", "b", vni=4))
    assert default.port == 4789  # NSM's default


@pytest.mark.parametrize(
    ("workload", "tunnel", "error", "words"),
    [
        (kernel_mechanism(CLIENT), None, FailedPrecondition, r"VXLAN request with \(none\)"),
        (kernel_mechanism(CLIENT), noop_mechanism(), FailedPrecondition, "with NOOP/LOCAL"),
        (noop_mechanism(), TUNNEL, FailedPrecondition, "KERNEL request with NOOP/LOCAL"),
        (kernel_mechanism(CLIENT), vxlan_mechanism("a", vni=1), InvalidArgument, "no dst_ip"),
        (kernel_mechanism(CLIENT), vxlan_mechanism(dst_ip="b", vni=1), InvalidArgument, "src_ip"),
        (kernel_mechanism(CLIENT), vxlan_mechanism("a", "b"), InvalidArgument, "vni ''"),
        (kernel_mechanism(), TUNNEL, InvalidArgument, "names no network namespace"),
    ],
)
def test_bad_mechanisms_are_refused_naming_what_is_wrong(
    workload: Any, tunnel: Any, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words) as caught:
        plan("client", workload, tunnel)
    assert "[forwarder-0] service 'icmp'" in str(caught.value)


def test_a_bad_port_is_refused() -> None:
    tunnel = vxlan_mechanism("a", "b", vni=2)
    tunnel.parameters["dst_port"] = "99999"
    with pytest.raises(InvalidArgument, match="dst_port '99999'"):
        plan("client", kernel_mechanism(CLIENT), tunnel)
