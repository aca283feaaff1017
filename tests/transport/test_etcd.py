"""The etcd client against a real etcd 3.4 (the ``etcd_server`` fixture): KV, transactions,
leases, watches, compaction, etcd dying and coming back, bad endpoints, and leaks.

Real clock only (real sockets, a real etcd); every wait is bounded with ``trio.fail_after``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from tests.etcd_server import EtcdServer, free_ports
from trionsm.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from trionsm.transport import (
    EtcdClient,
    KeyValue,
    Lease,
    WatchEvent,
    WatchEventKind,
    open_etcd,
)
from trionsm.transport import _etcd_client as etcd_client_module
from trionsm.transport._etcd_client import MAX_TXN_OPS
from trionsm.transport._etcd_common import parse_endpoint, prefix_end

BOUND = 15.0  # seconds: generous, for a noisy 2-core CI machine


@asynccontextmanager
async def client_of(server: EtcdServer, **kwargs: Any) -> AsyncIterator[EtcdClient]:
    async with open_etcd(server.endpoint, **kwargs) as client:
        yield client


async def next_events(watch: AsyncIterator[WatchEvent], count: int) -> list[WatchEvent]:
    with trio.fail_after(BOUND):
        return [await watch.__anext__() for _ in range(count)]


# -- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"/nsm/", b"/nsm0"),
        (b"a", b"b"),
        (b"a\xff", b"b"),
        (b"a\xff\xff", b"b"),
        (b"\xff", b"\0"),
        (b"", b"\0"),
    ],
)
def test_prefix_end_is_etcds(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end


@pytest.mark.parametrize(
    ("endpoint", "host", "port", "hop"),
    [
        ("127.0.0.1:2379", "127.0.0.1", 2379, "etcd@127.0.0.1:2379"),
        ("etcd://127.0.0.1:2379", "127.0.0.1", 2379, "etcd@127.0.0.1:2379"),
        ("http://localhost:23790", "localhost", 23790, "etcd@localhost:23790"),
        ("HTTP://[::1]:2379", "::1", 2379, "etcd@[::1]:2379"),
    ],
)
def test_endpoint_forms(endpoint: str, host: str, port: int, hop: str) -> None:
    assert parse_endpoint(endpoint) == (host, port, hop)


@pytest.mark.parametrize(
    "endpoint",
    [
        "",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:99999",
        ":2379",
        "https://127.0.0.1:2379",
        "tcp://127.0.0.1:2379",
        "unix:///run/etcd.sock",
        "etcd://127.0.0.1:2379/path",
        "etcd://a b:2379",
    ],
)
async def test_bad_endpoint_is_invalid_argument(endpoint: str) -> None:
    with pytest.raises(InvalidArgument, match="etcd endpoint"):
        async with open_etcd(endpoint):
            pass


@pytest.mark.parametrize("seconds", [0, -1.0, float("inf"), float("nan")])
async def test_bad_timeout_is_invalid_argument(seconds: float) -> None:
    with pytest.raises(InvalidArgument, match="timeout"):
        async with open_etcd("127.0.0.1:2379", timeout=seconds):
            pass


def test_value_types_are_frozen_attrs() -> None:
    event = WatchEvent(kind=WatchEvent.PUT, key=b"k", value=b"v", mod_revision=3)
    assert event.kind is WatchEventKind.PUT
    assert WatchEvent.DELETE is WatchEventKind.DELETE
    with pytest.raises(AttributeError):
        event.key = b"other"  # type: ignore[misc]
    assert Lease(id=1, ttl=2) == Lease(id=1, ttl=2)
    kv = KeyValue(key=b"k", value=b"v", create_revision=1, mod_revision=1, version=1)
    assert kv.lease == 0


# -- etcd unreachable -------------------------------------------------------------------------


async def test_nothing_listening_is_unavailable_not_a_hang() -> None:
    (port,) = free_ports(1)
    endpoint = f"127.0.0.1:{port}"
    with trio.fail_after(BOUND):
        async with open_etcd(endpoint, timeout=2.0) as client:  # opening never connects
            with pytest.raises(Unavailable) as info:
                await client.put(b"k", b"v")
            assert info.value.hop == f"etcd@{endpoint}"
            assert "cannot reach etcd" in info.value.reason
            assert isinstance(info.value.__cause__, OSError)
            with pytest.raises(Unavailable):
                async with client.watch_prefix(b"/"):
                    pass


# -- key-value ----------------------------------------------------------------------------------


async def test_put_get_and_revisions(etcd_server: EtcdServer) -> None:
    async with client_of(etcd_server) as client:
        assert await client.get(b"/k") is None
        first = await client.put(b"/k", b"one")
        second = await client.put(b"/k", b"two")
        assert second == first + 1
        kv = await client.get(b"/k")
        assert kv == KeyValue(
            key=b"/k", value=b"two", create_revision=first, mod_revision=second, version=2
        )
        assert await client.put(b"/empty", b"") == second + 1
        empty = await client.get(b"/empty")
        assert empty is not None
        assert empty.value == b""
        assert client.hop == f"etcd@{etcd_server.endpoint}"


async def test_bad_arguments_are_invalid_argument(etcd_server: EtcdServer) -> None:
    async with client_of(etcd_server) as client:
        with pytest.raises(InvalidArgument):
            await client.put(b"", b"v")
        with pytest.raises(InvalidArgument):
            await client.put("text", b"v")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            await client.put(b"k", "text")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            await client.get(b"")
        with pytest.raises(InvalidArgument):
            await client.grant_lease(0)
        with pytest.raises(InvalidArgument):
            client.watch_prefix(b"/", start_revision=-1)
        with pytest.raises(NotFound):  # etcd's own check: a lease that does not exist
            await client.put(b"k", b"v", lease=12345)


async def test_get_prefix_returns_a_sorted_snapshot_and_its_revision(
    etcd_server: EtcdServer,
) -> None:
    async with client_of(etcd_server) as client:
        for key in (b"/a/2", b"/a/1", b"/a/3", b"/ab", b"/b/1"):
            last = await client.put(key, key.upper())
        kvs, revision = await client.get_prefix(b"/a/")
        assert [kv.key for kv in kvs] == [b"/a/1", b"/a/2", b"/a/3"]
        assert [kv.value for kv in kvs] == [b"/A/1", b"/A/2", b"/A/3"]
        assert revision == last
        everything, _ = await client.get_prefix(b"")
        assert len(everything) == 5
        assert await client.get_prefix(b"/none/") == ([], last)


async def test_get_prefix_pages_read_one_revision(
    etcd_server: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(etcd_client_module, "PAGE_SIZE", 2)
    async with client_of(etcd_server) as client:
        for i in range(7):
            revision = await client.put(b"/p/%d" % i, b"%d" % i)
        kvs, read_at = await client.get_prefix(b"/p/")
        assert [kv.value for kv in kvs] == [b"%d" % i for i in range(7)]
        assert read_at == revision


async def test_delete_and_delete_prefix(etcd_server: EtcdServer) -> None:
    async with client_of(etcd_server) as client:
        for key in (b"/d/1", b"/d/2", b"/d/3", b"/dx", b"/e"):
            await client.put(key, b"v")
        assert await client.delete(b"/d/1") is True
        assert await client.delete(b"/d/1") is False
        assert await client.get(b"/d/1") is None
        assert await client.delete_prefix(b"/d/") == 2
        assert await client.delete_prefix(b"/d/") == 0
        assert [kv.key for kv in (await client.get_prefix(b""))[0]] == [b"/dx", b"/e"]
        assert await client.delete_prefix(b"") == 2


async def test_create_only_if_absent(etcd_server: EtcdServer) -> None:
    async with client_of(etcd_server) as client:
        assert await client.create(b"/c", b"first") is True
        assert await client.create(b"/c", b"second") is False
        kv = await client.get(b"/c")
        assert kv is not None
        assert kv.value == b"first"
        assert kv.version == 1
        await client.delete(b"/c")
        assert await client.create(b"/c", b"again") is True


async def test_concurrent_calls_share_one_client(etcd_server: EtcdServer) -> None:
    async with client_of(etcd_server) as client:
        revisions: list[int] = []

        async def writer(i: int) -> None:
            revisions.append(await client.put(b"/n/%03d" % i, b"v"))

        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(writer, i)
        assert len(set(revisions)) == 50
        kvs, _ = await client.get_prefix(b"/n/")
        assert len(kvs) == 50


async def test_a_burst_of_calls_waits_its_turn_instead_of_timing_out(
    etcd_server: EtcdServer,
) -> None:
    """Thousands of concurrent calls (a registry expiring a burst of entries) all succeed.

    They once all went out at once: each then waited behind all the others, longer than the
    timeout, and the island was too busy to answer etcd's PINGs (10,000 puts: 9,210 failed
    with Unavailable). Now at most MAX_IN_FLIGHT are in flight, so each answers in time.
    """
    count = 4000
    async with (
        client_of(etcd_server, timeout=2.0) as client,
        client.watch_prefix(b"/burst/") as watch,
    ):
        failures: list[Exception] = []

        async def writer(i: int) -> None:
            try:
                await client.put(b"/burst/%05d" % i, b"v" * 200)
            except Unavailable as exc:
                failures.append(exc)

        with trio.fail_after(BOUND * 4):
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(writer, i)
        assert failures == []
        events = await next_events(watch, count)
        assert len({event.key for event in events}) == count


async def test_delete_many_if_deletes_each_unchanged_key_in_one_call(
    etcd_server: EtcdServer,
) -> None:
    async with client_of(etcd_server) as client:
        keys = [b"/many/%02d" % i for i in range(MAX_TXN_OPS)]
        revisions = [await client.put(key, b"v") for key in keys]
        await client.put(keys[1], b"changed")
        await client.delete(keys[2])
        deleted = await client.delete_many_if(list(zip(keys, revisions, strict=True)))
        assert deleted == [True, False, False] + [True] * (MAX_TXN_OPS - 3)
        kvs, _ = await client.get_prefix(b"/many/")
        assert [kv.key for kv in kvs] == [keys[1]]
        assert await client.delete_many_if([]) == []
        with pytest.raises(InvalidArgument):
            await client.delete_many_if([(keys[0], 1)] * 2)
        with pytest.raises(InvalidArgument):
            await client.delete_many_if([(b"/x/%d" % i, 1) for i in range(MAX_TXN_OPS + 1)])


# -- leases -------------------------------------------------------------------------------------


async def test_lease_expiry_deletes_its_keys(etcd_server: EtcdServer) -> None:
    async with client_of(etcd_server) as client:
        lease = await client.grant_lease(1)
        assert lease.ttl >= 1  # etcd 3.4 grants at least ~2 s
        async with client.watch_prefix(b"/l/") as watch:
            put_at = await client.put(b"/l/k", b"v", lease=lease.id)
            kv = await client.get(b"/l/k")
            assert kv is not None
            assert kv.lease == lease.id
            put, gone = await next_events(watch, 2)  # waits for the expiry, at most BOUND s
        assert (put.kind, put.mod_revision) == (WatchEvent.PUT, put_at)
        assert (gone.kind, gone.key) == (WatchEvent.DELETE, b"/l/k")
        assert gone.mod_revision > put_at
        assert await client.get(b"/l/k") is None
        with pytest.raises(NotFound):
            await client.keepalive_once(lease.id)


async def test_keepalive_then_revoke_deletes_keys(etcd_server: EtcdServer) -> None:
    async with client_of(etcd_server) as client:
        lease = await client.grant_lease(30)
        assert lease.ttl == 30
        await client.put(b"/r/1", b"v", lease=lease.id)
        await client.put(b"/r/2", b"v", lease=lease.id)
        assert await client.create(b"/r/3", b"v", lease=lease.id) is True
        assert 0 < await client.keepalive_once(lease.id) <= 30
        await client.revoke_lease(lease.id)
        kvs, _ = await client.get_prefix(b"/r/")
        assert kvs == []
        with pytest.raises(NotFound, match="expired or was revoked"):
            await client.keepalive_once(lease.id)
        with pytest.raises(NotFound, match="lease not found"):
            await client.revoke_lease(lease.id)


# -- watches ------------------------------------------------------------------------------------


async def test_watch_sees_another_clients_changes_in_order(etcd_server: EtcdServer) -> None:
    async with client_of(etcd_server) as watcher, client_of(etcd_server) as writer:
        async with watcher.watch_prefix(b"/w/") as watch:
            assert watch.revision >= 1
            r1 = await writer.put(b"/w/a", b"1")
            await writer.put(b"/other", b"x")  # outside the prefix
            r2 = await writer.put(b"/w/b", b"2")
            r3 = await writer.put(b"/w/a", b"3")
            assert await writer.delete_prefix(b"/w/") == 2
            events = await next_events(watch, 5)
        assert events[:3] == [
            WatchEvent(WatchEvent.PUT, b"/w/a", b"1", r1),
            WatchEvent(WatchEvent.PUT, b"/w/b", b"2", r2),
            WatchEvent(WatchEvent.PUT, b"/w/a", b"3", r3),
        ]
        # One DeleteRange is one revision: both deletions share it.
        assert [(e.kind, e.key, e.value) for e in events[3:]] == [
            (WatchEvent.DELETE, b"/w/a", b""),
            (WatchEvent.DELETE, b"/w/b", b""),
        ]
        assert events[3].mod_revision == events[4].mod_revision == r3 + 1


async def test_watch_from_a_start_revision_replays_history(etcd_server: EtcdServer) -> None:
    async with client_of(etcd_server) as client:
        start = await client.put(b"/h/1", b"a")
        await client.put(b"/h/2", b"b")
        await client.delete(b"/h/1")
        kvs, now = await client.get_prefix(b"/h/")
        async with client.watch_prefix(b"/h/", start_revision=start) as watch:
            assert watch.revision == now
            replayed = await next_events(watch, 3)
            live = await client.put(b"/h/3", b"c")
            (new,) = await next_events(watch, 1)
        assert [(e.kind, e.key, e.mod_revision) for e in replayed] == [
            (WatchEvent.PUT, b"/h/1", start),
            (WatchEvent.PUT, b"/h/2", start + 1),
            (WatchEvent.DELETE, b"/h/1", start + 2),
        ]
        assert (new.key, new.mod_revision) == (b"/h/3", live)
        assert [kv.key for kv in kvs] == [b"/h/2"]


async def test_watch_whole_keyspace(etcd_server: EtcdServer) -> None:
    async with client_of(etcd_server) as client, client.watch_prefix(b"") as watch:
        await client.put(b"\x00first", b"1")
        await client.put(b"\xff\xfflast", b"2")
        events = await next_events(watch, 2)
    assert [e.key for e in events] == [b"\x00first", b"\xff\xfflast"]


async def test_compacted_start_revision_is_failed_precondition(etcd_server: EtcdServer) -> None:
    async with client_of(etcd_server) as client:
        old = await client.put(b"/c/k", b"1")
        await client.put(b"/c/k", b"2")
        kept = await client.put(b"/c/k", b"3")
        await client.compact(kept)
        async with client.watch_prefix(b"/c/", start_revision=old) as watch:
            with pytest.raises(FailedPrecondition) as info, trio.fail_after(BOUND):
                await watch.__anext__()
            with pytest.raises(FailedPrecondition):  # the watch stays failed
                await watch.__anext__()
        assert f"revision {old} has been compacted" in info.value.reason
        assert f"oldest revision left is {kept}" in info.value.reason
        assert info.value.hop == f"etcd@{etcd_server.endpoint}"
        async with client.watch_prefix(b"/c/", start_revision=kept) as watch:
            (event,) = await next_events(watch, 1)
        assert (event.value, event.mod_revision) == (b"3", kept)
        with pytest.raises(InvalidArgument, match="compacted"):  # etcd's OUT_OF_RANGE
            await client.compact(old)


async def test_leaving_a_watch_cancels_it_and_resets_the_stream(etcd_server: EtcdServer) -> None:
    async with client_of(etcd_server) as client:
        for _ in range(3):
            with trio.fail_after(BOUND):
                async with client.watch_prefix(b"/x/") as watch:
                    with trio.move_on_after(0.05) as waited:  # iteration is cancellable
                        await watch.__anext__()
                    assert waited.cancelled_caught
        # Every Watch stream was reset by us: nothing stays open on the connection (etcd
        # would keep a half-closed Watch stream open forever).
        protocol = client._grpc._protocol
        assert protocol is not None
        assert protocol.connection._connection.open_outbound_streams == 0
        with pytest.raises(Unavailable, match="closed"):
            await watch.__anext__()
        await client.put(b"/x/after", b"v")  # the client is still fine


async def test_cancelling_many_watches_then_closing_at_once(etcd_server: EtcdServer) -> None:
    # stack-notes §1: cancelling several tasks that iterate asyncio streams, then closing the
    # channel with no checkpoint in between, crashed trio-asyncio's aio_as_trio(generator).
    for _ in range(3):
        with trio.fail_after(BOUND):
            async with client_of(etcd_server) as client:
                ready = 0

                async def consume(ready_now: trio.Event) -> None:
                    nonlocal ready
                    async with client.watch_prefix(b"/q/") as watch:
                        ready += 1
                        if ready == 5:
                            ready_now.set()
                        async for _ in watch:
                            pass

                async with trio.open_nursery() as nursery:
                    all_ready = trio.Event()
                    for _ in range(5):
                        nursery.start_soon(consume, all_ready)
                    await all_ready.wait()
                    await client.put(b"/q/k", b"v")
                    nursery.cancel_scope.cancel()
            # the client closed right after the cancelled watches: no TrioInternalError


# -- etcd dying and coming back ------------------------------------------------------------------


async def test_killed_etcd_is_unavailable_for_calls_and_watches(etcd_server: EtcdServer) -> None:
    async with client_of(etcd_server) as client:
        await client.put(b"/k", b"v")
        async with client.watch_prefix(b"/") as watch:
            await etcd_server.kill()
            with pytest.raises(Unavailable) as broken, trio.fail_after(BOUND):
                await watch.__anext__()
        assert broken.value.hop == f"etcd@{etcd_server.endpoint}"
        assert "broke" in broken.value.reason
        assert broken.value.__cause__ is not None
        with pytest.raises(Unavailable) as call, trio.fail_after(BOUND):
            await client.get(b"/k")
        assert call.value.hop == f"etcd@{etcd_server.endpoint}"
        with pytest.raises(Unavailable), trio.fail_after(BOUND):
            async with client.watch_prefix(b"/"):
                pass


@pytest.mark.slow
async def test_frozen_etcd_breaks_a_quiet_watch_and_times_calls_out(
    etcd_server: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A frozen (SIGSTOP) etcd keeps its sockets open: only keepalive PINGs notice. 6 s keeps
    # clear of etcd's --grpc-keepalive-min-time (5 s); the client's default is 10 s.
    monkeypatch.setattr(etcd_client_module, "KEEPALIVE_INTERVAL", 6.0)
    monkeypatch.setattr(etcd_client_module, "KEEPALIVE_TIMEOUT", 1.0)
    pid = etcd_server.pid
    assert pid is not None
    async with client_of(etcd_server, timeout=2.0) as client:
        async with client.watch_prefix(b"/") as watch:
            os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises(Unavailable) as broken, trio.fail_after(BOUND):
                    await watch.__anext__()
                # Unavailable, not a hang: "did not answer within 2 s" from a new connection,
                # or "broke" when the call raced the PING-killed connection's teardown.
                with pytest.raises(Unavailable, match=r"did not answer within 2 s|broke"):
                    with trio.fail_after(BOUND):
                        await client.get(b"/k")
            finally:
                os.kill(pid, signal.SIGCONT)
        assert "broke" in broken.value.reason
        assert await client.get(b"/k") is None  # reconnects to the thawed etcd


async def test_the_same_client_works_again_after_a_restart(etcd_server: EtcdServer) -> None:
    async with client_of(etcd_server) as client:
        written = await client.put(b"/persist", b"v")
        async with client.watch_prefix(b"/") as watch:
            await etcd_server.restart()  # SIGTERM, then the same ports and data directory
            with pytest.raises(Unavailable), trio.fail_after(BOUND):
                await watch.__anext__()
        kv = await client.get(b"/persist")
        assert kv is not None
        assert kv.mod_revision == written
        await etcd_server.kill()
        with pytest.raises(Unavailable):
            await client.get(b"/persist")
        await etcd_server.restart()
        assert await client.put(b"/persist", b"w") == written + 1
        async with client.watch_prefix(b"/", start_revision=written) as watch:
            events = await next_events(watch, 2)
        assert [e.value for e in events] == [b"v", b"w"]


# -- endpoints and resources ---------------------------------------------------------------------


@pytest.mark.parametrize("form", ["{}", "etcd://{}", "http://{}"])
async def test_every_endpoint_form_reaches_etcd(etcd_server: EtcdServer, form: str) -> None:
    async with open_etcd(form.format(etcd_server.endpoint)) as client:
        assert await client.put(b"/f", b"v") > 0


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _task_count() -> int:
    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    return count(trio.lowlevel.current_root_task())


async def test_no_tasks_or_fds_leak(etcd_server: EtcdServer) -> None:
    fds, tasks = _open_fds(), _task_count()
    for _ in range(3):
        async with client_of(etcd_server) as client:
            await client.put(b"/leak", b"v")
            async with client.watch_prefix(b"/"):
                await client.put(b"/leak", b"w")
            lease = await client.grant_lease(10)
            await client.keepalive_once(lease.id)
        with pytest.raises(Unavailable, match="closed"):
            await client.get(b"/leak")
    assert _task_count() == tasks
    assert _open_fds() == fds


async def test_progress_follows_every_committed_change(etcd_server: EtcdServer) -> None:
    with trio.fail_after(30):
        async with (
            client_of(etcd_server) as watcher,
            client_of(etcd_server) as writer,
            watcher.watch_prefix(b"/p/") as watch,
        ):
            revisions = [await writer.put(b"/p/%d" % i, b"v") for i in range(5)]
            await writer.put(b"/elsewhere", b"x")  # moves etcd's revision, not this prefix
            await watch.request_progress()
            seen: list[WatchEvent] = []
            async for event in watch:
                seen.append(event)
                if event.kind is WatchEvent.PROGRESS:
                    break
        assert [e.mod_revision for e in seen[:-1]] == revisions
        assert all(e.kind is WatchEvent.PUT for e in seen[:-1])
        assert seen[-1].mod_revision == revisions[-1] + 1
        assert (seen[-1].key, seen[-1].value) == (b"", b"")


async def test_watch_events_carry_the_lease(etcd_server: EtcdServer) -> None:
    with trio.fail_after(30):
        async with client_of(etcd_server) as client, client.watch_prefix(b"/l/") as watch:
            lease = await client.grant_lease(30)
            await client.put(b"/l/a", b"1", lease=lease.id)
            await client.put(b"/l/b", b"2")
            first, second = await next_events(watch, 2)
        assert (first.lease, second.lease) == (lease.id, 0)


async def test_delete_if_removes_only_the_revision_written(etcd_server: EtcdServer) -> None:
    with trio.fail_after(30):
        async with client_of(etcd_server) as client:
            old = await client.put(b"/d/a", b"1")
            new = await client.put(b"/d/a", b"2")
            assert not await client.delete_if(b"/d/a", mod_revision=old)
            assert (await client.get(b"/d/a")) is not None
            assert await client.delete_if(b"/d/a", mod_revision=new)
            assert (await client.get(b"/d/a")) is None
            assert not await client.delete_if(b"/d/a", mod_revision=new)


# -- load ---------------------------------------------------------------------------------------

WORKER_IDLE = 10.0
"""Seconds Trio keeps an idle worker thread (``trio._core._thread_cache.IDLE_TIMEOUT``)."""


async def test_many_callers_keep_one_client_busy_past_trios_idle_worker_threads(
    etcd_server: EtcdServer,
) -> None:
    """64 callers share one client (lease, put on it, progress request: a Register's calls) for
    longer than Trio keeps an idle worker thread; the watch sees every put, etcd stays up.

    The etcd fixture used to fork etcd in a Trio worker thread with a parent-death signal, which
    the kernel sent when that thread ended 10 s later: etcd was SIGKILLed mid-load and this test
    failed with "the connection to etcd broke: Connection lost".
    """
    until = trio.current_time() + WORKER_IDLE + 2.0
    written: list[int] = []
    seen: list[WatchEvent] = []
    progressed = trio.Event()

    async def caller(index: int) -> None:
        round_ = 0
        while round_ < 5 or trio.current_time() < until:
            lease = await client.grant_lease(60)
            key = b"/load/%02d/%d" % (index, round_ % 8)
            written.append(await client.put(key, b"v" * 200, lease=lease.id))
            await watch.request_progress()
            round_ += 1

    async def consume() -> None:
        nonlocal progressed
        async for event in watch:
            if event.kind is WatchEvent.PROGRESS:
                progressed.set()
                progressed = trio.Event()
            else:
                seen.append(event)

    with trio.fail_after(WORKER_IDLE + 60.0):
        async with (
            client_of(etcd_server) as client,
            client.watch_prefix(b"/load/") as watch,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(consume)
            async with trio.open_nursery() as callers:
                for index in range(64):
                    callers.start_soon(caller, index)
            last = max(written)
            while not seen or seen[-1].mod_revision < last:
                waiting = progressed
                await watch.request_progress()
                await waiting.wait()
            nursery.cancel_scope.cancel()
    assert etcd_server.pid is not None, f"etcd died:\n{etcd_server.log_tail()}"
    assert sorted(e.mod_revision for e in seen) == sorted(written)
    assert all(e.kind is WatchEvent.PUT and e.lease for e in seen)
