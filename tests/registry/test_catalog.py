"""The catalog: the registry's indexed view of one kind of entry, its watchers and revisions.

Catalogs are built with the same arguments the stores use (name, services, Find rules); a counting
wrapper around the Find rule shows which entries a Find looked at. Watchers are read with
``receive_nowait`` where the point is what is already queued, so no test waits on time.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from trionsm.actors.registry import Catalog, Change, Watcher, endpoint_matches, service_matches
from trionsm.api.registry import NetworkService, NetworkServiceEndpoint
from trionsm.errors import ResourceExhausted, Unavailable

Matcher = Callable[[NetworkServiceEndpoint, NetworkServiceEndpoint], bool]


def endpoint_catalog(
    *, watch_buffer: int = 64, matches: Matcher = endpoint_matches, hop: str = "registry"
) -> Catalog[NetworkServiceEndpoint]:
    return Catalog(
        "endpoint",
        name_of=lambda nse: nse.name,
        services_of=lambda nse: nse.network_service_names,
        query_services=lambda query: query.network_service_names,
        query_name=lambda query: query.name,
        matches=matches,
        watch_buffer=watch_buffer,
        hop=hop,
    )


def service_catalog() -> Catalog[NetworkService]:
    return Catalog(
        "service",
        name_of=lambda ns: ns.name,
        services_of=lambda ns: (),
        query_services=lambda query: (),
        query_name=lambda query: query.name,
        matches=service_matches,
    )


class CountingMatcher:
    """The endpoint Find rule, remembering the names of the entries it was asked about."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, query: NetworkServiceEndpoint, entry: NetworkServiceEndpoint) -> bool:
        self.seen.append(entry.name)
        return endpoint_matches(query, entry)


def nse(name: str, *services: str, url: str = "tcp://10.0.0.1:5001") -> NetworkServiceEndpoint:
    return NetworkServiceEndpoint(name=name, network_service_names=list(services), url=url)


def by_services(*services: str) -> NetworkServiceEndpoint:
    return NetworkServiceEndpoint(network_service_names=list(services))


def names(entries: list[NetworkServiceEndpoint]) -> list[str]:
    return [entry.name for entry in entries]


def pending(
    watcher_receive: trio.MemoryReceiveChannel[Change[NetworkServiceEndpoint]],
) -> list[Change[NetworkServiceEndpoint]]:
    """Every change already queued for a watcher, without waiting."""
    changes = []
    while True:
        try:
            changes.append(watcher_receive.receive_nowait())
        except trio.WouldBlock:
            return changes


# -- put, get, delete, find -----------------------------------------------------------------------


def test_put_get_delete() -> None:
    catalog = endpoint_catalog()
    first = nse("nse-1", "vpn")
    assert catalog.put(first) is None
    assert catalog.get("nse-1") is first
    assert "nse-1" in catalog
    assert len(catalog) == 1
    second = nse("nse-1", "vpn", url="tcp://10.0.0.2:5001")
    assert catalog.put(second) is first  # the previous value
    assert catalog.get("nse-1") is second
    assert len(catalog) == 1
    assert catalog.delete("nse-1") is second
    assert catalog.get("nse-1") is None
    assert "nse-1" not in catalog
    assert len(catalog) == 0
    assert catalog.delete("nse-1") is None
    assert catalog.find(NetworkServiceEndpoint()) == []


def test_names_and_find_keep_registration_order() -> None:
    catalog = endpoint_catalog()
    for name in ("c", "a", "b"):
        catalog.put(nse(name, "vpn"))
    catalog.put(nse("a", "vpn", url="tcp://10.0.0.9:1"))  # a replacement keeps its place
    assert catalog.names() == ["c", "a", "b"]
    assert names(catalog.find(NetworkServiceEndpoint())) == ["c", "a", "b"]
    assert names(catalog.find(by_services("vpn"))) == ["c", "a", "b"]
    catalog.put(nse("a", "vpn", "dns"))  # joins dns now: last there, still second under vpn
    catalog.put(nse("b", "vpn", "dns"))
    catalog.put(nse("c", "dns"))  # leaves vpn, joins dns last
    assert names(catalog.find(by_services("vpn"))) == ["a", "b"]
    assert names(catalog.find(by_services("dns"))) == ["a", "b", "c"]
    assert names(catalog.find(NetworkServiceEndpoint())) == ["c", "a", "b"]


def test_find_by_name() -> None:
    catalog = endpoint_catalog()
    catalog.put(nse("nse-1", "vpn"))
    catalog.put(nse("nse-2", "vpn"))
    assert names(catalog.find(NetworkServiceEndpoint(name="nse-2"))) == ["nse-2"]
    assert catalog.find(NetworkServiceEndpoint(name="nse-3")) == []
    assert catalog.find(NetworkServiceEndpoint(name="nse-2", network_service_names=["dns"])) == []


def test_find_by_one_service_touches_only_that_service() -> None:
    counting = CountingMatcher()
    catalog = endpoint_catalog(matches=counting)
    catalog.put(nse("vpn-1", "vpn"))
    catalog.put(nse("both", "vpn", "dns"))
    for index in range(50):
        catalog.put(nse(f"dns-{index}", "dns"))
    counting.seen.clear()
    assert names(catalog.find(by_services("vpn"))) == ["vpn-1", "both"]
    assert sorted(counting.seen) == ["both", "vpn-1"]


def test_find_by_several_services_intersects() -> None:
    counting = CountingMatcher()
    catalog = endpoint_catalog(matches=counting)
    catalog.put(nse("a", "vpn"))
    catalog.put(nse("ab", "vpn", "dns"))
    catalog.put(nse("abc", "vpn", "dns", "web"))
    catalog.put(nse("b", "dns"))
    catalog.put(nse("bc", "dns", "web"))
    assert names(catalog.find(by_services("vpn", "dns"))) == ["ab", "abc"]
    assert names(catalog.find(by_services("dns", "vpn", "web"))) == ["abc"]
    assert names(catalog.find(by_services("web", "vpn"))) == ["abc"]
    counting.seen.clear()
    catalog.find(by_services("dns", "web"))  # looks only at the smaller of the two sets
    assert sorted(counting.seen) == ["abc", "bc"]


def test_find_by_an_unknown_service_is_empty() -> None:
    counting = CountingMatcher()
    catalog = endpoint_catalog(matches=counting)
    catalog.put(nse("a", "vpn"))
    counting.seen.clear()
    assert catalog.find(by_services("web")) == []
    assert catalog.find(by_services("vpn", "web")) == []
    assert counting.seen == []


def test_find_applies_every_rule_after_the_index() -> None:
    catalog = endpoint_catalog()
    catalog.put(nse("a", "vpn", url="tcp://10.0.0.1:5001"))
    catalog.put(nse("b", "vpn", url="tcp://10.0.0.2:5001"))
    query = NetworkServiceEndpoint(network_service_names=["vpn"], url="10.0.0.2")
    assert names(catalog.find(query)) == ["b"]


def test_a_replacement_is_reindexed() -> None:
    counting = CountingMatcher()
    catalog = endpoint_catalog(matches=counting)
    catalog.put(nse("nse-1", "vpn", "dns"))
    catalog.put(nse("nse-1", "dns", "web"))  # re-registered without vpn
    counting.seen.clear()
    assert catalog.find(by_services("vpn")) == []
    assert counting.seen == []  # not even a candidate any more
    assert names(catalog.find(by_services("dns"))) == ["nse-1"]
    assert names(catalog.find(by_services("web"))) == ["nse-1"]
    assert catalog.find(by_services("dns"))[0].network_service_names == ["dns", "web"]


def test_a_delete_is_unindexed() -> None:
    counting = CountingMatcher()
    catalog = endpoint_catalog(matches=counting)
    catalog.put(nse("nse-1", "vpn"))
    catalog.put(nse("nse-2", "vpn"))
    catalog.delete("nse-1")
    counting.seen.clear()
    assert names(catalog.find(by_services("vpn"))) == ["nse-2"]
    assert counting.seen == ["nse-2"]
    catalog.delete("nse-2")
    assert catalog.find(by_services("vpn")) == []


def test_services_are_found_by_name_payload_or_all() -> None:
    catalog = service_catalog()
    catalog.put(NetworkService(name="vpn", payload="ETHERNET"))
    catalog.put(NetworkService(name="dns", payload="IP"))
    assert [ns.name for ns in catalog.find(NetworkService())] == ["vpn", "dns"]
    assert [ns.name for ns in catalog.find(NetworkService(name="dns"))] == ["dns"]
    assert [ns.name for ns in catalog.find(NetworkService(payload="ETHERNET"))] == ["vpn"]
    assert catalog.find(NetworkService(name="web")) == []


def test_a_watch_buffer_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="watch_buffer"):
        endpoint_catalog(watch_buffer=0)


# -- watchers -------------------------------------------------------------------------------------


async def test_watch_snapshots_and_subscribes_atomically() -> None:
    catalog = endpoint_catalog()
    before = nse("nse-1", "vpn")
    catalog.put(before)
    catalog.put(nse("other", "dns"))
    with catalog.watch(by_services("vpn")) as (snapshot, watcher):
        assert snapshot == [before]
        assert pending(watcher.receive) == []  # what the snapshot holds is not sent again
        after = nse("nse-2", "vpn")
        catalog.put(after)
        assert await watcher.__anext__() == Change(after)
        assert pending(watcher.receive) == []


async def test_a_put_that_matches_is_an_update() -> None:
    catalog = endpoint_catalog()
    with catalog.watch(by_services("vpn")) as (snapshot, watcher):
        assert snapshot == []
        first = nse("nse-1", "vpn")
        catalog.put(first)
        refreshed = nse("nse-1", "vpn", "dns")
        catalog.put(refreshed)
        catalog.put(nse("elsewhere", "dns"))  # never matched: not sent
        assert pending(watcher.receive) == [Change(first), Change(refreshed)]
        assert not Change(first).deleted


async def test_a_put_that_leaves_the_query_is_a_deletion_of_the_old_value() -> None:
    catalog = endpoint_catalog()
    old = nse("nse-1", "vpn", "dns")
    catalog.put(old)
    with catalog.watch(by_services("vpn")) as (snapshot, watcher):
        assert snapshot == [old]
        catalog.put(nse("nse-1", "dns"))  # re-registered without vpn
        assert pending(watcher.receive) == [Change(old, deleted=True)]
        catalog.put(nse("nse-1", "web"))  # was not matching, still not: nothing
        assert pending(watcher.receive) == []
        back = nse("nse-1", "vpn")
        catalog.put(back)
        assert pending(watcher.receive) == [Change(back)]


async def test_a_delete_is_a_deletion() -> None:
    catalog = endpoint_catalog()
    entry = nse("nse-1", "vpn")
    catalog.put(entry)
    catalog.put(nse("other", "dns"))
    with catalog.watch(by_services("vpn")) as (_, watcher):
        catalog.delete("other")  # not watched
        catalog.delete("missing")
        assert catalog.delete("nse-1") is entry
        assert pending(watcher.receive) == [Change(entry, deleted=True)]


async def test_watchers_see_their_own_queries() -> None:
    catalog = endpoint_catalog()
    with (
        catalog.watch(by_services("vpn")) as (_, vpn),
        catalog.watch(NetworkServiceEndpoint(name="nse-2")) as (_, named),
        catalog.watch(NetworkServiceEndpoint()) as (_, everything),
    ):
        one, two = nse("nse-1", "vpn"), nse("nse-2", "dns")
        catalog.put(one)
        catalog.put(two)
        assert pending(vpn.receive) == [Change(one)]
        assert pending(named.receive) == [Change(two)]
        assert pending(everything.receive) == [Change(one), Change(two)]


async def test_order_is_preserved_under_many_changes() -> None:
    catalog = endpoint_catalog(watch_buffer=10_000)
    expected: list[Change[NetworkServiceEndpoint]] = []
    received: list[Change[NetworkServiceEndpoint]] = []
    with catalog.watch(by_services("vpn")) as (_, watcher):

        async def read() -> None:
            async for change in watcher:
                if change.value.name == "end":
                    return
                received.append(change)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            for step in range(2_000):
                name = f"nse-{step % 37}"
                if step % 5 == 4:
                    removed = catalog.delete(name)
                    if removed is not None and "vpn" in removed.network_service_names:
                        expected.append(Change(removed, deleted=True))
                else:
                    services = ("vpn",) if step % 3 else ("dns",)
                    value = nse(name, *services, url=f"tcp://10.0.0.1:{step + 1}")
                    previous = catalog.put(value)
                    if "vpn" in services:
                        expected.append(Change(value))
                    elif previous is not None and "vpn" in previous.network_service_names:
                        expected.append(Change(previous, deleted=True))
                if step % 100 == 0:
                    await trio.testing.wait_all_tasks_blocked()  # let the reader interleave
            catalog.put(nse("end", "vpn"))
    assert received == expected
    assert len(expected) > 1_000
    assert any(change.deleted for change in expected)


async def test_a_watcher_that_falls_behind_is_closed_with_resource_exhausted() -> None:
    catalog = endpoint_catalog(watch_buffer=3, hop="registry@node-1")
    with (
        catalog.watch(by_services("vpn")) as (_, slow),
        catalog.watch(by_services("vpn")) as (_, fast),
    ):
        sent = [nse(f"nse-{index}", "vpn") for index in range(6)]
        for value in sent:
            catalog.put(value)
            assert await fast.__anext__() == Change(value)  # a reader keeping up is unaffected
        assert catalog.watcher_count == 1  # the slow one was dropped at once
        drained = [await slow.__anext__() for _ in range(3)]  # what it had is still delivered
        assert drained == [Change(value) for value in sent[:3]]
        with pytest.raises(ResourceExhausted) as caught:
            await slow.__anext__()
        assert caught.value.hop == "registry@node-1"
        assert "Find again" in caught.value.reason
        with pytest.raises(ResourceExhausted):
            await slow.__anext__()  # and stays closed
        catalog.put(nse("late", "vpn"))
        assert await fast.__anext__() == Change(nse("late", "vpn"))
    assert catalog.watcher_count == 0


async def test_a_full_buffer_is_not_yet_an_overflow() -> None:
    catalog = endpoint_catalog(watch_buffer=2)
    with catalog.watch(NetworkServiceEndpoint()) as (_, watcher):
        catalog.put(nse("a", "vpn"))
        catalog.put(nse("b", "vpn"))
        assert catalog.watcher_count == 1
        assert len(pending(watcher.receive)) == 2
        catalog.put(nse("c", "vpn"))
        assert catalog.watcher_count == 1
        assert not watcher.overflowed


async def test_close_watchers_ends_every_stream_with_unavailable() -> None:
    catalog = endpoint_catalog(hop="registry@node-1")
    with (
        catalog.watch(by_services("vpn")) as (_, first),
        catalog.watch(NetworkServiceEndpoint()) as (_, second),
    ):
        queued = nse("nse-1", "vpn")
        catalog.put(queued)
        catalog.close_watchers("the etcd store was lost")
        assert catalog.watcher_count == 0
        for watcher in (first, second):
            assert await watcher.__anext__() == Change(queued)  # queued changes still arrive
            with pytest.raises(Unavailable) as caught:
                await watcher.__anext__()
            assert caught.value.reason == "the etcd store was lost"
            assert caught.value.hop == "registry@node-1"
        catalog.put(nse("nse-2", "vpn"))  # nobody is told any more
    assert catalog.watcher_count == 0


async def test_a_watch_stream_ends_only_with_an_error() -> None:
    catalog = endpoint_catalog()
    received: list[Change[NetworkServiceEndpoint]] = []

    async def read_all(watcher: Watcher[NetworkServiceEndpoint]) -> None:
        async for change in watcher:
            received.append(change)

    with catalog.watch(NetworkServiceEndpoint()) as (_, watcher):
        catalog.put(nse("a", "vpn"))
        catalog.close_watchers("stopping")
        with pytest.raises(Unavailable, match="stopping"):
            await read_all(watcher)
    assert received == [Change(nse("a", "vpn"))]


async def test_leaving_the_watch_block_unsubscribes() -> None:
    catalog = endpoint_catalog()
    assert catalog.watcher_count == 0
    with catalog.watch(NetworkServiceEndpoint()) as (_, watcher):
        assert catalog.watcher_count == 1
        with catalog.watch(NetworkServiceEndpoint()):
            assert catalog.watcher_count == 2
        assert catalog.watcher_count == 1
    assert catalog.watcher_count == 0
    catalog.put(nse("a", "vpn"))  # no one left to tell, and no error
    with pytest.raises(trio.ClosedResourceError):
        watcher.receive.receive_nowait()

    def crash_inside_a_watch() -> None:
        with catalog.watch(NetworkServiceEndpoint()):
            assert catalog.watcher_count == 1
            raise RuntimeError("reader crashed")

    with pytest.raises(RuntimeError, match="reader crashed"):
        crash_inside_a_watch()
    assert catalog.watcher_count == 0


# -- revisions ------------------------------------------------------------------------------------


def test_revision_counts_changes_and_follows_the_store() -> None:
    catalog = endpoint_catalog()
    assert catalog.revision == 0
    catalog.put(nse("a", "vpn"))
    catalog.put(nse("a", "dns"))
    catalog.delete("a")
    assert catalog.revision == 3
    catalog.put(nse("b", "vpn"), revision=10)  # etcd's revision
    assert catalog.revision == 10
    catalog.delete("b", revision=7)  # never goes back
    assert catalog.revision == 10
    catalog.set_revision(12)
    assert catalog.revision == 12
    catalog.set_revision(5)
    assert catalog.revision == 12
    assert len(catalog) == 0


async def test_wait_revision_returns_at_once_when_applied() -> None:
    catalog = endpoint_catalog()
    catalog.put(nse("a", "vpn"))
    catalog.set_revision(5)
    with trio.testing.assert_no_checkpoints():
        await catalog.wait_revision(0)
        await catalog.wait_revision(1)
        await catalog.wait_revision(5)


async def test_wait_revision_wakes_waiters_in_revision_order() -> None:
    catalog = endpoint_catalog()
    woken: list[int] = []

    async def wait(revision: int) -> None:
        await catalog.wait_revision(revision)
        woken.append(revision)

    async with trio.open_nursery() as nursery:
        for revision in (3, 1, 7, 2, 3, 5):
            nursery.start_soon(wait, revision)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []

        catalog.put(nse("a", "vpn"))  # revision 1
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [1]

        catalog.set_revision(3)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(woken[1:]) == [2, 3, 3]

        catalog.set_revision(4)
        await trio.testing.wait_all_tasks_blocked()
        assert len(woken) == 4

        catalog.delete("a", revision=9)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(woken[4:]) == [5, 7]
    assert sorted(woken) == [1, 2, 3, 3, 5, 7]
