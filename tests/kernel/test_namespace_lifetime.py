"""A deleted namespace is let go of: nothing of ours keeps it, or the wire end inside it, alive.

A namespace lives as long as a thread sits in it or a socket made in it is open. The executor's
handle threads and their netlink sockets, and the sockets of liveness pings, are such holders: a
pod's namespace deleted while we hold it would live on with its interfaces, and the other end of
its wire would keep answering pings. Here the namespaces are deleted by their exact names with
``ip netns del``, as a dying pod's would be, while the executor has idle handles in them.
:func:`holders` looks for every thread and every socket of this process in a namespace (a socket's
namespace comes from the ``SIOCGSKNS`` ioctl). Addresses come from 169.254.0.0/16 only.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import threading
import time

import pytest
import trio

from tests.kernel.conftest import pair_context
from tests.kernel.test_mesh_kernel import eventually
from tests.netns import Host
from trionsm.actors.client import ClientConnection
from trionsm.errors import NotFound
from trionsm.kernel import (
    Namespace,
    Netlink,
    NetlinkLimits,
    create_kernel_wire,
    open_netlink,
    ping,
    resolve_namespace,
)
from trionsm.kernel._handles import Handle
from trionsm.scenario import open_mesh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

BOUND = 10.0
"""Seconds a release may take before the test fails (a hang guard: it takes about 0.1 s)."""

_SIOCGSKNS = 0x894C  # ioctl(2) on a socket: a descriptor of the namespace it was made in


def holders(key: tuple[int, int]) -> list[str]:
    """The threads and sockets of this process that sit in the namespace ``key``."""
    found = []
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = os.stat(f"/proc/self/task/{tid}/ns/net")
        except FileNotFoundError:  # the thread just exited
            continue
        if (stat.st_dev, stat.st_ino) == key:
            found.append(f"thread {tid}")
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            namespace = fcntl.ioctl(int(fd), _SIOCGSKNS)
        except OSError:  # closed meanwhile
            continue
        try:
            stat = os.fstat(namespace)
        finally:
            os.close(namespace)
        if (stat.st_dev, stat.st_ino) == key:
            found.append(f"socket fd {fd}")
    return found


def here() -> tuple[int, int]:
    stat = os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net")
    return stat.st_dev, stat.st_ino


def name_of(url: str) -> str:
    return url.removeprefix("file:///run/netns/")


async def until_released(key: tuple[int, int]) -> None:
    """Wait until no thread or socket of ours sits in ``key`` (bounded by the caller)."""

    async def released() -> bool:
        return not holders(key)

    await eventually(released)


async def test_a_deleted_namespace_and_its_wire_end_go_though_handles_idle_in_it(
    host: Host,
) -> None:
    client_url, endpoint_url = await host.netns(), await host.netns()
    endpoint = await resolve_namespace(endpoint_url)
    # handles never retire by age here: only noticing that the namespace lost its name helps
    async with open_netlink(NetlinkLimits(idle_timeout=600.0)) as netlink:
        wire = await create_kernel_wire(
            "gone-1", client_url, "nsm-1", endpoint_url, "", ip_context=pair_context(1),
            netlink=netlink,
        )  # fmt: skip
        assert await ping(client_url, "169.254.1.2", netlink=netlink)
        assert holders(endpoint.key)  # idle handle threads and their sockets
        assert wire.endpoint.namespace.key == endpoint.key

        await trio.run_process(["ip", "netns", "del", name_of(endpoint_url)])
        with trio.fail_after(BOUND):
            await until_released(endpoint.key)

            async def peer_gone() -> bool:  # the namespace really went, and its end with it
                return "nsm-1" not in await host.links(client_url)

            await eventually(peer_gone)
        assert not await ping(client_url, "169.254.1.2", timeout=0.2, netlink=netlink)
        with pytest.raises(NotFound, match=name_of(endpoint_url)):
            await netlink.run(endpoint, lambda _: None, hop="test")


async def test_a_pod_process_namespace_goes_with_its_process() -> None:
    """A namespace only a process holds (``/proc/<pid>/ns/net``): killing the process frees it."""
    command = ["unshare", "--net", "sh", "-c", "echo ready; exec sleep 60"]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        with trio.fail_after(BOUND):
            assert await process.stdout.receive_some() == b"ready\n"  # in its namespace now
        namespace = await resolve_namespace(f"file:///proc/{process.pid}/ns/net")
        async with open_netlink(NetlinkLimits(idle_timeout=600.0)) as netlink:
            assert await netlink.run(namespace, lambda _: here()) == namespace.key
            process.send_signal(signal.SIGKILL)
            await process.wait()
            with trio.fail_after(BOUND):
                await until_released(namespace.key)
            with pytest.raises(NotFound, match=f"/proc/{process.pid}/ns/net"):
                await netlink.run(namespace, lambda _: None, hop="test")
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


async def test_a_namespace_made_again_under_its_name_is_never_served_by_an_old_handle(
    host: Host,
) -> None:
    client_url, endpoint_url = await host.netns(), await host.netns()
    old = await resolve_namespace(endpoint_url)
    # neither age nor the watch retires handles here: the check at checkout must catch it
    limits = NetlinkLimits(idle_timeout=600.0, watch_interval=600.0)
    async with open_netlink(limits) as netlink:
        assert await netlink.run(old, lambda _: here()) == old.key
        await trio.run_process(["ip", "netns", "del", name_of(endpoint_url)])
        await trio.run_process(["ip", "netns", "add", name_of(endpoint_url)])

        with pytest.raises(NotFound, match=f"{name_of(endpoint_url)} is gone") as caught:
            await netlink.run(old, lambda _: here(), hop="forwarder@node-1")
        assert caught.value.hop == "forwarder@node-1"
        with trio.fail_after(BOUND):  # the old handles were let go of at once
            await until_released(old.key)
        new = await resolve_namespace(endpoint_url)
        assert new.key != old.key
        assert await netlink.run(new, lambda _: here()) == new.key
        await create_kernel_wire(
            "again-1", client_url, "nsm-1", endpoint_url, "", ip_context=pair_context(2),
            netlink=netlink,
        )  # fmt: skip
        assert await ping(client_url, "169.254.2.2", netlink=netlink)
        assert len(await host.links(endpoint_url)) == 2  # lo and the new wire's end


async def test_our_own_handle_threads_never_name_a_deleted_namespace(host: Host) -> None:
    """An ``inode://`` URL (or a reconcile's scan of the host) must not find a namespace through
    the handle threads that sit in it: that would keep it alive for ever."""
    url = await host.netns()
    namespace = await resolve_namespace(url)
    async with open_netlink(NetlinkLimits(idle_timeout=600.0, watch_interval=600.0)) as netlink:
        await netlink.run(namespace, lambda _: None)
        assert any(h.startswith("thread") for h in holders(namespace.key))
        await trio.run_process(["ip", "netns", "del", name_of(url)])
        with pytest.raises(NotFound, match="no namespace with that inode"):
            await resolve_namespace(namespace.inode_url)
        assert namespace.key not in {n.key for n in await scan_namespaces_on_host()}


async def scan_namespaces_on_host() -> list[Namespace]:
    """Every namespace reconcile would visit."""
    from trionsm.kernel._reconcile import _host_namespaces

    return await trio.to_thread.run_sync(_host_namespaces)


async def test_forget_retires_busy_handles_when_their_jobs_end(host: Host) -> None:
    namespace = await resolve_namespace(await host.netns())
    started, release = trio.Event(), trio.Event()

    async with open_netlink(NetlinkLimits(idle_timeout=600.0)) as netlink:
        token = trio.lowlevel.current_trio_token()

        def blocked(_: object) -> str:
            trio.from_thread.run_sync(started.set, trio_token=token)
            trio.from_thread.run(release.wait, trio_token=token)
            return "done"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(netlink.run, namespace, blocked)
            await started.wait()
            netlink.forget(namespace)
            release.set()
        assert netlink.statistics().handles == 0
        with trio.fail_after(BOUND):
            await until_released(namespace.key)
        assert await netlink.run(namespace, lambda _: here()) == namespace.key


async def test_pings_leave_no_socket_in_the_namespace(host: Host) -> None:
    url = await host.netns()
    namespace = await resolve_namespace(url)
    await host.run(url, "link", "set", "lo", "up")
    async with open_netlink(NetlinkLimits(idle_timeout=600.0)) as netlink:
        assert await ping(url, "127.0.0.1", netlink=netlink)
        assert not await ping(url, "169.254.9.9", timeout=0.1, netlink=netlink)  # no route
        await host.run(url, "route", "add", "169.254.9.0/24", "dev", "lo")
        with trio.move_on_after(0.1):  # cancelled while waiting for an answer
            await ping(url, "169.254.9.9", timeout=60.0, netlink=netlink)
        netlink.forget(namespace)
        with trio.fail_after(BOUND):
            await until_released(namespace.key)


async def test_a_pod_namespace_deleted_under_the_mesh_stops_answering_at_once(
    host: Host,
) -> None:
    client_url, endpoint_url = await host.netns(), await host.netns()
    endpoint = await resolve_namespace(endpoint_url)
    async with open_mesh(kernel=True) as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.120.0/24", netns=endpoint_url)
        with trio.fail_after(BOUND * 3):
            async with mesh.connect("kernel://icmp/nsm-1", netns=client_url) as conn:
                assert await answers(mesh.netlink, client_url, conn)
                await trio.run_process(["ip", "netns", "del", name_of(endpoint_url)])

                async def silent() -> bool:
                    return not await answers(mesh.netlink, client_url, conn)

                with trio.fail_after(BOUND / 2):  # below the executor's old 10 s idle timeout
                    await eventually(silent)
                    await until_released(endpoint.key)


async def answers(netlink: Netlink | None, client_url: str, conn: ClientConnection) -> bool:
    """Whether the endpoint's first address answers a ping from the client's namespace."""
    assert conn.connection is not None
    assert conn.connection.context is not None
    ip_context = conn.connection.context.ip_context
    assert ip_context is not None
    target = ip_context.dst_ip_addrs[0].split("/")[0]
    return await ping(client_url, target, timeout=0.2, netlink=netlink)


async def test_close_joins_handles_retired_before_it(host: Host) -> None:
    """Handles retired by :meth:`Netlink.forget`, by a forget while busy, or by a job that failed
    unexpectedly are stopped but still closing when ``aclose`` starts: it must wait for them too.
    Each closes its socket slowly here (fault injection), so an unjoined one is still seen."""
    idle, busy, failed = [await resolve_namespace(await host.netns()) for _ in range(3)]

    def slow_close(handle: Handle) -> None:
        close = handle.ipr.close

        def closing() -> None:
            time.sleep(0.2)  # fault injection: the handle takes a while to let go
            close()

        handle.ipr.close = closing

    def broken(handle: Handle) -> None:
        slow_close(handle)
        raise RuntimeError("fault injection: a job failing unexpectedly retires its handle")

    netlink = Netlink(NetlinkLimits(idle_timeout=600.0, watch_interval=600.0))
    with trio.fail_after(BOUND):
        await netlink.run(idle, slow_close)
        netlink.forget(idle)  # stopped at once, not joined

        started, release = trio.Event(), trio.Event()
        token = trio.lowlevel.current_trio_token()

        def blocked(handle: Handle) -> None:
            slow_close(handle)
            trio.from_thread.run_sync(started.set, trio_token=token)
            trio.from_thread.run(release.wait, trio_token=token)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(netlink.run, busy, blocked)
            await started.wait()
            netlink.forget(busy)  # retired when its job ends
            release.set()
        with pytest.raises(RuntimeError, match="fault injection"):
            await netlink.run(failed, broken)

        await netlink.aclose()
    named = [("idle", idle), ("busy", busy), ("failed", failed)]
    sockets = {name: [h for h in holders(n.key) if h.startswith("socket")] for name, n in named}
    assert sockets == {"idle": [], "busy": [], "failed": []}
    # A joined thread's kernel task may outlive join() by a moment (Python releases the join
    # just before the OS thread exits), so the threads are waited for, briefly and bounded. An
    # unjoined handle is caught above: its socket is still open (its close is held 0.2 s).
    with trio.fail_after(BOUND):
        while True:  # polling /proc: nothing signals a kernel task's exit
            if not any(holders(n.key) for _, n in named):
                break
            await trio.sleep(0.01)
