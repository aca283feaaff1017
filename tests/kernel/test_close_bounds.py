"""A wire's removal outlives the bound of the Close that asked for it.

Hundreds of Closes at once queue their removals behind the kernel executor's teardown lane; a
removal cut short by the Close's own bound (``CLOSE_TIMEOUT``) used to leave its interfaces behind
for good, since the connection had already let go of its wire. Here the removal is held back at a
gate until every Close has given up waiting, then released: the interfaces must still go.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio

from tests.netns import Host
from trionsm.actors import _connection
from trionsm.actors._dataplane import DataPlane, Wire
from trionsm.scenario import open_mesh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

BOUND = 30.0
"""Seconds any step may take before the test fails (a hang guard)."""


async def test_a_close_cut_short_by_its_bound_still_removes_the_wire(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    async with open_mesh(kernel=True) as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.106.0/24", netns=nse_ns)
        forwarder = mesh.hop("forwarder-0-0")
        assert forwarder is not None
        dataplane = forwarder.dataplane
        assert isinstance(dataplane, DataPlane)
        real_remove = dataplane.remove
        gate, held = trio.Event(), trio.Event()

        async def gated_remove(wire: Wire, **kwargs: Any) -> None:
            held.set()
            await gate.wait()
            await real_remove(wire, **kwargs)

        with trio.fail_after(BOUND):
            names = [f"nsm-{index}" for index in range(4)]
            async with trio.open_nursery() as nursery:
                for name in names:
                    opened = trio.Event()

                    async def client(name: str = name, opened: trio.Event = opened) -> None:
                        async with mesh.connect(f"kernel://icmp/{name}", netns=client_ns):
                            opened.set()
                            await gate.wait()

                    nursery.start_soon(client)
                    await opened.wait()
                assert sorted(await host.links(client_ns)) == sorted(["lo", *names])
                monkeypatch.setattr(dataplane, "remove", gated_remove)
                monkeypatch.setattr(_connection, "CLOSE_TIMEOUT", 0.2)
                nursery.cancel_scope.cancel()  # every client closes; removals wait at the gate
            await held.wait()
            await trio.sleep(0.5)  # fault injection: the removals stay held past every Close bound
            gate.set()
            while True:  # polling the kernel: no event says an interface went
                if len(await host.links(client_ns)) == len(await host.links(nse_ns)) == 1:
                    break
                await trio.sleep(0.05)
        assert list(await host.links(client_ns)) == ["lo"]
        assert list(await host.links(nse_ns)) == ["lo"]
