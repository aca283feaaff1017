"""MonitorHub: NSM's selector rules, initial state then ordered changes, slow subscribers."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

import pytest
import trio

from trionsm.actors import _monitor
from trionsm.actors._monitor import MonitorHub, selector_matches
from trionsm.api.connection import (
    Connection,
    ConnectionEvent,
    ConnectionEventType,
    MonitorScopeSelector,
    Path,
    PathSegment,
    State,
)
from trionsm.errors import Unavailable


def connection(cid: str, *hops: tuple[str, str], service: str = "icmp") -> Connection:
    segments = [PathSegment(name=name, id=sid) for name, sid in hops]
    return Connection(id=cid, network_service=service, path=Path(index=0, path_segments=segments))


PATH = (("nsc", "c-1"), ("nsmgr", "m-1"), ("forwarder", "f-1"), ("nse", "e-1"))


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (None, True),
        (MonitorScopeSelector(), True),
        (MonitorScopeSelector(network_services=["icmp"]), True),
        (MonitorScopeSelector(network_services=["vpn"]), False),
        (MonitorScopeSelector(path_segments=[PathSegment(id="m-1")]), True),
        (MonitorScopeSelector(path_segments=[PathSegment(name="forwarder")]), True),
        (MonitorScopeSelector(path_segments=[PathSegment(name="nsmgr", id="f-1")]), False),
        (
            MonitorScopeSelector(
                path_segments=[PathSegment(name="nsmgr"), PathSegment(name="forwarder")]
            ),
            True,
        ),
        (
            MonitorScopeSelector(path_segments=[PathSegment(name="nsc"), PathSegment(name="nse")]),
            False,  # not contiguous
        ),
        (
            MonitorScopeSelector(
                path_segments=[PathSegment(id="e-1"), PathSegment(id="after-the-end")]
            ),
            False,
        ),
        (
            MonitorScopeSelector(
                path_segments=[PathSegment(id="c-1")], network_services=["vpn", "icmp"]
            ),
            True,
        ),
    ],
)
def test_selector_rules(selector: MonitorScopeSelector | None, expected: bool) -> None:
    assert selector_matches(selector, connection("m-1", *PATH)) is expected


async def collect(stream: object, count: int) -> list[ConnectionEvent]:
    events = []
    async for event in stream:  # type: ignore[attr-defined]
        events.append(event)
        if len(events) == count:
            break
    return events


async def test_initial_state_then_updates_and_deletes_in_order() -> None:
    hub = MonitorHub("nsmgr")
    hub.update(connection("a", ("nsc", "a")))
    hub.update(connection("b", ("nsc", "b"), service="vpn"))
    stream = hub.stream(MonitorScopeSelector(network_services=["icmp"]))
    first = await stream.__anext__()
    assert first.type is ConnectionEventType.INITIAL_STATE_TRANSFER
    assert list(first.connections) == ["a"]
    hub.update(connection("c", ("nsc", "c"), service="vpn"))  # out of scope
    down = connection("a", ("nsc", "a"))
    down.state = State.DOWN
    hub.update(down)
    assert hub.delete("a") is down
    assert hub.delete("never") is None
    events = [await stream.__anext__(), await stream.__anext__()]
    assert [(e.type, list(e.connections)) for e in events] == [
        (ConnectionEventType.UPDATE, ["a"]),
        (ConnectionEventType.DELETE, ["a"]),
    ]
    assert events[0].connections["a"].state is State.DOWN
    assert hub.subscriber_count == 1
    await stream.aclose()
    assert hub.subscriber_count == 0
    assert set(hub.connections()) == {"b", "c"}


async def test_a_slow_subscriber_gets_each_connections_newest_state_and_is_never_dropped() -> None:
    """A stream shared by thousands of connections fell 1,024 events behind under load and was
    dropped (every connection on it broke at once): a slow one's queue is compacted to each
    connection's newest event, it ends with every connection's latest state, and the fast one
    sees every event."""
    hub = MonitorHub("forwarder")
    async with aclosing(hub.stream(None)) as slow, aclosing(hub.stream(None)) as fast:
        await slow.__anext__()
        await fast.__anext__()
        for round_ in range(3):
            for index in range(1000):
                hub.update(connection(f"x{index}", ("nsc", f"x{index}"), service=f"s{round_}"))
                event = await fast.__anext__()
                assert event.connections[f"x{index}"].network_service == f"s{round_}"
        hub.delete("x1")
        queue = max(hub._subscribers, key=lambda subscriber: len(subscriber.pending))
        assert len(queue.pending) <= 2 * 1000 + 1
        state: dict[str, str] = {}
        for event in await collect(slow, len(queue.pending)):
            for cid, conn in event.connections.items():
                if event.type is ConnectionEventType.DELETE:
                    state.pop(cid, None)
                else:
                    state[cid] = conn.network_service
        assert state == {f"x{i}": "s2" for i in range(1000) if i != 1}
        assert hub.subscriber_count == 2


async def test_a_large_initial_state_comes_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """One event of every connection would be over the message limit past about 2,000."""
    monkeypatch.setattr(_monitor, "INITIAL_CHUNK", 4)
    hub = MonitorHub("nsmgr")
    for index in range(10):
        hub.update(connection(f"m-{index}", ("nsc", f"c-{index}")))
    async with aclosing(hub.stream(None)) as stream:
        events = await collect(stream, 3)
    assert [len(e.connections) for e in events] == [4, 4, 2]
    assert {e.type for e in events} == {ConnectionEventType.INITIAL_STATE_TRANSFER}
    assert set().union(*(e.connections for e in events)) == {f"m-{i}" for i in range(10)}


async def test_closing_the_hub_ends_streams_with_unavailable() -> None:
    hub = MonitorHub("nse")
    async with aclosing(hub.stream(None)) as stream:
        await check_close(hub, stream)


async def check_close(hub: MonitorHub, stream: AsyncGenerator[ConnectionEvent]) -> None:
    await stream.__anext__()
    async with trio.open_nursery() as nursery:

        async def close_soon() -> None:
            hub.close("the endpoint stopped")

        nursery.start_soon(close_soon)
        with pytest.raises(Unavailable, match="the endpoint stopped"):
            await stream.__anext__()
    with pytest.raises(Unavailable):
        async with aclosing(hub.stream(None)) as again:
            await again.__anext__()


async def test_a_stream_per_connection_sees_its_own_connection_only() -> None:
    """Subscribers naming a segment id are indexed by it; the others still see everything."""
    hub = MonitorHub("nsmgr")
    mine = MonitorScopeSelector(path_segments=[PathSegment(id="c-2", name="nsc")])
    async with (
        aclosing(hub.stream(mine)) as own,
        aclosing(hub.stream(None)) as every,
        aclosing(hub.stream(MonitorScopeSelector(path_segments=[PathSegment(id="m-9")]))) as other,
    ):
        for stream in (own, every, other):
            assert not (await stream.__anext__()).connections
        assert hub.subscriber_count == 3
        for index in range(1, 4):
            hub.update(connection(f"m-{index}", ("nsc", f"c-{index}"), ("nsmgr", f"m-{index}")))
        hub.delete("m-2")
        events = await collect(own, 2)
        assert [(e.type, list(e.connections)) for e in events] == [
            (ConnectionEventType.UPDATE, ["m-2"]),
            (ConnectionEventType.DELETE, ["m-2"]),
        ]
        assert len(await collect(every, 4)) == 4
        hub.update(connection("m-9", ("nsc", "c-9"), ("nsmgr", "m-9")))
        assert list((await other.__anext__()).connections) == ["m-9"]
    assert hub.subscriber_count == 0


async def test_a_keyed_initial_state_looks_at_its_own_segment_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An nsmgr with 10,000 connections scanned all of them for each new NSC's stream."""
    hub = MonitorHub("nsmgr")
    for index in range(1000):
        hub.update(connection(f"m-{index}", ("nsc", f"c-{index}"), ("nsmgr", f"m-{index}")))
    # a reselect moved m-5 to another path: its old segment ids no longer lead to it
    hub.update(connection("m-5", ("nsc", "c-5"), ("nsmgr", "m-5"), ("forwarder", "f-5")))
    hub.update(connection("m-5", ("nsc", "c-new"), ("nsmgr", "m-5")))
    # two connections sharing a segment id are both found, and one leaving keeps the other
    hub.update(connection("m-1000", ("nsc", "c-7"), ("nsmgr", "m-1000")))
    checked = []

    def counting(selector: MonitorScopeSelector | None, conn: Connection) -> bool:
        checked.append(conn.id)
        return selector_matches(selector, conn)

    monkeypatch.setattr("trionsm.actors._monitor.selector_matches", counting)

    async def initial(segment_id: str, name: str = "") -> list[str]:
        selector = MonitorScopeSelector(path_segments=[PathSegment(id=segment_id, name=name)])
        async with aclosing(hub.stream(selector)) as stream:
            return sorted((await stream.__anext__()).connections)

    assert await initial("c-3", "nsc") == ["m-3"]
    assert await initial("m-4") == ["m-4"]  # a hop's own id, further down the path
    assert await initial("c-3", "nsmgr") == []  # the id is there, the name is not
    assert await initial("f-5") == []
    assert await initial("c-5") == []
    assert await initial("c-new") == ["m-5"]
    assert await initial("c-7") == ["m-1000", "m-7"]
    hub.delete("m-7")
    assert await initial("c-7") == ["m-1000"]
    hub.delete("m-1000")
    assert await initial("c-7") == []
    assert len(checked) <= 10  # not 10 x 1,000
    async with aclosing(hub.stream(None)) as every:
        initial = await collect(every, 2)  # in chunks of 500
        assert sum(len(event.connections) for event in initial) == 999
