"""NSM's reselect and forwarder-choice tests (``reselect_test.go``, ``heal_test.go``).

As in ``test_heal``: NSM's assertions on the hop counters (``mesh.hop(name).counts``) and on the
client (``conn.closes``, ``conn.reselects``), mock time, waits on events bounded by
``trio.fail_after``, and ``await mesh.leaks(baseline) == []`` at the end.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trionsm.actors.client import ClientConnection, EventKind
from trionsm.api.connection import ConnectionEventType
from trionsm.scenario import open_mesh

BOUND = 300.0
"""Mock seconds any wait may take (a refresh comes every ~2 minutes)."""


def names(conn: ClientConnection) -> list[str]:
    assert conn.connection is not None
    assert conn.connection.path is not None
    return [segment.name for segment in conn.connection.path.path_segments]


# -- Test_ForwarderShouldBeSelectedCorrectlyOnNSMgrRestart ---------------------------------------


@pytest.mark.parametrize(("node", "segments"), [(0, 4), (1, 6)], ids=["local", "remote"])
async def test_forwarder_should_be_selected_correctly_on_nsmgr_restart(
    autojump_clock: object, node: int, segments: int
) -> None:
    """Ten times: refresh, restart the endpoint's nsmgr (its endpoint and forwarder
    re-register), add a forwarder there: the path keeps its forwarder every time."""
    async with open_mesh(nodes=node + 1) as mesh:
        await mesh.register_service("my-ns")
        await mesh.add_endpoint("my-nse-1", "my-ns", node=node, cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        expected = f"forwarder-{node}-0"
        leases = [mesh["my-nse-1"].lease, mesh[expected].lease]
        with trio.fail_after(BOUND * 30):
            async with mesh.connect("noop://my-ns/nsm-1", node=0) as conn:
                assert len(names(conn)) == segments
                assert names(conn)[segments - 2] == expected
                for i in range(10):
                    refreshes = sum(e.kind is EventKind.REFRESHED for e in conn.history)
                    await conn.wait_for(EventKind.REFRESHED, refreshes + 1)
                    assert names(conn)[segments - 2] == expected
                    registered = [lease.registrations for lease in leases]
                    await mesh.restart(f"nsmgr-{node}")
                    for lease, count in zip(leases, registered, strict=True):
                        await lease.wait_registrations(count + 1)
                    await mesh.add_forwarder(f"forwarder-{node}-new-{i}", node=node)
                    await conn.wait_for(EventKind.HEALED, i + 1)  # the restart broke the path
                    assert names(conn)[segments - 2] == expected
                    assert len(names(conn)) == segments
        assert await mesh.leaks(baseline) == []


# -- TestReselect_NsmgrRestart -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "restart_local", "restart_remote"),
    [(1, False, False), (2, True, False), (2, False, True), (2, True, True)],
    ids=["local", "remote_restart_local", "remote_restart_remote", "remote_restart_both"],
)
async def test_reselect_nsmgr_restart(
    autojump_clock: object, nodes: int, restart_local: bool, restart_remote: bool
) -> None:
    """Even when the nsmgrs restarted (and lost their state), every forwarder gets a Close.

    The endpoint is replaced; the client sends exactly one Close before it reselects; each
    forwarder closes the old connection once (when the reselect reaches it); the dead endpoint
    and the new one get no Close; a refresh closes nothing; the final Close goes end to end.
    """
    async with open_mesh(nodes=nodes) as mesh:
        await mesh.register_service("reselect")
        last = nodes - 1
        await mesh.add_endpoint("nse-1", "reselect", node=last, cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        forwarders = [mesh.hop(f"forwarder-{i}-0") for i in range(nodes)]
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://reselect/nsm-1", node=0) as conn:
                await mesh.kill("nse-1")  # first, so that one heal does it all
                if restart_local:
                    await mesh.restart("nsmgr-0")
                if restart_remote:
                    await mesh.restart("nsmgr-1")
                await mesh.add_endpoint("nse-2", "reselect", node=last, cidr="169.254.2.0/24")
                nse1, nse2 = mesh.hop("nse-1"), mesh.hop("nse-2")
                assert nse1 is not None
                assert nse2 is not None
                await conn.wait_for(EventKind.HEALED)
                assert names(conn)[-1] == "nse-2"
                assert conn.closes == conn.reselects == 1
                for forwarder in forwarders:
                    assert forwarder is not None
                    assert forwarder.counts.closes == 1
                assert nse1.counts.closes == nse2.counts.closes == 0
                await conn.wait_for(EventKind.REFRESHED)
                assert nse2.counts.closes == 0
                assert [f.counts.closes for f in forwarders if f is not None] == [1] * nodes
            assert conn.closes == 2
            assert nse2.counts.closes == 1
            for forwarder in forwarders:
                assert forwarder is not None
                assert forwarder.counts.unique_closes == 1
                assert forwarder.counts.closes == 2
        assert await mesh.leaks(baseline) == []


# -- TestReselect_LocalForwarderRestart ----------------------------------------------------------


@pytest.mark.parametrize("nodes", [1, 2], ids=["local", "remote"])
async def test_reselect_local_forwarder_restart(autojump_clock: object, nodes: int) -> None:
    """The local forwarder restarts (its state is gone) and the endpoint is replaced: the
    restarted forwarder gets no Close for the old connection, a remote one gets one, and the
    final Close still goes through the whole path."""
    async with open_mesh(nodes=nodes) as mesh:
        await mesh.register_service("reselect")
        last = nodes - 1
        await mesh.add_endpoint("nse-1", "reselect", node=last, cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://reselect/nsm-1", node=0) as conn:
                await mesh.kill("nse-1")
                await mesh.restart("forwarder-0-0")
                await mesh.add_endpoint("nse-2", "reselect", node=last, cidr="169.254.2.0/24")
                local = mesh.hop("forwarder-0-0")  # the restarted incarnation's counters
                nse2 = mesh.hop("nse-2")
                assert local is not None
                assert nse2 is not None
                await conn.wait_for(EventKind.HEALED)
                assert names(conn)[-1] == "nse-2"
                assert conn.closes == 1
                assert local.counts.closes == 0
                if nodes > 1:
                    remote = mesh.hop("forwarder-1-0")
                    assert remote is not None
                    assert remote.counts.closes == 1
                assert nse2.counts.closes == 0
                await conn.wait_for(EventKind.REFRESHED)
                assert local.counts.closes == nse2.counts.closes == 0
            assert nse2.counts.closes == 1
            assert local.counts.closes == 1
            if nodes > 1:
                assert remote.counts.closes == 2
        assert await mesh.leaks(baseline) == []


# -- TestReselect_Close_RegistryDied -------------------------------------------------------------


async def test_reselect_close_registry_died(autojump_clock: object) -> None:
    """With the registry gone, a Close still reaches the forwarder and the endpoint (each hop
    knows its next hop from the connection it holds)."""
    async with open_mesh() as mesh:
        await mesh.register_service("reselect")
        await mesh.add_endpoint("nse-1", "reselect", cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        forwarder, nse = mesh.hop("forwarder-0-0"), mesh.hop("nse-1")
        assert forwarder is not None
        assert nse is not None
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://reselect/nsm-1") as conn:
                await mesh.kill("registry")
            assert conn.closes == 1
            assert forwarder.counts.closes == nse.counts.closes == 1
        assert await mesh.leaks(baseline) == []


# -- what NSM's tests do not cover: ordering and timing at a restarted or reselecting hop ---------


async def test_a_late_delete_from_the_reselected_next_hop_is_ignored(
    autojump_clock: object,
) -> None:
    """The local nsmgr restarts, so the reselect reaches the local forwarder with its state: it
    closes its connection at the remote nsmgr and requests it again under the same id. The
    remote nsmgr's DELETE for the closed one reaches the forwarder only after the heal is done;
    the forwarder asks the remote nsmgr, finds the connection UP there and ignores the DELETE,
    so the client does not heal a second time."""
    async with open_mesh(nodes=2) as mesh:
        await mesh.register_service("reselect")
        await mesh.add_endpoint("nse-1", "reselect", node=1, cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        forwarder = mesh.hop("forwarder-0-0")
        assert forwarder is not None
        assert forwarder.peers is not None
        dispatch = forwarder.peers._dispatch
        held: list[tuple[Any, ...]] = []
        holding = False

        def late(*event: Any) -> None:  # the stream from the remote nsmgr, delayed
            if holding:
                held.append(event)
            else:
                dispatch(*event)

        forwarder.peers._dispatch = late  # type: ignore[method-assign]
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://reselect/nsm-1", node=0) as conn:
                holding = True
                await mesh.restart("nsmgr-0")
                await conn.wait_for(EventKind.HEALED)
                assert forwarder.counts.closes == 1  # the reselect closed the old connection
                kinds = [event[1] for event in held]
                assert ConnectionEventType.DELETE in kinds  # the remote nsmgr's DELETE and
                holding = False  # UPDATE are on their way and arrive a second apart, late
                for event in held:
                    await trio.sleep(1.0)
                    dispatch(*event)
                await conn.wait_for(EventKind.REFRESHED)
                assert conn.heals == 1
                assert [e.kind for e in conn.history].count(EventKind.DOWN) == 1
        assert await mesh.leaks(baseline) == []


async def test_a_restarted_nsmgr_waits_for_the_paths_forwarder(autojump_clock: object) -> None:
    """The nsmgr and the path's forwarder restart together; another forwarder is up at once.
    The restarted nsmgr gives the path's forwarder (still registered) time to re-register
    instead of moving the connection to the other one (NSM sdk#1479: keep the forwarder)."""
    async with open_mesh(forwarders=2) as mesh:
        await mesh.register_service("reselect")
        await mesh.add_endpoint("nse-1", "reselect", cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://reselect/nsm-1") as conn:
                used = names(conn)[2]
                await mesh.kill(used)
                await mesh.restart("nsmgr-0")
                await trio.sleep(1.0)  # the forwarder comes back a second later
                await mesh.restart(used)
                await conn.wait_for(EventKind.HEALED)
                assert names(conn)[2] == used
        assert await mesh.leaks(baseline) == []
