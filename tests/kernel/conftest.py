"""Kernel test fixtures: an executor, and point-to-point addresses for wires.

The namespaces come from the suite-wide ``host`` fixture (tests/conftest.py, tests/netns.py):
real network namespaces, made per test and removed by their exact names. Addresses in these
tests come from 169.254.0.0/16 and fd00::/8 only, inside namespaces the test made; nothing is
routed out of them. ``ip`` (iproute2) inspects the result independently of the code under test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from tests.netns import Host
from trionsm.api.connectioncontext import IpContext, Route
from trionsm.kernel import Netlink, NetlinkLimits, open_netlink


@pytest.fixture
async def netlink(host: Host) -> AsyncIterator[Netlink]:
    """An executor closed before ``host`` removes the namespaces (no thread holds them then)."""
    async with open_netlink(NetlinkLimits(idle_timeout=5.0)) as executor:
        yield executor


@pytest.fixture
def pair() -> Callable[..., IpContext]:
    """``pair(i, routes=True)``: the IPContext of wire ``i``."""
    return pair_context


def pair_context(i: int, *, routes: bool = True) -> IpContext:
    """Point-to-point addresses for wire ``i`` (0..254), as NSM's point2pointipam hands out."""
    src4, dst4 = f"169.254.{i}.1", f"169.254.{i}.2"
    src6, dst6 = f"fd00::{i:x}:1", f"fd00::{i:x}:2"
    context = IpContext(
        src_ip_addrs=[f"{src4}/32", f"{src6}/128"], dst_ip_addrs=[f"{dst4}/32", f"{dst6}/128"]
    )
    if routes:
        context.src_routes = [Route(prefix=f"{dst4}/32"), Route(prefix=f"{dst6}/128")]
        context.dst_routes = [Route(prefix=f"{src4}/32"), Route(prefix=f"{src6}/128")]
    return context
