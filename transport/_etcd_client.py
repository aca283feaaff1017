"""An etcd v3 client for Trio: grpclib and the generated etcd stubs, inside one asyncio island.

Theory of operation. :func:`open_etcd` opens one trio-asyncio island (``_aio``) and one grpclib
``Channel`` in it; everything the client does runs there. A call crosses into asyncio once
(``Island.run``), makes the whole gRPC call with the generated stub (``trionsm.transport._etcd``,
etcd v3.4's API), translates any failure there, and returns our own frozen value types
(:class:`KeyValue`, :class:`Lease`, :class:`WatchEvent`); a watch is read by one asyncio task
(``_etcd_watch``). Cancelling a Trio caller cancels its asyncio side and waits for it; grpclib
resets the HTTP/2 stream, so etcd drops the call.

Connection: the channel connects on the first call and, after etcd went away, reconnects on the
next one (grpclib does this), so one client outlives etcd restarts; calls made while etcd is
down fail at once with Unavailable. Every call is bounded by the client's ``timeout``, counted
from when it is sent. At most :data:`MAX_IN_FLIGHT` calls are in flight at a time; later callers
wait their turn in Trio: thousands of concurrent calls (a registry expiring 1,000 entries a
second) once all went out at once, every one then took longer than the timeout (10,000
concurrent puts: 9,210 failed with Unavailable, 790 succeeded in 18 s), and the saturated
island let PINGs go unanswered and broke the connection and its watches. While a
watch is open the channel PINGs etcd every :data:`KEEPALIVE_INTERVAL` seconds (etcd's default
policy allows one every 5 s), so a partitioned etcd breaks the watch instead of leaving it
silent forever.

Errors (all from :mod:`trionsm.errors`, raised ``from`` the grpclib exception, with the hop
``etcd@host:port``): etcd unreachable, gone, or silent for ``timeout`` seconds -> Unavailable;
a gRPC status from etcd -> its class (``error_for_status``), etcd's message as the reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, TypeVar

import trio
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality

from trionsm.errors import InvalidArgument, NotFound, Unavailable, Unknown

from ._aio import Island, open_island
from ._etcd import etcdserverpb as pb
from ._etcd_common import (
    KeyValue,
    Lease,
    check_key,
    check_timeout,
    etcd_error,
    key_value,
    parse_endpoint,
    prefix_end,
)
from ._etcd_watch import EtcdWatch, open_watch

__all__ = ["KEEPALIVE_INTERVAL", "MAX_IN_FLIGHT", "MAX_TXN_OPS", "EtcdClient", "open_etcd"]

R = TypeVar("R")

KEEPALIVE_INTERVAL: Final = 10.0
"""Seconds between HTTP/2 PINGs while a watch is open (etcd refuses PINGs closer than 5 s)."""

KEEPALIVE_TIMEOUT: Final = 5.0
"""Seconds a PING may go unanswered before the connection (and every watch on it) is broken."""

MAX_IN_FLIGHT: Final = 64
"""Calls (unary, keepalive, paged reads; not watches) one client has in flight at a time."""

MAX_TXN_OPS: Final = 64
"""Keys per :meth:`EtcdClient.delete_many_if`: etcd's ``--max-txn-ops`` (128 by default) also
bounds each nested transaction by what its parent left over, so 128 nested deletes are refused."""

PAGE_SIZE: Final = 1000
"""Keys per Range call of :meth:`EtcdClient.get_prefix` (every page reads the same revision)."""

_KEEPALIVE_PATH = "/etcdserverpb.Lease/LeaseKeepAlive"
_CLOSE_GRACE = 5.0  # seconds for the channel to close when the client is left


@asynccontextmanager
async def open_etcd(
    endpoint: str = "127.0.0.1:2379",
    *,
    timeout: float = 5.0,  # noqa: ASYNC109 (the bound of each call, not of opening)
) -> AsyncIterator[EtcdClient]:
    """An :class:`EtcdClient` for the etcd at ``endpoint``; closed when the block is left.

    Nothing connects until the first call, so entering never blocks on etcd. Leaving closes the
    connection (calls still in flight fail with Unavailable) and the client's asyncio island.

    Args:
        endpoint: ``host:port``, ``etcd://host:port`` or ``http://host:port`` (plain HTTP/2; no
            TLS, no authentication). IPv6 hosts go in brackets.
        timeout: seconds each call may take, including connecting; also how long opening a
            watch waits for etcd to confirm it.

    Raises:
        InvalidArgument: a malformed endpoint or a timeout that is not a positive number.
    """
    host, port, hop = parse_endpoint(endpoint)
    seconds = check_timeout(timeout)
    async with open_island() as island:
        grpc = await island.run(_new_channel, host, port)
        client = EtcdClient(island, grpc, hop, seconds)
        try:
            yield client
        finally:
            with trio.move_on_after(_CLOSE_GRACE, shield=True):
                await client._aclose()


async def _new_channel(host: str, port: int) -> Channel:
    config = Configuration(
        _keepalive_time=KEEPALIVE_INTERVAL,
        _keepalive_timeout=KEEPALIVE_TIMEOUT,
        _keepalive_permit_without_calls=False,
        _http2_max_pings_without_data=0,  # a quiet watch is still PINGed
        _http2_min_sent_ping_interval_without_data=KEEPALIVE_INTERVAL,
    )
    return Channel(host, port, config=config)


async def _close(grpc: Channel) -> None:
    grpc.close()


class EtcdClient:
    """A connection to one etcd server, shared by any number of Trio tasks.

    Every method is a Trio coroutine that blocks until etcd answers (at most the client's
    ``timeout``), can be cancelled at any point (etcd then drops the call, though a write it
    already applied stays applied), and raises :mod:`trionsm.errors` classes: Unavailable when
    etcd cannot be reached, InvalidArgument for bad arguments. Keys are non-empty ``bytes``.
    """

    def __init__(self, island: Island, grpc: Channel, hop: str, timeout: float) -> None:
        self._island = island
        self._grpc = grpc
        self._kv = pb.KvStub(grpc)
        self._lease = pb.LeaseStub(grpc)
        self._hop = hop
        self._timeout = timeout
        self._closed = False
        self._in_flight = trio.Semaphore(MAX_IN_FLIGHT)

    @property
    def hop(self) -> str:
        """``etcd@host:port``: the hop named in this client's errors."""
        return self._hop

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Set ``key`` to ``value`` (one Put).

        Args:
            key: the key (non-empty).
            value: the value (may be empty).
            lease: attach the key to this lease (0: none); NotFound if etcd has no such lease.

        Returns:
            The revision of the change.
        """
        check_key(key)
        request = pb.PutRequest(key=key, value=_bytes(value, "value"), lease=_lease_id(lease))
        reply = await self._call(f"put {key!r}", self._kv.put, request)
        return self._revision(reply.header)

    async def get(self, key: bytes) -> KeyValue | None:
        """Read one key (a linearizable Range).

        Returns:
            The key's current :class:`KeyValue`, or None if it does not exist.
        """
        reply = await self._call(
            f"get {key!r}", self._kv.range, pb.RangeRequest(key=check_key(key))
        )
        return key_value(reply.kvs[0]) if reply.kvs else None

    async def get_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        """Read every key starting with ``prefix`` (``b""``: the whole key space).

        Large ranges are read in pages of :data:`PAGE_SIZE` keys, all at the revision of the
        first page, so the result is one consistent snapshot (each page is bounded by the
        client's timeout; the whole read crosses into asyncio once).

        Returns:
            The keys sorted by key, and the revision they were read at: watching from
            ``revision + 1`` then misses no change.
        """
        what = f"get_prefix {_bytes(prefix, 'prefix')!r}"
        return await self._run(what, self._range_all, prefix)

    async def _range_all(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        """asyncio: read every page of the prefix at one revision."""
        key, end, revision = prefix or b"\0", prefix_end(prefix), 0
        kvs: list[KeyValue] = []
        while True:
            request = pb.RangeRequest(key=key, range_end=end, limit=PAGE_SIZE, revision=revision)
            reply = await self._kv.range(request, timeout=self._timeout)
            revision = revision or self._revision(reply.header)
            kvs.extend(key_value(kv) for kv in reply.kvs)
            if not reply.more or not reply.kvs:
                return kvs, revision
            key = reply.kvs[-1].key + b"\0"

    async def delete(self, key: bytes) -> bool:
        """Delete one key.

        Returns:
            True if the key existed.
        """
        request = pb.DeleteRangeRequest(key=check_key(key))
        reply = await self._call(f"delete {key!r}", self._kv.delete_range, request)
        return reply.deleted > 0

    async def delete_if(self, key: bytes, *, mod_revision: int) -> bool:
        """Delete ``key`` only if it was last changed at ``mod_revision`` (one transaction).

        How a writer removes exactly what it wrote and nothing written after it.

        Returns:
            True if this call deleted the key, False if it was gone or changed since.
        """
        check_key(key)
        unchanged = pb.Compare(
            result=pb.CompareCompareResult.EQUAL,
            target=pb.CompareCompareTarget.MOD,
            key=key,
            mod_revision=mod_revision,
        )
        delete = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))
        request = pb.TxnRequest(compare=[unchanged], success=[delete])
        reply = await self._call(f"delete_if {key!r}", self._kv.txn, request)
        return reply.succeeded

    async def delete_many_if(self, keys: list[tuple[bytes, int]]) -> list[bool]:
        """Delete each ``(key, mod_revision)`` as :meth:`delete_if` would, in one transaction.

        One Txn of nested transactions, one per key (etcd >= 3.3), so thousands of expiries a
        second cost a few calls. At most :data:`MAX_TXN_OPS` keys, each at most once.

        Returns:
            For each key, in order, whether this call deleted it.
        """
        if len(keys) > MAX_TXN_OPS:
            raise InvalidArgument(f"at most {MAX_TXN_OPS} keys per delete_many_if, not {len(keys)}")
        if len({key for key, _ in keys}) != len(keys):
            raise InvalidArgument("delete_many_if: a key appears twice")
        ops = []
        for key, mod_revision in keys:
            check_key(key)
            unchanged = pb.Compare(
                result=pb.CompareCompareResult.EQUAL,
                target=pb.CompareCompareTarget.MOD,
                key=key,
                mod_revision=mod_revision,
            )
            delete = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))
            nested = pb.TxnRequest(compare=[unchanged], success=[delete])
            ops.append(pb.RequestOp(request_txn=nested))
        if not ops:
            return []
        reply = await self._call(
            f"delete_many_if {len(ops)} keys", self._kv.txn, pb.TxnRequest(success=ops)
        )
        return [op.response_txn is not None and op.response_txn.succeeded for op in reply.responses]

    async def delete_prefix(self, prefix: bytes) -> int:
        """Delete every key starting with ``prefix`` (``b""``: every key), in one revision.

        Returns:
            How many keys were deleted.
        """
        start = _bytes(prefix, "prefix") or b"\0"
        request = pb.DeleteRangeRequest(key=start, range_end=prefix_end(prefix))
        reply = await self._call(f"delete_prefix {prefix!r}", self._kv.delete_range, request)
        return reply.deleted

    async def create(self, key: bytes, value: bytes, *, lease: int = 0) -> bool:
        """Set ``key`` only if it does not exist: one transaction (create_revision == 0).

        Args:
            key: the key (non-empty).
            value: its value.
            lease: attach the key to this lease (0: none).

        Returns:
            True if this call created the key, False if it existed (it is left unchanged).
        """
        check_key(key)
        put = pb.PutRequest(key=key, value=_bytes(value, "value"), lease=_lease_id(lease))
        absent = pb.Compare(
            result=pb.CompareCompareResult.EQUAL,
            target=pb.CompareCompareTarget.CREATE,
            key=key,
            create_revision=0,
        )
        request = pb.TxnRequest(compare=[absent], success=[pb.RequestOp(request_put=put)])
        reply = await self._call(f"create {key!r}", self._kv.txn, request)
        return reply.succeeded

    async def compact(self, revision: int) -> None:
        """Drop the history before ``revision`` (watches can no longer start earlier).

        Waits until etcd has compacted its database (``physical``), so a watch opened after
        this call sees the compaction.

        Raises:
            InvalidArgument: ``revision`` is not positive, is in the future, or was compacted
                already (etcd's OUT_OF_RANGE).
        """
        if isinstance(revision, bool) or not isinstance(revision, int) or revision <= 0:
            raise InvalidArgument(f"a revision to compact is a positive int, not {revision!r}")
        request = pb.CompactionRequest(revision=revision, physical=True)
        await self._call(f"compact {revision}", self._kv.compact, request)

    async def grant_lease(self, ttl_seconds: int) -> Lease:
        """Grant a new lease; keys put with it are deleted when it expires or is revoked.

        Args:
            ttl_seconds: the time to live asked for (etcd 3.4 grants at least about 2 s).

        Returns:
            The :class:`Lease`, with the TTL etcd granted.
        """
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
            raise InvalidArgument(f"a lease TTL is a positive int of seconds, not {ttl_seconds!r}")
        what = f"grant_lease {ttl_seconds} s"
        reply = await self._call(
            what, self._lease.lease_grant, pb.LeaseGrantRequest(ttl=ttl_seconds)
        )
        if reply.error:
            raise Unknown(f"{what}: {reply.error}", hop=self._hop)
        return Lease(id=reply.id, ttl=reply.ttl)

    async def keepalive_once(self, lease_id: int) -> int:
        """Renew a lease once (one request on a LeaseKeepAlive stream, which then ends).

        Returns:
            The lease's TTL in seconds from now.

        Raises:
            NotFound: the lease expired or was revoked.
        """
        _lease_id(lease_id)
        what = f"keepalive_once lease {lease_id:#x}"
        ttl = await self._run(what, self._keepalive, lease_id)
        if ttl <= 0:
            raise NotFound(f"{what}: the lease expired or was revoked", hop=self._hop)
        return ttl

    async def _keepalive(self, lease_id: int) -> int:
        """asyncio: one request and one reply on a LeaseKeepAlive stream, then its end."""
        async with self._grpc.request(
            _KEEPALIVE_PATH,
            Cardinality.STREAM_STREAM,
            pb.LeaseKeepAliveRequest,
            pb.LeaseKeepAliveResponse,
            timeout=self._timeout,
        ) as stream:
            # etcd answers, then ends the stream when it reads our end: no half-open wait.
            await stream.send_message(pb.LeaseKeepAliveRequest(id=lease_id), end=True)
            reply = await stream.recv_message()
        if reply is None:
            raise Unavailable("etcd ended the keepalive stream without a reply", hop=self._hop)
        return reply.ttl

    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke a lease: every key attached to it is deleted.

        Raises:
            NotFound: no such lease (it expired or was already revoked).
        """
        request = pb.LeaseRevokeRequest(id=_lease_id(lease_id))
        await self._call(f"revoke_lease {lease_id:#x}", self._lease.lease_revoke, request)

    def watch_prefix(
        self, prefix: bytes, *, start_revision: int = 0
    ) -> AbstractAsyncContextManager[EtcdWatch]:
        """Watch every key starting with ``prefix``: an async context manager.

        It yields an async iterator of single :class:`WatchEvent` s, in revision order (the
        changes of one transaction share a revision). Entering blocks until etcd confirms the
        watch (at most ``timeout``): every change made after that is seen. Leaving cancels the
        watch on etcd and waits (briefly) for that; the iterator then raises Unavailable.

        Args:
            prefix: the key prefix (``b""``: every key).
            start_revision: replay history from this revision on (inclusive); 0 watches from
                now.

        Raises:
            Unavailable: on entry, etcd is unreachable or did not confirm the watch; from the
                iterator, the stream broke (etcd died, the connection dropped).
            FailedPrecondition: from the iterator, ``start_revision`` has been compacted (the
                reason names it and the oldest revision left).
        """
        _bytes(prefix, "prefix")
        if isinstance(start_revision, bool) or not isinstance(start_revision, int):
            raise InvalidArgument(f"a start revision is an int, not {start_revision!r}")
        if start_revision < 0:
            raise InvalidArgument(f"a start revision is >= 0, not {start_revision}")
        self._check_open(f"watch_prefix {prefix!r}")
        create = pb.WatchCreateRequest(
            key=prefix or b"\0", range_end=prefix_end(prefix), start_revision=start_revision
        )
        what = f"watch_prefix {prefix!r}"
        return open_watch(
            self._island, self._grpc, create, hop=self._hop, what=what, bound=self._timeout
        )

    async def _call(self, what: str, method: Callable[..., Awaitable[R]], request: Any) -> R:
        """One unary call through a generated stub method: one crossing into asyncio."""
        return await self._run(what, self._unary, method, request)

    async def _unary(self, method: Callable[..., Awaitable[R]], request: Any) -> R:
        return await method(request, timeout=self._timeout)

    async def _run(self, what: str, fn: Callable[..., Awaitable[R]], *args: Any) -> R:
        """Trio: ``await fn(*args)`` in the island (one crossing), failures as TrionsmError.

        Waits for one of the :data:`MAX_IN_FLIGHT` slots first (the timeout starts after).
        """
        self._check_open(what)
        async with self._in_flight:
            return await self._island.run(self._translated, what, fn, *args)

    async def _translated(self, what: str, fn: Callable[..., Awaitable[R]], *args: Any) -> R:
        """asyncio: ``await fn(*args)``, any failure raised as a TrionsmError."""
        self._check_open(what)  # the client may have closed while this call waited to start
        try:
            return await fn(*args)
        except Exception as exc:
            raise etcd_error(exc, what, self._hop, self._timeout) from exc

    def _revision(self, header: pb.ResponseHeader | None) -> int:
        if header is None:
            raise Unknown("etcd sent a reply without a header", hop=self._hop)
        return header.revision

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise Unavailable(f"{what}: the client is closed", hop=self._hop)

    async def _aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._island.run(_close, self._grpc)


def _bytes(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise InvalidArgument(f"an etcd {what} is bytes, not {type(value).__name__}")
    return value


def _lease_id(lease: int) -> int:
    if isinstance(lease, bool) or not isinstance(lease, int) or lease < 0:
        raise InvalidArgument(f"a lease ID is an int >= 0, not {lease!r}")
    return lease
