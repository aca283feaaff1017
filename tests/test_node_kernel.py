"""``trionsm node`` with KERNEL wires: an ICMP-responder NSE and a ``kernel://`` NSC process.

The node runs its forwarder in process with the kernel executor (``node/kernel``); the
interfaces live in namespaces the mesh made (deleted by their exact names). Pings go through
``ip netns exec ... ping``. Real clock; every step bounded; addresses from 169.254.0.0/16 only.
Each test ends with ``mesh.leaks() == []``: no process, socket, wire or namespace left.
"""

from __future__ import annotations

import json
import os

import pytest
import trio

from tests.actors.test_processes_kernel import hosts, pings
from trionsm.scenario import open_process_mesh

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
