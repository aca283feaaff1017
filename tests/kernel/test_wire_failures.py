"""Bad input and injected failures: a typed error naming the hop and the cause, nothing left."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from tests.netns import Host
from trionsm.api.connectioncontext import IpContext, Route
from trionsm.errors import AlreadyExists, InvalidArgument, NotFound
from trionsm.kernel import (
    Lane,
    Netlink,
    NetlinkLimits,
    create_kernel_wire,
    open_netlink,
    resolve_namespace,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

Pair = Callable[..., IpContext]


async def links_of(host: Host, *urls: str) -> list[list[str]]:
    return [sorted(await host.links(url)) for url in urls]


async def test_missing_namespace(host: Host, netlink: Netlink, pair: Pair) -> None:
    client = await host.netns()
    with pytest.raises(NotFound) as caught:
        await create_kernel_wire(
            "c", client, "", "file:///run/netns/tnsm-missing", "", ip_context=pair(1),
            hop="forwarder@node-1", netlink=netlink,
        )  # fmt: skip
    assert caught.value.hop == "forwarder@node-1"
    assert "tnsm-missing" in caught.value.reason
    assert await links_of(host, client) == [["lo"]]


async def test_name_too_long_is_refused_before_any_change(
    host: Host, netlink: Netlink, pair: Pair
) -> None:
    client, endpoint = await host.netns(), await host.netns()
    with pytest.raises(InvalidArgument, match="at most 15") as caught:
        await create_kernel_wire(
            "c", client, "a-very-long-name", endpoint, "", ip_context=pair(1), hop="fwd",
            netlink=netlink,
        )  # fmt: skip
    assert caught.value.hop == "fwd"
    assert "client interface 'a-very-long-name'" in caught.value.reason
    assert await links_of(host, client, endpoint) == [["lo"], ["lo"]]


@pytest.mark.parametrize("side", ["client", "endpoint"])
async def test_name_taken(host: Host, netlink: Netlink, pair: Pair, side: str) -> None:
    client, endpoint = await host.netns(), await host.netns()
    taken = client if side == "client" else endpoint
    await host.run(taken, "link", "add", "busy", "type", "veth", "peer", "name", "busy-peer")
    with pytest.raises(AlreadyExists) as caught:
        await create_kernel_wire(
            "c", client, "busy", endpoint, "busy", ip_context=pair(1), hop="fwd", netlink=netlink
        )
    assert "'busy'" in caught.value.reason
    assert taken.removeprefix("file://") in caught.value.reason
    before = [["busy", "busy-peer", "lo"], ["lo"]]
    assert await links_of(host, taken, endpoint if taken == client else client) == before


async def test_address_conflict(host: Host, netlink: Netlink, pair: Pair) -> None:
    """The endpoint already has the address on another interface: refused, rolled back."""
    client, endpoint = await host.netns(), await host.netns()
    await host.run(endpoint, "link", "add", "other", "type", "veth", "peer", "name", "other-peer")
    await host.run(endpoint, "addr", "add", "169.254.1.2/32", "dev", "other")
    with pytest.raises(AlreadyExists, match=r"address 169\.254\.1\.2 ") as caught:
        await create_kernel_wire(
            "c", client, "", endpoint, "", ip_context=pair(1), hop="fwd", netlink=netlink
        )
    assert caught.value.hop == "fwd"
    assert await links_of(host, client, endpoint) == [["lo"], ["lo", "other", "other-peer"]]


async def test_a_kernel_refusal_late_in_the_sequence_rolls_back(
    host: Host, netlink: Netlink, pair: Pair
) -> None:
    """Two wires in one client namespace asking for the same route: the second is refused by
    the kernel (EEXIST) after its interfaces were configured, and is removed whole."""
    client, endpoint = await host.netns(), await host.netns()
    shared = Route(prefix="169.254.200.0/24")
    first, second = pair(1), pair(2)
    first.src_routes.append(shared)
    second.src_routes.append(shared)
    await create_kernel_wire("c1", client, "nsm-1", endpoint, "", ip_context=first, netlink=netlink)
    with pytest.raises(AlreadyExists, match=r"adding route 169\.254\.200\.0/24"):
        await create_kernel_wire(
            "c2", client, "nsm-2", endpoint, "", ip_context=second, hop="fwd", netlink=netlink
        )
    assert [len(names) for names in await links_of(host, client, endpoint)] == [2, 2]
    assert "nsm-2" not in await host.links(client)


async def test_cancelled_mid_way_leaves_nothing(host: Host, pair: Pair) -> None:
    """Cancel right after the pair exists (deterministically, from inside the executor)."""
    client, endpoint = await host.netns(), await host.netns()
    scope = trio.CancelScope()

    class CancelAfterFirstJob(Netlink):
        async def run(self, *args: Any, **kwargs: Any) -> Any:
            result = await super().run(*args, **kwargs)
            scope.cancel()
            return result

    executor = CancelAfterFirstJob(NetlinkLimits())
    try:
        with scope:
            await create_kernel_wire(
                "c", client, "", endpoint, "", ip_context=pair(1), netlink=executor
            )
        assert scope.cancelled_caught
    finally:
        await executor.aclose()
    assert await links_of(host, client, endpoint) == [["lo"], ["lo"]]


async def test_requests_do_not_wait_behind_teardowns(host: Host, pair: Pair) -> None:
    """Every teardown slot is held by a stuck job; a new wire is still made."""
    client, endpoint = await host.netns(), await host.netns()
    release = trio.Event()
    limits = NetlinkLimits(teardown=2, teardown_per_namespace=2)
    async with open_netlink(limits) as executor:
        namespace = await resolve_namespace(client)

        async def stuck_teardown() -> None:
            token = trio.lowlevel.current_trio_token()
            await executor.run(
                namespace, lambda _: trio.from_thread.run(release.wait, trio_token=token),
                lane=Lane.TEARDOWN,
            )  # fmt: skip

        async with trio.open_nursery() as nursery:
            for _ in range(5):  # two run, three wait for a slot
                nursery.start_soon(stuck_teardown)
            try:
                await trio.testing.wait_all_tasks_blocked()
                with trio.fail_after(10):
                    wire = await create_kernel_wire(
                        "c", client, "", endpoint, "", ip_context=pair(1), netlink=executor
                    )
                assert executor.statistics().jobs == 5  # the teardowns are all still there
            finally:
                release.set()  # else the stuck jobs would hold the test forever
        assert wire.client.ifname == "nsm-1"
