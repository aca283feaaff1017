"""Kernel test fixtures: real network namespaces, made per test and removed by their exact names.

Addresses in these tests come from 169.254.0.0/16 and fd00::/8 only, inside namespaces the test
made; nothing is routed out of them. ``ip`` (iproute2) inspects the result independently of the
code under test.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import trio

from trionsm.api.connectioncontext import IpContext, Route
from trionsm.kernel import Netlink, NetlinkLimits, open_netlink


@attrs.define
class Host:
    """The namespaces one test made (``tnsm-<random>``) and ``ip`` commands to look into them."""

    names: list[str] = attrs.Factory(list)

    async def netns(self) -> str:
        """A new named namespace; returns its ``file:///run/netns/<name>`` URL."""
        name = f"tnsm-{secrets.token_hex(4)}"
        self.names.append(name)
        await trio.run_process(["ip", "netns", "add", name])
        return f"file:///run/netns/{name}"

    async def run(self, url: str, *args: str) -> str:
        """``ip -n <name> <args>``: its stdout."""
        name = url.removeprefix("file:///run/netns/")
        done = await trio.run_process(["ip", "-n", name, *args], capture_stdout=True)
        return done.stdout.decode()

    async def json(self, url: str, *args: str) -> list[dict[str, Any]]:
        """``ip -j -n <name> <args>``, parsed."""
        out = await self.run(url, "-j", *args)
        return list(json.loads(out)) if out.strip() else []

    async def links(self, url: str) -> dict[str, dict[str, Any]]:
        """Every link of the namespace by name (the full listing, ``lo`` included)."""
        return {link["ifname"]: link for link in await self.json(url, "link", "show")}

    async def remove(self) -> None:
        for name in self.names:
            await trio.run_process(["ip", "netns", "del", name], check=False)


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    """Namespaces for this test; deleted by exact name when it ends."""
    made = Host()
    try:
        yield made
    finally:
        with trio.CancelScope(shield=True):
            await made.remove()


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
