"""etcd watches: one bidi ``Watch`` stream per watch, read by one asyncio task, seen from Trio.

Theory of operation. :func:`open_watch` starts the pump, an asyncio task of the client's island
(``_aio.Island.spawn``). The pump opens ``/etcdserverpb.Watch/Watch``, sends one create request
and reads every reply, handing Trio one item per reply through a memory channel: first the
confirmation that etcd created the watch, then one list of :class:`WatchEvent` per reply (the
changes of one or more revisions), and last the error that ended it. :class:`EtcdWatch` flattens
the lists, so Trio iterates single events in revision order.

Ending a watch: leaving :func:`open_watch` cancels the pump and waits for it. grpclib then resets
the HTTP/2 stream (RST_STREAM), which makes etcd drop the watcher. The pump never half-closes
and waits for etcd's trailers: etcd keeps a Watch stream open after the client's half-close, so
such a wait would never end. When the pump itself stops the watch (etcd cancelled it), it resets
the stream the same way. Nothing ever wraps the asyncio stream in ``aio_as_trio``.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from grpclib.client import Channel
from grpclib.const import Cardinality

from trionsm.errors import FailedPrecondition, TrionsmError, Unavailable

from ._aio import Island
from ._etcd import etcdserverpb as pb
from ._etcd import mvccpb
from ._etcd_common import WatchEvent, WatchEventKind, etcd_error

__all__ = ["EtcdWatch", "open_watch"]

WATCH_PATH = "/etcdserverpb.Watch/Watch"
_BUFFER = 64  # replies (event lists) the pump reads ahead of the consumer
_CLOSE_GRACE = 5.0  # seconds for the pump to wind down when the watch is left

_KINDS = {
    mvccpb.EventEventType.PUT: WatchEventKind.PUT,
    mvccpb.EventEventType.DELETE: WatchEventKind.DELETE,
}


@attrs.frozen
class _Created:
    revision: int


@attrs.frozen
class _End:
    error: TrionsmError


class EtcdWatch:
    """An async iterator of :class:`WatchEvent`, one event at a time, in revision order.

    Iterating waits for the next change (cancellable). It never ends by itself: it raises
    Unavailable when the stream breaks (etcd died, the connection dropped), FailedPrecondition
    when the start revision was compacted, and Unavailable after the watch was left.

    Attributes:
        revision: etcd's revision when it created the watch. Every change after it is seen (and,
            with a start revision, every change from that revision on).
    """

    def __init__(
        self,
        received: trio.MemoryReceiveChannel[Any],
        hop: str,
        what: str,
        pump: _Pump | None = None,
        island: Island | None = None,
    ) -> None:
        self._received = received
        self._pump = pump
        self._island = island
        self._hop = hop
        self._what = what
        self._pending: collections.deque[WatchEvent] = collections.deque()
        self._error: TrionsmError | None = None
        self.revision = 0

    async def _wait_created(self, bound: float) -> None:
        with trio.move_on_after(bound):
            item = await self._receive()
            if isinstance(item, _Created):
                self.revision = item.revision
                return
            raise Unavailable(f"{self._what}: etcd sent events before it created the watch")
        raise Unavailable(f"{self._what}: etcd did not create the watch within {bound:g} s")

    async def request_progress(self) -> None:
        """Ask etcd for a PROGRESS event carrying its current revision.

        Blocks only to send the request. Not a fence on every etcd: before 3.4.24 / 3.5.8, etcd
        sends the answer at once, and it may overtake watch events etcd has already queued for
        this watch (etcd-io/etcd#15220; measured on 3.4.23 with 32 callers writing: about 1 in
        100 events arrived after a PROGRESS whose revision covered it). Later versions answer
        once the watch has caught up, in order with the events. To know a watch has seen every
        change committed before some moment, write a key it watches and wait for that event.

        Raises:
            Unavailable: the watch has ended, or the request could not be sent.
        """
        if self._error is not None:
            raise self._error
        if self._pump is None or self._island is None:
            raise Unavailable(f"{self._what}: this watch cannot request progress", hop=self._hop)
        await self._island.run(self._pump.request_progress)

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    async def __anext__(self) -> WatchEvent:
        while not self._pending:
            item = await self._receive()
            if isinstance(item, list):
                self._pending.extend(item)
        return self._pending.popleft()

    async def _receive(self) -> Any:
        if self._error is not None:
            raise self._error
        try:
            item = await self._received.receive()
        except trio.EndOfChannel:
            item = _End(Unavailable(f"{self._what}: the watch stream ended", hop=self._hop))
        except trio.ClosedResourceError:
            item = _End(Unavailable(f"{self._what}: the watch was closed", hop=self._hop))
        if isinstance(item, _End):
            self._error = item.error
            raise item.error
        return item


@asynccontextmanager
async def open_watch(
    island: Island,
    grpc: Channel,
    create: pb.WatchCreateRequest,
    *,
    hop: str,
    what: str,
    bound: float,
) -> AsyncIterator[EtcdWatch]:
    """Create a watch and yield its :class:`EtcdWatch`; leaving the block cancels it on etcd.

    Entering waits (at most ``bound`` seconds) until etcd confirms the watch, so every change
    made after the block is entered is seen. ``bound`` also names the client's timeout in
    errors.

    Raises:
        Unavailable: etcd is unreachable or did not confirm the watch in time.
    """
    replies, received = trio.open_memory_channel[Any](_BUFFER)
    runner = _Pump(island, grpc, create, replies, hop, what, bound)
    pump = island.spawn(runner.run)
    watch = EtcdWatch(received, hop, what, runner, island)
    try:
        await watch._wait_created(bound)
        yield watch
    finally:
        pump.cancel()
        with trio.move_on_after(_CLOSE_GRACE, shield=True):
            await pump.wait()
        received.close()


class _Pump:
    """The asyncio side of one watch: runs the stream, hands its replies to Trio."""

    def __init__(
        self,
        island: Island,
        grpc: Channel,
        create: pb.WatchCreateRequest,
        replies: trio.MemorySendChannel[Any],
        hop: str,
        what: str,
        timeout: float,
    ) -> None:
        self._island = island
        self._grpc = grpc
        self._create = create
        self._replies = replies
        self._hop = hop
        self._what = what
        self._timeout = timeout
        self._stream_handle: Any = None

    async def request_progress(self) -> None:
        """asyncio: send a progress request on the open stream."""
        stream = self._stream_handle
        if stream is None:
            raise Unavailable(f"{self._what}: the watch stream is not open", hop=self._hop)
        request = pb.WatchRequest(progress_request=pb.WatchProgressRequest())
        try:
            await stream.send_message(request)
        except Exception as exc:
            raise etcd_error(exc, self._what, self._hop, self._timeout) from exc

    async def run(self) -> None:
        """asyncio: run the watch until it ends or is cancelled."""
        try:
            try:
                end = await self._stream()
            except Exception as exc:
                error = etcd_error(exc, self._what, self._hop, self._timeout)
                if error is not exc:
                    error.__cause__ = exc  # raised later, in Trio: keep the grpclib cause
                end = _End(error)
            await self._deliver(end)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the consumer left
        finally:
            self._replies.close()

    async def _stream(self) -> _End:
        request = pb.WatchRequest(create_request=self._create)
        async with self._grpc.request(
            WATCH_PATH, Cardinality.STREAM_STREAM, pb.WatchRequest, pb.WatchResponse
        ) as stream:
            await stream.send_message(request)
            self._stream_handle = stream
            while (reply := await stream.recv_message()) is not None:
                item = self._item(reply)
                if item is not None:
                    await self._deliver(item)
                if isinstance(item, _End):
                    await stream.cancel()  # etcd would keep the stream open: reset it
                    return item
        return _End(Unavailable(f"{self._what}: etcd ended the watch stream", hop=self._hop))

    def _item(self, reply: pb.WatchResponse) -> Any:
        """What Trio gets for one reply: _Created, a list of events, _End, or None (nothing)."""
        start = self._create.start_revision
        if reply.compact_revision:
            return _End(
                FailedPrecondition(
                    f"{self._what}: revision {start} has been compacted; the oldest revision "
                    f"left is {reply.compact_revision}",
                    hop=self._hop,
                )
            )
        if reply.canceled:
            reason = reply.cancel_reason or "no reason given"
            error = Unavailable(f"{self._what}: etcd cancelled the watch: {reason}", hop=self._hop)
            return _End(error)
        if reply.created:
            return _Created(reply.header.revision if reply.header is not None else 0)
        events = [
            WatchEvent(
                kind=_KINDS[event.type],
                key=event.kv.key,
                value=event.kv.value,
                mod_revision=event.kv.mod_revision,
                lease=event.kv.lease,
            )
            for event in reply.events
            if event.kv is not None
        ]
        if events:
            return events
        revision = reply.header.revision if reply.header is not None else 0
        return [WatchEvent(WatchEventKind.PROGRESS, b"", b"", revision)]

    async def _deliver(self, item: Any) -> None:
        try:
            self._replies.send_nowait(item)  # plain Trio call: same thread, no crossing
        except trio.WouldBlock:
            await self._island.trio(self._replies.send, item)
