"""NSM's use-case tests around heal (``single_test.go``, ``suite_test.go``), in one process.

As in ``test_heal``: NSM's assertions on the hop counters and the client's events, mock time,
waits on events bounded by ``trio.fail_after``, ``await mesh.leaks(baseline) == []`` at the end.
"""

from __future__ import annotations

import pytest
import trio

from trionsm.actors.client import ClientConnection, EventKind
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.api.registry import Destination, Match, NetworkService
from trionsm.errors import ResourceExhausted
from trionsm.scenario import open_mesh

BOUND = 300.0
"""Mock seconds any wait may take (a refresh comes every ~2 minutes)."""
REQUEST_TIMEOUT = 15.0
"""Every hop closes a connection nobody refreshed at its caller's token expiry minus this."""


def names(conn: ClientConnection) -> list[str]:
    assert conn.connection is not None
    assert conn.connection.path is not None
    return [segment.name for segment in conn.connection.path.path_segments]


def addresses(conn: ClientConnection) -> tuple[list[str], list[str]]:
    assert conn.connection is not None
    assert conn.connection.context is not None
    ip = conn.connection.context.ip_context
    assert ip is not None
    return list(ip.src_ip_addrs), list(ip.dst_ip_addrs)


# -- Test_Timeout --------------------------------------------------------------------------------


async def test_timeout(autojump_clock: object) -> None:
    """The client dies without a Close: every hop closes its part when the token it holds
    from the previous hop runs out (less the request timeout), and nothing is left."""
    async with open_mesh() as mesh:
        await mesh.register_service("timeout")
        await mesh.add_endpoint("nse-1", "timeout", cidr="169.254.1.0/24")
        baseline = mesh.baseline()
        nsmgr, nse = mesh.hop("nsmgr-0"), mesh.hop("nse-1")
        assert nsmgr is not None
        assert nse is not None
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://timeout/nsm-1", close_on_exit=False) as conn:
                assert len(nsmgr.hub) == len(nse.hub) == 1
            gone = trio.current_time()  # no Close: the client vanished
        assert conn.closes == 0
        assert conn.history[-1].kind is EventKind.CONNECTED
        await trio.sleep(600.0 - REQUEST_TIMEOUT - 5.0)  # 10-minute tokens
        assert len(nsmgr.hub) == len(nse.hub) == 1
        assert nse.counts.closes == 0
        await trio.sleep(10.0)
        assert trio.current_time() - gone < 600.0
        assert await mesh.leaks(baseline) == []
        assert nse.counts.closes == 1  # the expiry's Close went down the path


# -- Test_ReselectEndpointWhenNetSvcHasChanged ---------------------------------------------------


async def test_reselect_endpoint_when_net_svc_has_changed(autojump_clock: object) -> None:
    """The network service changes so that the endpoint in use no longer matches: the nsmgr
    closes the connection (``netsvcmonitor``) and the client heals onto the one that does."""
    async with open_mesh() as mesh:
        ns = await mesh.register_service("my-service")
        await mesh.add_endpoint("nse-1", "my-service", cidr="169.254.100.100/30")
        baseline = mesh.baseline()
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://my-service/nsm-1") as conn:
                assert len(names(conn)) == 4
                assert names(conn)[-1] == "nse-1"
                assert addresses(conn) == (["169.254.100.101/32"], ["169.254.100.100/32"])
                selector = {"experimental": "true"}
                changed = NetworkService(
                    name=ns.name,
                    payload=ns.payload,
                    matches=[Match(routes=[Destination(destination_selector=selector)])],
                )
                await mesh.register_service(changed)
                await mesh.add_endpoint(
                    "nse-2", "my-service", labels=selector, cidr="169.254.200.200/30"
                )
                down = await conn.wait_for(EventKind.DOWN)
                assert "closed" in down.reason
                await conn.wait_for(EventKind.HEALED)
                assert len(names(conn)) == 4
                assert names(conn)[-1] == "nse-2"
                src, dst = addresses(conn)  # (nse-2 keeps nse-1's addresses, which are outside
                assert "169.254.200.201/32" in src  # its pools, as NSM's point2pointipam does;
                assert "169.254.200.200/32" in dst  # strictipam would drop them)
                await conn.wait_for(EventKind.REFRESHED)  # nse-2 matches: no more closes
                assert conn.heals == 1
        assert await mesh.leaks(baseline) == []


async def test_a_network_service_change_that_keeps_the_endpoint_closes_nothing(
    autojump_clock: object,
) -> None:
    async with open_mesh() as mesh:
        await mesh.register_service("my-service")
        await mesh.add_endpoint(
            "nse-1", "my-service", labels={"color": "red"}, cidr="169.254.1.0/24"
        )
        baseline = mesh.baseline()
        with trio.fail_after(BOUND):
            async with mesh.connect("noop://my-service/nsm-1") as conn:
                match = Match(routes=[Destination(destination_selector={"color": "red"})])
                await mesh.register_service(NetworkService(name="my-service", matches=[match]))
                await conn.wait_for(EventKind.REFRESHED)
                assert {event.kind for event in conn.history} == {
                    EventKind.CONNECTED,
                    EventKind.REFRESHED,
                }
        assert await mesh.leaks(baseline) == []


# -- Test_Remote_BusyEndpointsUsecase ------------------------------------------------------------


async def busy(request: NetworkServiceRequest) -> None:
    """An endpoint that refuses every Request (NSM's ``newBusyEndpoint``)."""
    connection = request.connection
    service = connection.network_service if connection is not None else None
    hop = connection.network_service_endpoint_name if connection is not None else None
    raise ResourceExhausted("busy: no room for another connection", hop=hop, service=service)


async def test_remote_busy_endpoints_usecase(autojump_clock: object) -> None:
    """Three endpoints refuse; the client's first Request is retried until a fourth appears."""
    async with open_mesh(nodes=2) as mesh:
        await mesh.register_service("busy")
        for i in range(3):
            await mesh.add_endpoint(f"nse-{i}", "busy", node=1, cidr=f"169.254.{i}.0/24")
            hop = mesh.hop(f"nse-{i}")
            assert hop is not None
            hop.before_request = busy
        baseline = mesh.baseline()
        with pytest.raises(ResourceExhausted) as refused:
            async with mesh.connect("noop://busy/nsm-1", node=0, request_timeout=1.0):
                pass
        message = str(refused.value)
        assert "service 'busy'" in message
        assert all(f"nse-{i}" in message for i in range(3))
        assert "busy: no room" in message
        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:

                async def add_a_good_one() -> None:
                    await trio.sleep(0.5)
                    await mesh.add_endpoint("nse-3", "busy", node=1, cidr="169.254.3.0/24")

                nursery.start_soon(add_a_good_one)
                async with mesh.connect("noop://busy/nsm-1", node=0) as conn:
                    assert len(names(conn)) == 6
                    assert names(conn)[-1] == "nse-3"
                    good = mesh.hop("nse-3")
                    assert good is not None
                    assert good.counts.requests == 1
        assert await mesh.leaks(baseline) == []


# -- parallel clients ----------------------------------------------------------------------------


async def test_parallel_usecase(autojump_clock: object) -> None:
    """Fifty clients on one node connect at once, all get their own addresses, all close."""
    clients = 50
    async with open_mesh() as mesh:
        await mesh.register_service("parallel")
        await mesh.add_endpoint("nse-1", "parallel", cidr="169.254.0.0/16")
        baseline = mesh.baseline()
        nse = mesh.hop("nse-1")
        assert nse is not None
        connected: list[ClientConnection] = []
        all_connected = trio.Event()
        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:

                async def client(i: int) -> None:
                    async with mesh.connect("noop://parallel/nsm-1", name=f"nsc-{i}") as conn:
                        connected.append(conn)
                        if len(connected) == clients:
                            all_connected.set()
                        await all_connected.wait()

                for i in range(clients):
                    nursery.start_soon(client, i)
                await all_connected.wait()
                assert len(nse.hub) == clients
                pairs = {tuple(map(tuple, addresses(conn))) for conn in connected}
                assert len(pairs) == clients
        assert all(conn.history[-1].kind is EventKind.CLOSED for conn in connected)
        assert nse.counts.unique_closes == clients
        assert await mesh.leaks(baseline) == []
