"""A ``trionsm forwarder`` process SIGKILLed and started again adopts its wire: no flap.

Every role is a ``python -m trionsm.cli`` process over unix sockets (see test_processes_kernel);
the interfaces live in namespaces the mesh made, deleted by their exact names. Real clock; the
whole test is bounded. Addresses come from 169.254.0.0/16 and fd00::/8 only.
"""

from __future__ import annotations

import os

import pytest
import trio

from trionsm.scenario import open_process_mesh

from .test_processes_kernel import BOUND, event, hosts, kernel_node, links, pings

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def indexes(found: dict[str, dict[str, object]]) -> dict[str, object]:
    return {name: link["ifindex"] for name, link in found.items()}


async def test_a_sigkilled_forwarder_process_restarts_and_adopts_the_wire_as_it_is() -> None:
    with trio.fail_after(BOUND):
        async with open_process_mesh(kernel=True) as mesh:
            client_ns, nse_ns = await mesh.add_netns(), await mesh.add_netns()
            await kernel_node(mesh, nse_ns)
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
            before = {netns: await links(netns) for netns in (client_ns, nse_ns)}
            assert before[client_ns]["nsm-1"]["ifalias"] == "trionsm:forwarder-0:nsc-1-1"

            assert await mesh.kill("forwarder-0") == -9  # no cleanup at all: the wire stays
            await mesh.restart("forwarder-0")
            healed = event(await nsc.wait_line('{"event": "healed"'))
            assert healed["path"] == connected["path"]
            assert "re-requested" in healed["reason"]
            for netns in (client_ns, nse_ns):  # the very same interfaces: adopted, not remade
                assert indexes(await links(netns)) == indexes(before[netns])
            for address in hosts(connected["dst"]):
                assert await pings(client_ns, address)

            assert await mesh.stop("nsc-1") == 0  # Close reaches the new forwarder: wire gone
            assert await mesh.wires() == []
            for role in ("nse-1", "forwarder-0", "nsmgr-0", "registry"):
                assert await mesh.stop(role) == 0, mesh[role].stderr
        assert mesh.leaks() == []
