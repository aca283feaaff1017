"""A wire being replaced stays its connection's until its removal is through.

A refresh that finds its wire no longer whole removes it and makes it again. When that removal
fails, or the forwarder is stopped while it waits for the teardown lane, the wire must still be
the connection's (so its Close removes it) or be gone: never left in the kernel with no
connection knowing it. The data plane's removal is replaced by one that refuses or waits at a
gate (fault injection), around the real one.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest
import trio

from tests.netns import Host
from trionsm.actors._dataplane import DataPlane, Wire
from trionsm.actors._mechanisms import kernel_mechanism
from trionsm.api.connection import Connection
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.errors import PermissionDenied, TrionsmError
from trionsm.kernel import Netlink
from trionsm.scenario import open_mesh
from trionsm.transport import open_client

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

BOUND = 30.0
"""Seconds any step may take before the test fails (a hang guard: most take milliseconds)."""


async def test_a_refresh_whose_removal_of_the_old_wire_fails_keeps_it_for_the_close(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    async with open_mesh(kernel=True) as mesh:
        await mesh.register_service("icmp")
        await mesh.add_endpoint("nse-1", "icmp", cidr="169.254.109.0/24", netns=nse_ns)
        forwarder = mesh.hop("forwarder-0-0")
        assert forwarder is not None
        dataplane = forwarder.dataplane
        assert isinstance(dataplane, DataPlane)
        real_remove = dataplane.remove
        refused: list[Wire] = []

        async def refusing_remove(wire: Wire, **kwargs: Any) -> None:
            if not refused:  # the first removal: the refresh's, of the old wire
                refused.append(wire)
                raise PermissionDenied("deleting the old wire: refused", hop="forwarder-0-0")
            await real_remove(wire, **kwargs)

        request = NetworkServiceRequest(
            connection=Connection(id="nsc-replace", network_service="icmp"),
            mechanism_preferences=[kernel_mechanism(client_ns, "nsm-1")],
        )
        with trio.fail_after(BOUND):
            async with open_client(mesh.nsmgr_url(0)) as nsmgr:
                reply = await nsmgr.network_service.request(request, timeout=BOUND)
                endpoint_end = set(await host.links(nse_ns)) - {"lo"}
                assert len(endpoint_end) == 1
                await host.run(client_ns, "link", "set", "nsm-1", "alias", "not-ours")  # not whole
                monkeypatch.setattr(dataplane, "remove", refusing_remove)
                refresh = dataclasses.replace(request, connection=reply)
                with pytest.raises(TrionsmError, match="refused"):
                    await nsmgr.network_service.request(refresh, timeout=BOUND)
                assert len(refused) == 1
                assert set(await host.links(nse_ns)) - {"lo"} == endpoint_end  # still there
                await nsmgr.network_service.close(reply, timeout=BOUND)
        assert list(await host.links(nse_ns)) == ["lo"]  # the Close removed what was left
        assert list(await host.links(client_ns)) == ["lo"]


async def test_a_wire_being_replaced_is_removed_and_only_then_forgotten_despite_a_cancel(
    host: Host, netlink: Netlink, monkeypatch: pytest.MonkeyPatch
) -> None:
    client_ns, nse_ns = await host.netns(), await host.netns()
    dataplane = DataPlane(netlink)
    spec = dataplane.plan(
        "nsc-1",
        kernel_mechanism(client_ns, "nsm-1"),
        kernel_mechanism(nse_ns, "nse-end"),
        None,
        hop="fwd",
        service="icmp",
        owner="fwd",
    )
    with trio.fail_after(BOUND):
        current = await dataplane.ensure(None, spec, hop="fwd", service="icmp")
        await host.run(client_ns, "link", "set", "nsm-1", "alias", "not-ours")  # not whole
        real_remove = dataplane.remove
        gate, held = trio.Event(), trio.Event()

        async def gated_remove(wire: Wire, **kwargs: Any) -> None:
            held.set()
            await gate.wait()  # waiting for the teardown lane
            await real_remove(wire, **kwargs)

        monkeypatch.setattr(dataplane, "remove", gated_remove)
        forgotten: list[Wire] = []
        async with trio.open_nursery() as nursery:

            async def replace() -> None:
                await dataplane.ensure(
                    current, spec, hop="fwd", service="icmp", forget=forgotten.append
                )

            nursery.start_soon(replace)
            await held.wait()
            nursery.cancel_scope.cancel()  # the forwarder stops meanwhile
            assert forgotten == []  # not gone yet: still the connection's
            gate.set()
        assert forgotten == [current]  # gone, then forgotten
    assert list(await host.links(nse_ns)) == ["lo"]  # removed; nothing new made
    assert list(await host.links(client_ns)) == ["lo"]
