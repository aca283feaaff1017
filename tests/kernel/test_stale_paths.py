"""A namespace outlives the path it was recorded by: its wires are still found and removed.

An NSC names its namespace ``file:///proc/<pid>/ns/net``; when the NSC dies, that path goes (or,
with its pid reused, names another namespace), but the pod's namespace lives on, and so does the
wire end the forwarder made in it. Every later use of the recorded namespace (removal, the
whole-wire check, inspection for adoption) must find it again by its inode instead of taking the
stale path for a deleted namespace, which would leak the end and its VNI for good. Here the pod is
a named namespace (``ip netns add``) and the NSC a ``sleep`` started in it with ``ip netns exec``,
killed by its exact PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from tests.kernel.test_namespace_lifetime import name_of
from tests.netns import Host
from trionsm.errors import NotFound
from trionsm.kernel import (
    Interface,
    KernelWire,
    Netlink,
    WireEnd,
    alias_for,
    check_wire,
    create_kernel_wire,
    inspect_wire,
    lookup,
    plan_wire,
    remove_interfaces,
    resolve_namespace,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

BOUND = 10.0
"""Seconds any step may take before the test fails (a hang guard: each takes milliseconds)."""


@asynccontextmanager
async def process_in(url: str) -> AsyncIterator[trio.Process]:
    """A ``sleep`` running in the named namespace ``url`` (killed by its PID on exit)."""
    command = ["ip", "netns", "exec", name_of(url), "sh", "-c", "echo ready; exec sleep 60"]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        with trio.fail_after(BOUND):
            assert await process.stdout.receive_some() == b"ready\n"  # in the namespace now
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


async def kill(process: trio.Process) -> None:
    process.send_signal(signal.SIGKILL)
    with trio.fail_after(BOUND):
        await process.wait()


async def recorded_after_its_process(netlink: Netlink, url: str, ifname: str) -> Interface:
    """``ifname`` in the namespace ``url`` as read through the ``/proc/<pid>/ns/net`` path of a
    process in it, and that process killed: the interface's recorded path is stale."""
    async with process_in(url) as process:
        namespace = await resolve_namespace(f"file:///proc/{process.pid}/ns/net")
        assert namespace.key == (await resolve_namespace(url)).key
        end = await lookup(namespace, ifname, netlink=netlink)
        assert end is not None
        await kill(process)
    assert not await trio.Path(namespace.path).exists()
    return end


async def aliased_veth(host: Host, url: str, ifname: str, alias: str) -> None:
    """A veth pair ``ifname`` / ``peer-<ifname>`` in ``url``, ``ifname`` carrying ``alias``."""
    await host.run(url, "link", "add", ifname, "type", "veth", "peer", "name", f"peer-{ifname}")
    await host.run(url, "link", "set", ifname, "alias", alias)


async def test_an_end_in_a_namespace_that_outlived_its_recorded_path_is_removed(
    host: Host, netlink: Netlink
) -> None:
    url = await host.netns()
    alias = alias_for("stale-1")
    await aliased_veth(host, url, "nsm-1", alias)
    end = await recorded_after_its_process(netlink, url, "nsm-1")

    with trio.fail_after(BOUND):
        assert await remove_interfaces([(end.namespace, end.index, alias)], netlink=netlink) == 1
    assert "nsm-1" not in await host.links(url)
    assert "peer-nsm-1" not in await host.links(url)


async def test_a_vxlan_end_in_a_namespace_that_outlived_its_recorded_path_is_removed(
    host: Host, netlink: Netlink
) -> None:
    """The case that leaks for good: a lone end (no peer takes it along) holding its VNI."""
    url = await host.netns()
    alias = alias_for("stale-2", "forwarder-1")
    add = ["link", "add", "nsm-2", "type", "vxlan", "id", "4242", "dstport", "4789"]
    await host.run(url, *add)
    await host.run(url, "link", "set", "nsm-2", "alias", alias)
    end = await recorded_after_its_process(netlink, url, "nsm-2")
    assert end.tunnel is not None
    assert end.tunnel.vni == 4242

    with trio.fail_after(BOUND):
        assert await remove_interfaces([end], netlink=netlink) == 1
    assert "nsm-2" not in await host.links(url)
    # the VNI is free again: a new end with it can be made in the namespace
    await host.run(url, *add)


async def test_a_wire_in_namespaces_that_outlived_their_recorded_paths_is_whole(
    host: Host, netlink: Netlink
) -> None:
    """The whole-wire check and the inspection for adoption find the namespaces again too."""
    client_url, endpoint_url = await host.netns(), await host.netns()
    plan = plan_wire("stale-3", "nsm-3", "nse-3", mtu=0, ip_context=None, hop=None)
    async with process_in(client_url) as nsc, process_in(endpoint_url) as nse:
        client = await resolve_namespace(f"file:///proc/{nsc.pid}/ns/net")
        endpoint = await resolve_namespace(f"file:///proc/{nse.pid}/ns/net")
        wire = await create_kernel_wire(
            "stale-3", client, "nsm-3", endpoint, "nse-3", netlink=netlink
        )
        await kill(nsc)
        await kill(nse)

    with trio.fail_after(BOUND):
        assert await check_wire(wire, netlink=netlink)
        seen = await inspect_wire(plan, client, endpoint, netlink=netlink)
    assert seen.difference == ""
    assert seen.wire is not None
    assert seen.wire.client.index == wire.client.index
    assert seen.wire.endpoint.index == wire.endpoint.index


async def test_a_namespace_no_path_names_any_more_counts_as_gone(
    host: Host, netlink: Netlink
) -> None:
    """Deleted for real: removal is a no-op, the check says the wire is broken, a job NotFound."""
    url = await host.netns()
    alias = alias_for("stale-4")
    await aliased_veth(host, url, "nsm-4", alias)
    end = await recorded_after_its_process(netlink, url, "nsm-4")
    namespace = end.namespace
    netlink.forget(namespace)
    await trio.run_process(["ip", "netns", "del", name_of(url)])  # only our handles hold it now
    peer = WireEnd(namespace, "peer-nsm-4", end.index + 1)
    wire = KernelWire("stale-4", WireEnd(namespace, "nsm-4", end.index), peer, 0)

    with trio.fail_after(BOUND):
        assert await remove_interfaces([(namespace, end.index, alias)], netlink=netlink) == 0
        assert not await check_wire(wire, netlink=netlink)
        with pytest.raises(NotFound, match=namespace.path):
            await netlink.run(namespace, lambda _: None, hop="test")
