"""The executor: handle threads per namespace, lanes, limits, idle retirement, error translation."""

from __future__ import annotations

import os
import threading

import pytest
import trio
import trio.testing

from tests.netns import Host
from trionsm.errors import NotFound, Unavailable
from trionsm.kernel import Lane, Namespace, NetlinkLimits, open_netlink, resolve_namespace
from trionsm.kernel._handles import Handle, step

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def here() -> tuple[int, int]:
    """The calling thread's network namespace."""
    stat = os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net")
    return stat.st_dev, stat.st_ino


async def test_jobs_run_in_the_namespace_on_threads_of_their_own(host: Host) -> None:
    namespace = await resolve_namespace(await host.netns())
    before = here()
    async with open_netlink() as netlink:
        seen = await netlink.run(
            namespace, lambda _: (here(), threading.current_thread().name), lane=Lane.PROBE
        )
    assert seen[0] == namespace.key
    assert seen[1] == f"trionsm-netns-{namespace.ino}"
    assert here() == before  # the Trio thread never moves
    for _ in range(4):  # nor do Trio's worker threads
        assert await trio.to_thread.run_sync(here) == before


async def test_kernel_errors_name_the_step_the_cause_and_the_hop(host: Host) -> None:
    namespace = await resolve_namespace(await host.netns())

    def missing(handle: Handle) -> None:
        with step(f"reading interface #4242 in {handle.namespace}"):
            handle.ipr.link("get", index=4242)

    async with open_netlink() as netlink:
        with pytest.raises(NotFound) as caught:
            await netlink.run(namespace, missing, hop="forwarder@node-1")
        assert netlink.statistics().idle_handles == 1  # an expected failure keeps the handle
    assert caught.value.hop == "forwarder@node-1"
    assert caught.value.reason.startswith(f"reading interface #4242 in {namespace.url}: ")
    assert caught.value.reason.endswith("(ENODEV)")


async def test_a_namespace_that_cannot_be_entered_leaves_no_thread(host: Host) -> None:
    url = await host.netns()
    namespace = await resolve_namespace(url)
    gone = Namespace(url="file:///run/netns/tnsm-gone", path="/run/netns/tnsm-gone", dev=0, ino=1)
    async with open_netlink() as netlink:
        with pytest.raises(NotFound, match="tnsm-gone"):
            await netlink.run(gone, lambda _: None, hop="test")
        assert netlink.statistics().handles == 0
        assert await netlink.run(namespace, lambda _: 42) == 42


async def test_per_namespace_capacity_bounds_concurrent_jobs(host: Host) -> None:
    namespace = await resolve_namespace(await host.netns())
    limits = NetlinkLimits(setup_per_namespace=3)
    release, three = trio.Event(), trio.Event()
    running = peak = 0

    async def inside() -> None:  # runs in Trio, called from a job's handle thread
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            three.set()
        await release.wait()
        running -= 1

    async with open_netlink(limits) as netlink:

        async def one() -> None:
            token = trio.lowlevel.current_trio_token()
            await netlink.run(namespace, lambda _: trio.from_thread.run(inside, trio_token=token))

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(one)
            try:
                with trio.fail_after(10):
                    await three.wait()
                await trio.testing.wait_all_tasks_blocked()
                stats = netlink.statistics()
                assert (running, stats.handles, stats.jobs) == (3, 3, 8)
            finally:
                release.set()  # else the stuck jobs would hold the test forever
        assert peak == 3
        assert netlink.statistics().idle_handles == 3


async def test_idle_handles_retire_and_forget_closes_them_now(host: Host) -> None:
    first = await resolve_namespace(await host.netns())
    second = await resolve_namespace(await host.netns())
    async with open_netlink(NetlinkLimits(idle_timeout=0.05)) as netlink:
        await netlink.run(first, lambda _: None)
        with trio.fail_after(10):
            for _ in range(1000):
                if netlink.statistics().handles == 0:
                    break
                await trio.sleep(0.01)
        assert netlink.statistics().handles == 0
    async with open_netlink() as netlink:
        await netlink.run(second, lambda _: None)
        assert netlink.statistics().handles == 1
        netlink.forget(second)
        assert netlink.statistics().handles == 0
        assert await netlink.run(second, lambda _: "again") == "again"


async def test_a_closed_executor_refuses_work(host: Host) -> None:
    namespace = await resolve_namespace(await host.netns())
    async with open_netlink() as netlink:
        await netlink.run(namespace, lambda _: None)
    assert netlink.statistics().handles == 0
    with pytest.raises(Unavailable, match="closed"):
        await netlink.run(namespace, lambda _: None, hop="test")


async def test_works_beside_trio_asyncio(host: Host) -> None:
    """Once trio-asyncio runs a loop, sync pyroute2 in the Trio thread breaks; ours does not."""
    import trio_asyncio

    namespace = await resolve_namespace(await host.netns())
    async with trio_asyncio.open_loop(), open_netlink() as netlink:
        links = await netlink.run(
            namespace, lambda h: [x.get("ifname") for x in h.ipr.link("dump")]
        )
    assert links == ["lo"]
