"""KERNEL wires through a mesh of processes: every role a ``python -m trionsm.cli`` process.

Registry, nsmgr, forwarder (``--mechanism kernel``), ICMP-responder NSEs (``--netns``) and the
NSC (``kernel://... --netns``) talk gRPC over unix sockets; the interfaces live in namespaces the
mesh made (``tnsm-<random>``, deleted by their exact names). Pings go through ``ip netns exec
... ping`` (iputils), independent of the code under test. Real clock; every step bounded.
Addresses come from 169.254.0.0/16 and fd00::/8 only. Each test ends with ``mesh.leaks() ==
[]``: no process, socket, wire (``trionsm:`` alias) or namespace left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from typing import Any

import pytest
import trio

from trionsm.scenario import ProcessMesh, open_process_mesh

from .test_processes import bad_flag_failures

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

BOUND = 90.0
"""Seconds a whole test may take (processes start in about a second; a heal takes a few)."""
POOLS = {
    "nse-1": ["169.254.110.0/24", "fd00::110:0/120"],
    "nse-2": ["169.254.111.0/24", "fd00::111:0/120"],
}


def event(line: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def hosts(addresses: list[str]) -> list[str]:
    return [address.split("/")[0] for address in addresses]


async def pings(netns: str, address: str) -> bool:
    """One ICMP echo from inside ``netns`` (``ip netns exec NAME ping``), answered in 2 s."""
    name = netns.removeprefix("file:///run/netns/")
    flag = "-6" if ":" in address else "-4"
    done = await trio.run_process(
        ["ip", "netns", "exec", name, "ping", flag, "-c", "1", "-W", "2", address],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode == 0


async def links(netns: str) -> dict[str, dict[str, Any]]:
    name = netns.removeprefix("file:///run/netns/")
    done = await trio.run_process(["ip", "-j", "-n", name, "link", "show"], capture_stdout=True)
    return {link["ifname"]: link for link in json.loads(done.stdout)}


async def kernel_node(mesh: ProcessMesh, nse_netns: str, mtu: int | None = None) -> None:
    """A registry process, nsmgr-0 on it, forwarder-0 (KERNEL) and nse-1 in ``nse_netns``."""
    await mesh.add_registry()
    await mesh.add_nsmgr("nsmgr-0", registry="registry")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(mesh.add_forwarder, "forwarder-0", nsmgr="nsmgr-0"))
        nursery.start_soon(
            partial(
                mesh.add_endpoint,
                "nse-1",
                "icmp",
                nsmgr="nsmgr-0",
                cidr=POOLS["nse-1"],
                netns=nse_netns,
                mtu=mtu,
            )
        )


async def stop_all(mesh: ProcessMesh, *roles: str) -> None:
    for role in roles:
        assert await mesh.stop(role) == 0, mesh[role].stderr


async def test_kernel_wire_pings_heals_after_the_endpoint_dies_and_goes_on_close() -> None:
    """NSC process -> nsmgr -> forwarder -> NSE process over a veth wire: pings both ways in
    IPv4 and IPv6; SIGKILL of the NSE (and its pod's namespace) -> the NSC process heals onto a
    second NSE process; SIGTERM of the NSC removes both ends of the wire."""
    with trio.fail_after(BOUND):
        async with open_process_mesh(kernel=True) as mesh:
            client_ns, nse1_ns, nse2_ns = [await mesh.add_netns() for _ in range(3)]
            await kernel_node(mesh, nse1_ns)
            nsc = await mesh.add_nsc(
                "nsc-1",
                "kernel://icmp/nsm-1",
                nsmgr="nsmgr-0",
                netns=client_ns,
                json=True,
                liveness_interval="100ms",
                liveness_timeout="500ms",
            )
            connected = event(nsc.lines[0])
            assert connected["endpoint"] == "nse-1"
            assert connected["interface"] == "nsm-1"
            assert connected["path"] == ["nsc-1", "nsmgr-0", "forwarder-0", "nse-1"]
            assert connected["dst"] == ["169.254.110.0/32", "fd00::110:0/128"]
            assert connected["src"] == ["169.254.110.1/32", "fd00::110:1/128"]
            for address in hosts(connected["dst"]):
                assert await pings(client_ns, address)  # the kernel in nse-1's namespace answers
            for address in hosts(connected["src"]):
                assert await pings(nse1_ns, address)
            client_links = await links(client_ns)
            assert sorted(client_links) == ["lo", "nsm-1"]
            alias = client_links["nsm-1"]["ifalias"]
            assert alias.startswith("trionsm:")
            assert len(await mesh.wires()) == 2  # the two ends, one per namespace

            # The NSE's pod dies: its process (SIGKILL: no unregister) and its namespace.
            assert await mesh.kill("nse-1") == -9
            await mesh.remove_netns(nse1_ns)
            await mesh.add_endpoint(
                "nse-2", "icmp", nsmgr="nsmgr-0", cidr=POOLS["nse-2"], netns=nse2_ns
            )
            healed = event(await nsc.wait_line('{"event": "healed"'))
            assert healed["endpoint"] == "nse-2"
            assert healed["path"] == ["nsc-1", "nsmgr-0", "forwarder-0", "nse-2"]
            assert "169.254.111.0/32" in healed["dst"]
            assert "fd00::111:0/128" in healed["dst"]
            for address in ["169.254.111.0", "fd00::111:0"]:
                assert await pings(client_ns, address)
            assert sorted(await links(client_ns)) == ["lo", "nsm-1"]
            assert len(await links(nse2_ns)) == 2  # lo and the new wire's end

            assert await mesh.stop("nsc-1") == 0  # closes the connection through the path
            assert event(nsc.lines[-1])["event"] == "closed"
            assert await mesh.wires() == []
            assert list(await links(client_ns)) == ["lo"]
            assert list(await links(nse2_ns)) == ["lo"]
            await stop_all(mesh, "nse-2", "forwarder-0", "nsmgr-0", "registry")
        assert mesh.leaks() == []


async def test_nsc_once_mtus_and_a_wire_left_is_a_leak_the_mesh_reports() -> None:
    """``trionsm nsc --once`` makes the wire and removes it on exit; the wire's MTU is the
    smallest of the endpoint's ``--mtu`` and the client's; a wire nobody removes (its NSC and
    its forwarder SIGKILLed) is a leak the mesh reports."""
    with trio.fail_after(BOUND):
        async with open_process_mesh(kernel=True) as mesh:
            client_ns, nse_ns = await mesh.add_netns(), await mesh.add_netns()
            await kernel_node(mesh, nse_ns, mtu=1400)
            nsmgr = mesh.url("nsmgr-0")
            once = await mesh.run(
                "nsc", "kernel://icmp/eth9", "--nsmgr", nsmgr, "--netns", client_ns, "--once"
            )
            assert once.returncode == 0, once.stderr
            lines = once.stdout.decode().splitlines()
            assert lines[0].startswith("connected nse-1 src=169.254.110.1/32,fd00::110:1/128 ")
            assert lines[0].endswith(" if=eth9")
            assert lines[1].startswith("closed nse-1 ")
            assert await mesh.wires() == []

            await mesh.add_nsc("nsc-2", "kernel://icmp/nsm-2", nsmgr="nsmgr-0", netns=client_ns)
            await mesh.add_nsc(
                "nsc-3", "kernel://icmp/nsm-3", nsmgr="nsmgr-0", netns=client_ns, mtu=1300
            )
            client_links = await links(client_ns)
            assert client_links["nsm-2"]["mtu"] == 1400  # the endpoint's
            assert client_links["nsm-3"]["mtu"] == 1300  # the client's, the smaller
            alias = client_links["nsm-3"]["ifalias"]
            await stop_all(mesh, "nsc-2")
            assert "nsm-2" not in await links(client_ns)
            # Two crashes, so nothing removes nsc-3's wire: its client and its forwarder.
            assert await mesh.kill("nsc-3") == -9
            assert await mesh.kill("forwarder-0") == -9
            left = await mesh.wires()
            assert len(left) == 2
            assert all(wire.endswith(f" {alias}") for wire in left)
            await stop_all(mesh, "nse-1", "nsmgr-0", "registry")
        assert sorted(mesh.leaks()) == sorted(f"left behind: {wire}" for wire in left)


async def test_an_nsc_without_netns_puts_its_interface_into_its_own_namespace() -> None:
    """``ip netns exec POD trionsm nsc kernel://...`` (no --netns): the interface goes into POD,
    as NSM's cmd-nsc in a pod; SIGTERM removes it."""
    with trio.fail_after(BOUND):
        async with open_process_mesh(kernel=True) as mesh:
            pod, nse_ns = await mesh.add_netns(), await mesh.add_netns()
            await kernel_node(mesh, nse_ns)
            inside = ["ip", "netns", "exec", pod.removeprefix("file:///run/netns/")]
            nsc = ["nsc", "kernel://icmp/nsm-1", "--nsmgr", mesh.url("nsmgr-0"), "--json"]
            process = await trio.lowlevel.open_process(
                [*inside, sys.executable, "-m", "trionsm.cli", *nsc],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert process.stdout is not None
            try:
                first = b""
                while b"\n" not in first:
                    chunk = await process.stdout.receive_some()
                    assert chunk, "the nsc exited before connecting"
                    first += chunk
                assert event(first.decode().splitlines()[0])["event"] == "connected"
                assert sorted(await links(pod)) == ["lo", "nsm-1"]
                assert await pings(pod, "169.254.110.0")
            finally:
                process.terminate()  # by its own PID (ip netns exec execs the nsc)
                with trio.CancelScope(shield=True):
                    assert await process.wait() == 0
                    await process.stdout.aclose()
            assert list(await links(pod)) == ["lo"]
            await stop_all(mesh, "nse-1", "forwarder-0", "nsmgr-0", "registry")
        assert mesh.leaks() == []


# -- the CLI contract ----------------------------------------------------------------------------

NSE = ["nse", "--name", "e", "--service", "s", "--listen", "unix:///x", "--nsmgr", "unix:///y"]
NSE_4 = [*NSE, "--cidr", "169.254.1.0/24"]
BAD_KERNEL_FLAGS = [
    ([*NSE_4, "--netns", "tnsm-missing"], "argument --netns", "tnsm-missing"),
    ([*NSE_4, "--netns", "a/b"], "argument --netns", "a/b"),
    ([*NSE_4, "--mtu", "1400"], "argument --mtu", "--netns"),
    (["nsc", "kernel://s", "--netns", "file:///run/netns/tnsm-x"], "argument --netns", "tnsm-x"),
    (["nsc", "kernel://s", "--netns", "inode://1/2"], "argument --netns", "inode://1/2"),
    (["nsc", "kernel://s", "--mtu", "40"], "argument --mtu", "68..65535"),
    (["nsc", "noop://s", "--mtu", "1400"], "argument --mtu", "kernel://"),
    (["nsc", "noop://s", "--liveness-interval", "1s"], "argument --liveness-interval", "kernel://"),
    (["nsc", "kernel://s", "--liveness-timeout", "0s"], "argument --liveness-timeout", "positive"),
    (["forwarder", "--name", "f", "--listen", "unix:///x", "--nsmgr", "unix:///y",
      "--mechanism", "vxlan"], "argument --mechanism", "kernel, noop"),
]  # fmt: skip


async def test_bad_kernel_flags_exit_2_naming_the_flag_and_the_value() -> None:
    assert await bad_flag_failures(BAD_KERNEL_FLAGS) == []


async def test_a_kernel_forwarder_without_cap_net_admin_cannot_start() -> None:
    """Dropped CAP_NET_ADMIN (``setpriv``): exit 1 at once, one line naming the capability."""
    drop = ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin"]
    args = ["--name", "f", "--listen", "unix:///nonexistent/f.sock", "--nsmgr", "unix:///y"]
    with trio.fail_after(BOUND):
        result = await trio.run_process(
            [*drop, sys.executable, "-m", "trionsm.cli", "forwarder", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert stderr.startswith("trionsm forwarder: cannot start: ")
    assert "needs CAP_NET_ADMIN" in stderr
    assert "--mechanism kernel" in stderr
