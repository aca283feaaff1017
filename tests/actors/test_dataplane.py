"""The KERNEL data plane's pure parts: the wire a forwarder plans, names, and the client's check."""

from __future__ import annotations

from typing import Any

import pytest

from trionsm.actors._dataplane import DataPlane
from trionsm.actors._liveness import choose_liveness
from trionsm.actors._mechanisms import (
    endpoint_interface_name,
    kernel_mechanism,
    noop_mechanism,
    with_parameters,
)
from trionsm.api.connection import Connection
from trionsm.api.connectioncontext import ConnectionContext, IpContext
from trionsm.errors import FailedPrecondition, InvalidArgument

CLIENT = "file:///run/netns/client"
ENDPOINT = "file:///run/netns/endpoint"


def plan(incoming: Any, outgoing: Any, context: ConnectionContext | None = None) -> Any:
    return DataPlane().plan(
        "conn-1", incoming, outgoing, context, hop="forwarder-0", service="icmp"
    )


def test_plan_joins_the_two_mechanisms_and_takes_the_smallest_mtu() -> None:
    context = ConnectionContext(ip_context=IpContext(src_ip_addrs=["169.254.0.1/32"]), mtu=1450)
    spec = DataPlane().plan(
        "conn-1",
        kernel_mechanism(CLIENT, mtu=1400),
        kernel_mechanism(ENDPOINT, "nse-if", mtu=1500),
        context,
        hop="forwarder-0",
        service="icmp",
    )
    assert (spec.client_netns, spec.client_ifname) == (CLIENT, "nsm-1")  # NSM's default name
    assert (spec.endpoint_netns, spec.endpoint_ifname) == (ENDPOINT, "nse-if")
    assert spec.mtu == 1400
    assert spec.ip_context is context.ip_context
    same = DataPlane().plan(
        "conn-1",
        kernel_mechanism(CLIENT, "nsm-1", mtu=1400),
        kernel_mechanism(ENDPOINT, "nse-if", mtu=1500),
        ConnectionContext(ip_context=IpContext(src_ip_addrs=["169.254.0.1/32"]), mtu=1450),
        hop="forwarder-0",
        service="icmp",
    )
    assert same == spec  # a refresh: the same wire
    moved = DataPlane().plan(
        "conn-1",
        kernel_mechanism(CLIENT),
        kernel_mechanism(ENDPOINT, "nse-if"),
        ConnectionContext(ip_context=IpContext(src_ip_addrs=["169.254.0.3/32"])),
        hop="forwarder-0",
        service="icmp",
    )
    assert moved != spec
    assert moved.mtu == 0


@pytest.mark.parametrize(
    ("incoming", "outgoing", "error", "words"),
    [
        (kernel_mechanism(), kernel_mechanism(ENDPOINT, "e"), InvalidArgument, "client's KERNEL"),
        (kernel_mechanism(CLIENT), kernel_mechanism("", "e"), InvalidArgument, "endpoint's KERNEL"),
        (kernel_mechanism(CLIENT), kernel_mechanism(ENDPOINT), InvalidArgument, "no interface"),
        (kernel_mechanism(CLIENT), noop_mechanism(), FailedPrecondition, "with NOOP/LOCAL"),
        (kernel_mechanism(CLIENT), None, FailedPrecondition, r"with \(none\)"),
        (
            with_parameters(kernel_mechanism(CLIENT), {"MTU": "big"}),
            kernel_mechanism(ENDPOINT, "e"),
            InvalidArgument,
            "MTU 'big'",
        ),
        (
            kernel_mechanism(CLIENT),
            with_parameters(kernel_mechanism(ENDPOINT), {"name": "x" * 16}),
            InvalidArgument,
            "the endpoint end: interface name",
        ),
    ],
)
def test_plan_refuses_what_cannot_be_a_wire(
    incoming: Any, outgoing: Any, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words) as caught:
        plan(incoming, outgoing)
    assert getattr(caught.value, "hop", None) == "forwarder-0"
    assert getattr(caught.value, "service", None) == "icmp"


def test_the_endpoint_interface_name_is_stable_short_and_per_connection() -> None:
    name = endpoint_interface_name("3f1c0a5e-0000-4000-8000-000000000001")
    assert len(name) == 15
    assert name.startswith("nsm-")
    assert name == endpoint_interface_name("3f1c0a5e-0000-4000-8000-000000000001")
    assert name != endpoint_interface_name("3f1c0a5e-0000-4000-8000-000000000002")


async def test_the_client_gets_the_kernel_check_by_default_only_with_kernel_and_a_namespace() -> (
    None
):
    async def mine(connection: Connection) -> bool:
        return True

    kernel, noop = kernel_mechanism(CLIENT), noop_mechanism()
    options: dict[str, Any] = {"timeout": 1.0, "netlink": None}
    assert choose_liveness(None, kernel, netns=CLIENT, **options) is not None
    assert choose_liveness(True, kernel, netns=CLIENT, **options) is not None
    assert choose_liveness(False, kernel, netns=CLIENT, **options) is None
    assert choose_liveness(mine, kernel, netns=CLIENT, **options) is mine
    assert choose_liveness(None, noop, netns=None, **options) is None
    assert choose_liveness(None, kernel, netns=None, **options) is None
    with pytest.raises(InvalidArgument, match="liveness=True"):
        choose_liveness(True, noop, netns=None, **options)
    check = choose_liveness(None, kernel, netns=CLIENT, **options)
    assert check is not None
    assert await check(Connection(mechanism=noop))  # NSM: other mechanisms count as alive
