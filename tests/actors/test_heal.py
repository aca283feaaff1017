"""NSM's heal table (sandbox ``heal_test.go``), one test per row, in one process.

Each test is named after NSM's and makes NSM's assertions, on the hop counters every role keeps
(``mesh.hop(name).counts``: NSM's ``count`` server) and on the client's events. Timers run
under ``autojump_clock`` (a ``trio.sleep`` moves mock time, as NSM's ``clockmock.Add``); every
message is serialised (``roundtrip_bytes``); waits are on events, bounded by ``trio.fail_after``.
Every test ends with nothing left behind: ``await mesh.leaks(baseline) == []``.

The liveness functions here are test doubles for the kernel data plane's ICMP check: they say
what the data plane would.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from trionsm.actors._role import find_endpoints
from trionsm.actors.client import ClientConnection, EventKind, LivenessCheck, reselect_default
from trionsm.api.connection import Connection
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.api.registry import NetworkServiceEndpoint
from trionsm.errors import ResourceExhausted
from trionsm.scenario import Mesh, open_mesh
from trionsm.transport import open_client

BOUND = 300.0
"""Mock seconds any wait may take before the test fails (a hang guard)."""
TOKEN_LIFETIME = 600.0
"""NSM's default token lifetime: after it, every hop has closed what nobody refreshed."""


def names(conn: ClientConnection) -> list[str]:
    assert conn.connection is not None
    assert conn.connection.path is not None
    return [segment.name for segment in conn.connection.path.path_segments]


def ids(conn: ClientConnection) -> list[str]:
    assert conn.connection is not None
    assert conn.connection.path is not None
    return [segment.id for segment in conn.connection.path.path_segments]


def total(mesh: Mesh, *parts: str) -> Callable[[str], int]:
    """A reader of the summed counters of ``parts`` (NSM shares one counter between NSEs)."""

    def read(what: str) -> int:
        hops = [mesh.hop(name) for name in parts if name in mesh.parts]
        return sum(getattr(hop.counts, what) for hop in hops if hop is not None)

    return read


def always(answer: bool) -> LivenessCheck:
    """A liveness check that always says ``answer``."""

    async def liveness(connection: Connection) -> bool:
        return answer

    return liveness


def alive_while(flag: dict[str, bool]) -> LivenessCheck:
    """A liveness check that says what ``flag["alive"]`` says at the time."""

    async def liveness(connection: Connection) -> bool:
        return flag["alive"]

    return liveness


# -- TestNSMGR_HealEndpoint and its data-plane variants ------------------------------------------


@pytest.mark.parametrize("node", [0, 1], ids=["local_new", "remote_new"])
async def test_nsmgr_heal_endpoint(autojump_clock: object, node: int) -> None:
    async with open_mesh(nodes=node + 1) as mesh:
        await mesh.register_service("heal")
        await mesh.add_endpoint("nse-1", "heal", node=node, cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        count = total(mesh, "nse-1", "nse-2")
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://heal/nsm-1", node=0, name="nsc") as conn:
                assert len(names(conn)) == 4 + 2 * node
                assert count("unique_requests") == 1
                first = ids(conn)
                await mesh.kill("nse-1")
                await mesh.add_endpoint("nse-2", "heal", node=node, cidr="169.254.2.0/24")
                healed = await conn.wait_for(EventKind.HEALED)
                assert "reselected" in healed.reason
                assert names(conn)[-1] == "nse-2"
                assert count("unique_requests") == 2
                assert ids(conn)[0] == first[0]  # the client keeps its segment id
                closes = count("unique_closes")
                await conn.wait_for(EventKind.REFRESHED)  # a refresh reaches the new NSE
                assert count("unique_requests") == 2
            assert count("unique_closes") == closes + 1  # the Close reaches the new NSE
            assert conn.heals == conn.reselects == 1
        assert await mesh.leaks(baseline) == []


async def test_nsmgr_heal_endpoint_data_plane_broken_ctrl_plane_broken(
    autojump_clock: object,
) -> None:
    async with open_mesh() as mesh:
        await mesh.register_service("heal")
        await mesh.add_endpoint("nse-1", "heal", cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        count = total(mesh, "nse-1", "nse-2")
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://heal/nsm-1", liveness=always(False)) as conn:
                assert count("unique_requests") == 1
                await mesh.kill("nse-1")
                await mesh.add_endpoint("nse-2", "heal", cidr="169.254.2.0/24")
                healed = await conn.wait_for(EventKind.HEALED)
                assert "reselected" in healed.reason
                assert count("unique_requests") == 2
                closes = count("unique_closes")
            assert count("unique_requests") == 2
            assert count("unique_closes") == closes + 1
        assert await mesh.leaks(baseline) == []


async def test_nsmgr_heal_endpoint_data_plane_broken_ctrl_plane_healthy(
    autojump_clock: object,
) -> None:
    """The liveness check alone (every hop is fine) makes the client reselect."""
    async with open_mesh() as mesh:
        await mesh.register_service("heal")
        await mesh.add_endpoint("nse-1", "heal", cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        count = total(mesh, "nse-1", "nse-2")
        data_plane = {"alive": True}
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://heal/nsm-1", liveness=alive_while(data_plane)) as conn:
                assert count("requests") == 1
                await mesh.add_endpoint("nse-2", "heal", cidr="169.254.2.0/24")
                data_plane["alive"] = False
                down = await conn.wait_for(EventKind.DOWN)
                assert "liveness" in down.reason
                data_plane["alive"] = True  # the new path's data plane works
                await conn.wait_for(EventKind.HEALED)
                assert names(conn)[-1] == "nse-2"  # round robin moved on from nse-1
                assert count("unique_requests") == 2
                closes = count("unique_closes")
                await conn.wait_for(EventKind.REFRESHED)
            assert count("unique_requests") == 2
            assert count("unique_closes") == closes + 1
            assert mesh.hop("nse-1").counts.closes == 1  # type: ignore[union-attr]
        assert await mesh.leaks(baseline) == []


async def test_nsmgr_heal_endpoint_datapath_healthy_ctrl_plane_broken(
    autojump_clock: object,
) -> None:
    """No reselect while the data plane works: the client re-requests its own endpoint only.

    (Skipped in NSM, sdk#1573; it holds here.) Mock time runs 2 s, as NSM's ``require.Never``.
    """
    async with open_mesh() as mesh:
        await mesh.register_service("heal")
        await mesh.add_endpoint("nse-1", "heal", cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        count = total(mesh, "nse-1", "nse-2")
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://heal/nsm-1", liveness=always(True)) as conn:
                assert count("unique_requests") == 1
                await mesh.kill("nse-1")
                await mesh.add_endpoint("nse-2", "heal", cidr="169.254.2.0/24")
                await conn.wait_for(EventKind.DOWN)
                await trio.sleep(2.0)
                assert count("unique_requests") == 1
                assert mesh.hop("nse-2").counts.requests == 0  # type: ignore[union-attr]
                assert conn.heals == 0  # still re-requesting nse-1
        assert await mesh.leaks(baseline) == []


# -- TestNSMGR_HealForwarder ---------------------------------------------------------------------


@pytest.mark.parametrize("node", [0, 1], ids=["local_new", "remote_new"])
async def test_nsmgr_heal_forwarder(autojump_clock: object, node: int) -> None:
    async with open_mesh(nodes=2) as mesh:
        await mesh.register_service("heal")
        await mesh.add_endpoint("nse-1", "heal", node=1, cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        nse = mesh.hop("nse-1")
        assert nse is not None
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://heal/nsm-1", node=0) as conn:
                assert nse.counts.unique_requests == 1
                dead = f"forwarder-{node}-0"
                assert dead in names(conn)
                await mesh.kill(dead)
                await mesh.add_forwarder(f"forwarder-{node}-2", node=node)
                await conn.wait_for(EventKind.HEALED)
                assert dead not in names(conn)
                assert f"forwarder-{node}-2" in names(conn)
                assert nse.counts.requests == 2
                closes = nse.counts.unique_closes
                await conn.wait_for(EventKind.REFRESHED)
                assert nse.counts.requests == 3
            assert nse.counts.closes == closes + 1
        assert await mesh.leaks(baseline) == []


# -- TestNSMGR_HealNSMgr -------------------------------------------------------------------------


async def test_nsmgr_heal_nsmgr_local_restored(autojump_clock: object) -> None:
    """Local nsmgr restarted, no liveness check: the client reselects (nsm-reference §2.5).

    Selection lands on the same (only) endpoint; unlike NSM's 2021 test (written for the
    server-side restore heal) the reselect is a Close and a new Request at the endpoint:
    2 Requests after the heal, 3 after a refresh, 2 Closes after the final Close.
    """
    async with open_mesh(nodes=3) as mesh:
        await mesh.register_service("heal")
        await mesh.add_endpoint("nse-1", "heal", node=1, cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        nse = mesh.hop("nse-1")
        assert nse is not None
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://heal/nsm-1", node=0) as conn:
                before = ids(conn)
                await mesh.restart("nsmgr-0")
                healed = await conn.wait_for(EventKind.HEALED)
                assert "reselected" in healed.reason
                assert names(conn)[-1] == "nse-1"
                assert ids(conn) == before  # reselect keeps the path segment ids
                assert nse.counts.requests == 2
                assert nse.counts.unique_requests == 1
                await conn.wait_for(EventKind.REFRESHED)
                assert nse.counts.requests == 3
            assert nse.counts.closes == 2
        assert await mesh.leaks(baseline) == []


async def test_nsmgr_heal_nsmgr_local_restored_data_plane_alive(autojump_clock: object) -> None:
    """With a liveness check that says the data plane works: re-request, no reselect.

    NSM's own numbers: the same endpoint gets a 2nd Request, 3 after a refresh, 1 Close in
    all; every path segment id is kept.
    """
    async with open_mesh(nodes=3) as mesh:
        await mesh.register_service("heal")
        await mesh.add_endpoint("nse-1", "heal", node=1, cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        nse = mesh.hop("nse-1")
        assert nse is not None
        with trio.fail_after(BOUND):
            liveness = always(True)
            async with mesh.connect("noop://heal/nsm-1", node=0, liveness=liveness) as conn:
                before = ids(conn)
                await mesh.restart("nsmgr-0")
                healed = await conn.wait_for(EventKind.HEALED)
                assert "re-requested" in healed.reason
                assert conn.reselects == 0
                assert ids(conn) == before
                assert nse.counts.requests == 2
                assert nse.counts.closes == 0
                await conn.wait_for(EventKind.REFRESHED)
                assert nse.counts.requests == 3
            assert nse.counts.closes == 1
        assert await mesh.leaks(baseline) == []


async def test_nsmgr_heal_nsmgr_remote_new(autojump_clock: object) -> None:
    """The remote nsmgr dies for good: the client reselects an endpoint on a third node."""
    async with open_mesh(nodes=3) as mesh:
        await mesh.register_service("heal")
        await mesh.add_endpoint("nse-1", "heal", node=1, cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        count = total(mesh, "nse-1", "nse-2")
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://heal/nsm-1", node=0) as conn:
                await mesh.add_endpoint("nse-2", "heal", node=2, cidr="169.254.2.0/24")
                await mesh.kill("nsmgr-1")
                await conn.wait_for(EventKind.HEALED)
                assert names(conn)[3:] == ["nsmgr-2", "forwarder-2-0", "nse-2"]
                assert count("unique_requests") == 2
                closes = count("unique_closes")
                await conn.wait_for(EventKind.REFRESHED)
            assert count("unique_requests") == 2
            assert count("unique_closes") == closes + 1
        # Node 1's forwarder and endpoint lost their upstream: they close at token expiry.
        await trio.sleep(TOKEN_LIFETIME)
        assert await mesh.leaks(baseline) == []
        assert mesh.hop("nse-1").counts.closes == 1  # type: ignore[union-attr]


# -- TestNSMGR_HealRegistry ----------------------------------------------------------------------


async def test_nsmgr_heal_registry(autojump_clock: object) -> None:
    """A registry restart loses every registration: leases re-register, connections survive."""
    async with open_mesh() as mesh:
        await mesh.register_service("heal")
        await mesh.add_endpoint("nse-1", "heal", cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        nse = mesh.hop("nse-1")
        assert nse is not None
        leases = [mesh["nse-1"].lease, mesh["forwarder-0-0"].lease, mesh["ns:heal"]]
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://heal/nsm-1") as conn:
                registered = [lease.registrations for lease in leases]
                await mesh.restart("registry")
                for lease, count in zip(leases, registered, strict=True):
                    await lease.wait_registrations(count + 1)
                await conn.wait_for(EventKind.REFRESHED)  # the refresh still works
                async with mesh.connect("noop://heal/nsm-2") as second:
                    assert names(second)[-1] == "nse-1"
                assert nse.counts.requests == 3
                assert {event.kind for event in conn.history} == {
                    EventKind.CONNECTED,
                    EventKind.REFRESHED,
                }
        assert await mesh.leaks(baseline) == []


# -- TestNSMGR_CloseHeal -------------------------------------------------------------------------


@pytest.mark.parametrize("expire", [False, True], ids=["without_nse_expiration", "with"])
async def test_nsmgr_close_heal(autojump_clock: object, expire: bool) -> None:
    """Closing the client while it heals ends the heal and leaves nothing behind."""
    async with open_mesh(registry_options={"expiry": 1.0}) as mesh:
        await mesh.register_service("heal")
        await mesh.add_endpoint("nse-1", "heal", cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://heal/nsm-1") as conn:
                await mesh.kill("nse-1")
                await conn.wait_for(EventKind.DOWN)  # heal started; nowhere to go
                if expire:
                    await trio.sleep(1.5)  # past the endpoint's registration expiry
                    async with open_client(mesh.nsmgr_url(0)) as nsmgr:
                        query = NetworkServiceEndpoint(name="nse-1")
                        assert await find_endpoints(nsmgr, query, bound=5.0) == []
            assert conn.heals == 0
            assert conn.history[-1].kind is EventKind.CLOSED
        assert await mesh.leaks(baseline) == []


# -- TestNSMGR_RefreshFailed_* -------------------------------------------------------------------


async def test_nsmgr_refresh_failed_data_plane_broken(autojump_clock: object) -> None:
    """nse-1 takes one Request only: the refresh fails, then the data plane breaks and the
    client heals onto nse-2, reaching it exactly once."""
    async with open_mesh() as mesh:
        await mesh.register_service("heal")
        await mesh.add_endpoint("nse-1", "heal", cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        nse1 = mesh.hop("nse-1")
        assert nse1 is not None

        refused = trio.Event()

        async def once(request: NetworkServiceRequest) -> None:
            if nse1.counts.requests > 1:
                refused.set()
                raise ResourceExhausted("nse-1 takes one Request only", hop="nse-1")

        nse1.before_request = once
        data_plane = {"alive": True}
        with trio.fail_after(TOKEN_LIFETIME):
            async with mesh.connect("noop://heal/nsm-1", liveness=alive_while(data_plane)) as conn:
                assert nse1.counts.requests == 1
                await mesh.add_endpoint("nse-2", "heal", cidr="169.254.2.0/24")
                nse2 = mesh.hop("nse-2")
                assert nse2 is not None

                async def restore(request: NetworkServiceRequest) -> None:
                    data_plane["alive"] = True  # the new path's data plane works

                nse2.before_request = restore
                await refused.wait()  # the refresh reached nse-1 and failed
                data_plane["alive"] = False
                healed = await conn.wait_for(EventKind.HEALED)
                assert "reselected" in healed.reason
                assert nse2.counts.unique_requests == 1
                assert nse2.counts.requests == 1
                assert names(conn)[-1] == "nse-2"
        assert await mesh.leaks(baseline) == []


@pytest.mark.slow  # 2,400 refresh attempts, each through the whole path
async def test_nsmgr_refresh_failed_without_liveness_heals_before_the_tokens_run_out(
    autojump_clock: object,
) -> None:
    """No liveness check: the refresh keeps failing (retried every 200 ms); the nsmgr closes
    the connection at its caller's token expiry less the request timeout, and the client,
    seeing it closed, reselects nse-2 before its own tokens run out."""
    async with open_mesh() as mesh:
        await mesh.register_service("heal")
        await mesh.add_endpoint("nse-1", "heal", cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        nse1 = mesh.hop("nse-1")
        assert nse1 is not None

        async def once(request: NetworkServiceRequest) -> None:
            if nse1.counts.requests > 1:
                raise ResourceExhausted("nse-1 takes one Request only", hop="nse-1")

        nse1.before_request = once
        with trio.fail_after(TOKEN_LIFETIME * 2):
            async with mesh.connect("noop://heal/nsm-1") as conn:
                connected = conn.history[0].at
                await mesh.add_endpoint("nse-2", "heal", cidr="169.254.2.0/24")
                down = await conn.wait_for(EventKind.DOWN)
                assert "closed" in down.reason
                assert TOKEN_LIFETIME - 30.0 < down.at - connected < TOKEN_LIFETIME
                assert nse1.counts.requests > 100  # a refresh attempt every 200 ms
                await conn.wait_for(EventKind.HEALED)
                assert names(conn)[-1] == "nse-2"
        assert await mesh.leaks(baseline) == []


async def test_nsmgr_refresh_failed_control_plane_broken(autojump_clock: object) -> None:
    """The forwarder dies while a refresh is under way: the connection is restored through a
    new forwarder and the endpoint sees 2 Requests in all; Close works."""
    async with open_mesh() as mesh:
        await mesh.register_service("heal")
        await mesh.add_endpoint("nse-1", "heal", cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        nse = mesh.hop("nse-1")
        nsmgr = mesh.hop("nsmgr-0")
        assert nse is not None
        assert nsmgr is not None
        gate = trio.Event()
        held = trio.Event()

        async def hold_refresh(request: NetworkServiceRequest) -> None:
            if nsmgr.counts.requests >= 2:
                held.set()
                await gate.wait()

        nsmgr.before_request = hold_refresh
        with trio.fail_after(BOUND * 10):
            async with mesh.connect("noop://heal/nsm-1") as conn:
                assert nse.counts.requests == 1
                await held.wait()  # the refresh is inside the nsmgr
                await mesh.kill("forwarder-0-0")
                await mesh.add_forwarder("forwarder-0-1", node=0)
                gate.set()
                # The held refresh fails over to the new forwarder (the nsmgr tries the
                # remembered forwarder first, then the others): no heal is needed.
                await conn.wait_for(EventKind.REFRESHED)
                assert names(conn)[2] == "forwarder-0-1"
                assert EventKind.DOWN not in {event.kind for event in conn.history}
                assert nse.counts.requests == 2
            assert nse.counts.requests == 2
            assert nse.counts.closes == 1
        assert await mesh.leaks(baseline) == []


# -- TestNSMGRHealEndpoint_CustomReselectFunc ----------------------------------------------------


async def test_nsmgr_heal_endpoint_custom_reselect_func(autojump_clock: object) -> None:
    def with_label(connection: Connection) -> Connection:
        reselected = reselect_default(connection)
        reselected.labels = {**connection.labels, "key": "value"}
        return reselected

    async with open_mesh() as mesh:
        await mesh.register_service("heal")
        await mesh.add_endpoint("nse-1", "heal", cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://heal/nsm-1", reselect=with_label) as conn:
                assert conn.connection is not None
                assert "key" not in conn.connection.labels
                await mesh.kill("nse-1")
                await mesh.add_endpoint("nse-2", "heal", cidr="169.254.2.0/24")
                await conn.wait_for(EventKind.HEALED)
                assert conn.connection.labels["key"] == "value"
                assert names(conn)[-1] == "nse-2"
        assert await mesh.leaks(baseline) == []
