"""``trionsm node`` with KERNEL wires: an ICMP-responder NSE and a ``kernel://`` NSC process.

The node runs its forwarder in process with the kernel executor (``node/kernel``); the
interfaces live in namespaces the mesh made (deleted by their exact names). Pings go through
``ip netns exec ... ping`` or, continuous, through :class:`~trionsm._probes.Pinger`. Real clock;
every step bounded, nothing timed; addresses from 169.254.0.0/16 only. Each test ends with
``mesh.leaks() == []``: no process, socket, wire or namespace left.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

import pytest
import trio

from tests.actors.test_processes_kernel import hosts, links, pings
from trionsm._namespaces import netns_name
from trionsm._probes import Pinger
from trionsm.scenario import ProcessMesh, open_process_mesh

from .test_node import STOP_BOUND, status

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

BOUND = 90.0


async def test_a_kernel_node_plugs_wires_and_removes_them_on_sigterm() -> None:
    with trio.fail_after(BOUND):
        async with open_process_mesh(kernel=True) as mesh:
            client_ns, nse_ns = [await mesh.add_netns() for _ in range(2)]
            directory = mesh.directory
            args = ["node", "--name", "k1", "--dir", str(directory)]
            args += ["--listen", f"unix://{directory}/nsm.io.sock"]
            sockets = [directory / f"{s}.sock" for s in ("nsm.io", "forwarder", "admin")]
            await mesh.start("node-1", args, sockets=sockets)  # KERNEL and NOOP by default
            await mesh.add_endpoint(
                "nse-1", "icmp", nsmgr="node-1", cidr="169.254.140.0/24", netns=nse_ns
            )
            nsc = await mesh.add_nsc(
                "nsc-1", "kernel://icmp/nsm-1", nsmgr="node-1", netns=client_ns, json=True
            )
            connected = json.loads(nsc.lines[0])
            assert connected["path"] == ["nsc-1", "nsmgr-k1", "forwarder-k1", "nse-1"]
            for address in hosts(connected["dst"]):
                assert await pings(client_ns, address)
            assert len(await mesh.wires()) == 2

            shown = await status(mesh)
            assert shown["actors"][0]["path"] == "node/kernel"
            forwarder_row = next(r for r in shown["connections"] if r["role"] == "forwarder")
            assert (forwarder_row["mechanism"], forwarder_row["interface"]) == ("KERNEL", "nsm-1")

            with trio.fail_after(STOP_BOUND):
                assert await mesh.stop("node-1") == 0, mesh["node-1"].stderr
            assert await mesh.wires() == []  # both ends removed on the way out
            assert await mesh.stop("nsc-1") == 0
            assert await mesh.stop("nse-1") == 0
        assert mesh.leaks() == []


GRACE = "5s"
"""The restarted forwarder's reconcile grace: short, so that the test sees its sweep, and still
well above the NSC's heal (about a second after the node is back)."""


def ifindexes(found: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {name: link["ifindex"] for name, link in found.items()}


async def add_stray(netns: str, alias: str) -> None:
    """A veth pair in ``netns`` whose one end carries ``alias`` (a wire nobody will claim)."""
    name = netns_name(netns)
    for args in (
        ["link", "add", "stray0", "type", "veth", "peer", "name", "stray1"],
        ["link", "set", "stray0", "alias", alias],
    ):
        await trio.run_process(["ip", "-n", name, *args], capture_stderr=True)


async def swept(netns: str) -> None:
    """Wait until ``netns`` holds nothing but ``lo`` (bounded by the caller)."""
    while True:
        if sorted(await links(netns)) == ["lo"]:
            return
        await trio.sleep(0.1)  # (pacing the look, not a wait for time)


async def replies_after(pinger: Pinger, count: int) -> None:
    """Wait for ``count`` more replies than the pinger has now."""
    target = len(pinger.replies) + count
    while len(pinger.replies) < target:
        await pinger.wait_reply(after=pinger.replies[-1][0] if pinger.replies else 0.0)


async def start_kernel_node(mesh: ProcessMesh, name: str, *config: str) -> None:
    """``trionsm node`` ``name`` in the mesh's directory (KERNEL and NOOP), ``config`` lines in
    its TOML file ``<name>.toml`` there (removed again by the test)."""
    directory = mesh.directory
    toml = directory / f"{name}.toml"
    toml.write_text("\n".join(config) + "\n")
    args = ["node", "--name", name, "--dir", str(directory), "--config", str(toml)]
    args += ["--listen", f"unix://{directory}/nsm.io.sock"]
    sockets = [directory / f"{s}.sock" for s in ("nsm.io", "forwarder", "admin")]
    await mesh.start("node-1", args, sockets=sockets)


async def test_a_sigkilled_kernel_node_restarts_adopts_the_wire_and_sweeps_the_rest() -> None:
    with trio.fail_after(BOUND):
        async with open_process_mesh(kernel=True) as mesh:
            client_ns, nse_ns, stray_ns = [await mesh.add_netns() for _ in range(3)]
            # A name of its own: its forwarder's reconcile looks at every namespace of the host.
            name = f"k{secrets.token_hex(3)}"
            owner = f"trionsm:forwarder-{name}:"
            await start_kernel_node(mesh, name, "[forwarder]", f'reconcile_grace = "{GRACE}"')
            await mesh.add_endpoint(
                "nse-1", "icmp", nsmgr="node-1", cidr="169.254.141.0/24", netns=nse_ns
            )
            nsc = await mesh.add_nsc(
                "nsc-1",
                "kernel://icmp/nsm-1",
                nsmgr="node-1",
                netns=client_ns,
                json=True,
                liveness_interval="100ms",
                liveness_timeout="500ms",
            )
            connected = json.loads(nsc.lines[0])
            before = {netns: await links(netns) for netns in (client_ns, nse_ns)}
            alias = before[client_ns]["nsm-1"]["ifalias"]
            assert alias.startswith(f"{owner}nsc-1")
            # A wire of the node's forwarder that no client will claim again.
            await add_stray(stray_ns, f"{owner}nsc-gone-1")

            pinger = Pinger(client_ns, timeout=1.0, target=hosts(connected["dst"])[0])
            async with trio.open_nursery() as nursery:
                await nursery.start(pinger.serve)
                await replies_after(pinger, 3)
                # nsmgr, forwarder and kernel executor die together; the wire stays.
                assert await mesh.kill("node-1") == -9
                await mesh.restart("node-1")  # the same (stale) unix sockets
                healed = json.loads(await nsc.wait_line('{"event": "healed"'))
                assert healed["path"] == connected["path"]
                assert "re-requested" in healed["reason"]
                await replies_after(pinger, 5)  # answered after the restart too
                await swept(stray_ns)  # the grace is over: the unclaimed wire is gone
                await replies_after(pinger, 3)
                nursery.cancel_scope.cancel()
            lost = pinger.sent - len(pinger.replies)
            assert lost <= 1, f"{lost} of {pinger.sent} echoes lost"  # (one cancelled in flight)
            for netns in (client_ns, nse_ns):  # the very same interfaces: adopted, not remade
                assert ifindexes(await links(netns)) == ifindexes(before[netns])
            assert (await links(client_ns))["nsm-1"]["ifalias"] == alias
            assert len(await mesh.wires()) == 2  # the live wire's two ends, nothing else

            assert await mesh.stop("nsc-1") == 0  # its Close reaches the new node: wire gone
            assert await mesh.wires() == []
            for role in ("nse-1", "node-1"):
                with trio.fail_after(STOP_BOUND):
                    assert await mesh.stop(role) == 0, mesh[role].stderr
            (mesh.directory / f"{name}.toml").unlink()
        assert mesh.leaks() == []
