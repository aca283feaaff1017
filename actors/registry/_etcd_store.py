"""The etcd store: registrations in etcd, shared by registry replicas.

Theory of operation. Entries live under a key prefix (default ``/trionsm/registry/``) as protobuf
bytes of the NSM message: ``<prefix>nse/<name>`` and ``<prefix>ns/<name>``. Each replica keeps
the two catalogs as a mirror of that prefix: it loads it once (one consistent read), then applies
etcd's Watch from the next revision, in order. The catalogs (and so every Find and watcher of the
replica) change only from the Watch, so all replicas show the same history.

Writes: a Register puts the entry with an etcd lease that expires at the first whole second at
least :data:`LEASE_MARGIN` after the entry's deadline, then waits until its own watch has applied
that put (its own event, whatever else arrived), so the caller's next Find (through any replica
that syncs) sees it. Registrations whose leases would expire in the same second share one lease
of this replica (granted once, by the first of them); a replica never uses another's lease. The
replica that took the Register is the entry's authority: its EntryActor deletes the key at the
deadline, with a transaction that only deletes the revision it wrote (expiries due together share
one transaction, up to MAX_TXN_OPS keys, so 1,000 a second stay on time). The lease is the backstop:
if that replica dies, etcd drops the key a moment after the deadline (at most about 2 s after
the margin) and every other replica's watchers see the deletion.

Take-over: when another replica re-registers a name this replica holds (a put with a lease that
is not ours, newer than our write), our entry stands down without deleting anything.

Sync: before Register, Unregister and Find the registry calls :meth:`EtcdStore.sync`, which
writes this replica's fence key (``<prefix>sync/<replica>``) and waits until the Watch has applied
that write. The fence commits after every change committed before the call, and the Watch delivers
changes in revision order, so all of them have then been applied: a registration made through
replica A is found through replica B. Concurrent syncs share one fence write (one is in flight at
a time; a sync waits for a fence sent after it began). Watch progress notifications are not used:
etcd before 3.4.24 / 3.5.8 may send one ahead of events it has already queued (etcd-io/etcd#15220),
which then let a sync return before those events were applied. The fence key is on a lease of
:data:`FENCE_TTL`-ish seconds, so a dead replica's fence key disappears.

Outages: while etcd is unreachable, calls fail with Unavailable and watchers keep their stream;
the store reconnects with backoff, reloads the prefix, and tells watchers exactly what changed in
between (puts and deletions), then watches again.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import secrets
from typing import Any, Final

import attrs
import trio

from trionsm.api.registry import NetworkService, NetworkServiceEndpoint
from trionsm.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from trionsm.transport import parse_url
from trionsm.transport._etcd_client import MAX_TXN_OPS

from ._catalog import DEFAULT_WATCH_BUFFER, Catalog
from ._entry import Entry
from ._store import ENDPOINT, SERVICE, make_catalogs

__all__ = ["DEFAULT_PREFIX", "LEASE_MARGIN", "EtcdStore"]

DEFAULT_PREFIX: Final = "/trionsm/registry/"
LEASE_MARGIN: Final = 2.0
"""Seconds the backstop lease outlives an entry's deadline (the live replica deletes first)."""

SYNC_TIMEOUT: Final = 5.0
"""Seconds a sync, or a put waiting for its own watch event, may take before Unavailable."""

FENCE_TTL: Final = 60
"""Seconds (at least; at most half as many again) the fence key outlives this replica's last
sync."""

RETRY_MIN, RETRY_MAX = 0.2, 2.0
_FENCE_SEGMENT = b"sync/"

_SEGMENT = {ENDPOINT: "nse/", SERVICE: "ns/"}
_MESSAGE: dict[str, type[Any]] = {ENDPOINT: NetworkServiceEndpoint, SERVICE: NetworkService}


@attrs.define
class _Write:
    """What this replica last wrote for a name: its lease and (once known) its revision."""

    lease: int
    revision: int | None = None


@attrs.define
class _LeaseSlot:
    """One lease of this replica for every key that should expire in one second.

    ``lease`` stays 0 until etcd granted it; ``ready`` is set once the grant ended either way.
    """

    ready: trio.Event = attrs.field(factory=trio.Event)
    lease: int = 0


def parse_store_url(url: str) -> tuple[str, str]:
    """``etcd://host:port[/prefix]`` -> (``host:port``, key prefix ending in ``/``)."""
    rest = url.removeprefix("etcd://")
    endpoint, slash, prefix = rest.partition("/")
    try:
        parse_url(f"tcp://{endpoint}")
    except InvalidArgument as exc:
        raise InvalidArgument(f"store {url!r}: {exc.reason}") from None
    prefix = f"/{prefix.strip('/')}/" if slash and prefix.strip("/") else DEFAULT_PREFIX
    return endpoint, prefix


class EtcdStore:
    """Registrations in etcd (see the module docstring).

    Args:
        url: ``etcd://host:port[/prefix]``.
        watch_buffer: events a Find(watch=true) may fall behind before it is closed.
        hop: the registry's name in errors.
    """

    local = False

    def __init__(
        self, url: str, *, watch_buffer: int = DEFAULT_WATCH_BUFFER, hop: str = "registry"
    ) -> None:
        self._url = url
        self._endpoint, prefix = parse_store_url(url)
        self._prefix = prefix.encode()
        self.hop = hop
        self.endpoints, self.services = make_catalogs(watch_buffer=watch_buffer, hop=hop)
        self._client: Any = None
        self._mine: dict[tuple[str, str], _Write] = {}
        self._on_take_over: Any = None
        # The mirror: etcd's state at revision ``_applied`` (raised by each applied event and by
        # each load, never by anything else), and the tasks waiting for a revision.
        self._applied = 0
        self._applied_waiters: list[tuple[int, int, trio.Event]] = []
        self._sequence = itertools.count()
        # Leases of this replica by the second they expire at (see _lease_until).
        self._leases: dict[int, _LeaseSlot] = {}
        # Fences: writes of _fence_key, one in flight at a time (see _fence).
        self._fence_key = self._prefix + _FENCE_SEGMENT + secrets.token_hex(8).encode()
        self._fences_started = 0
        self._fence_done: tuple[int, int] = (0, 0)  # (number, revision) of the last fence
        self._fence_busy = False
        self._fence_idle = trio.Event()
        # Expiries waiting to be deleted, and whether a batch is being sent (_delete_batched).
        self._expiring: list[tuple[bytes, int, trio.Event]] = []
        self._expiry_busy = False

    @property
    def description(self) -> str:
        return self._url

    def catalog(self, kind: str) -> Catalog[Any]:
        return self.endpoints if kind == ENDPOINT else self.services

    def on_take_over(self, callback: Any) -> None:
        """``callback(kind, name)`` when another replica took over a name this replica held."""
        self._on_take_over = callback

    # -- keys ------------------------------------------------------------------------------------

    def _key(self, kind: str, name: str) -> bytes:
        return self._prefix + _SEGMENT[kind].encode() + name.encode()

    def _parse_key(self, key: bytes) -> tuple[str, str] | None:
        rest = key[len(self._prefix) :]
        for kind, segment in _SEGMENT.items():
            if rest.startswith(segment.encode()):
                return kind, rest[len(segment) :].decode()
        return None

    # -- the mirror ------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the prefix, then follow etcd's Watch until cancelled; reconnect after outages.

        ``started()`` once the catalogs hold what etcd holds and the Watch runs. An etcd that is
        unreachable at start is a start error (Unavailable); later outages are retried with
        backoff while calls fail with Unavailable.
        """
        from trionsm.transport import open_etcd

        started = False
        try:
            async with open_etcd(self._endpoint) as client:
                self._client = client
                revision = await self._load()
                delay = RETRY_MIN
                while True:
                    try:
                        async with client.watch_prefix(
                            self._prefix, start_revision=revision + 1
                        ) as watch:
                            if not started:
                                started = True
                                task_status.started()
                            delay = RETRY_MIN
                            async for event in watch:
                                if event.kind is not event.PROGRESS:  # none asked for
                                    self._apply(event)
                                    revision = event.mod_revision
                                # etcd sends events in batches of hundreds: let the watchers
                                # drain between events, or a burst would overflow them.
                                await trio.lowlevel.checkpoint()
                    except (Unavailable, FailedPrecondition):
                        if not started:
                            raise
                        await trio.sleep(delay)
                        delay = min(delay * 2, RETRY_MAX)
                        with contextlib.suppress(Unavailable):
                            revision = await self._load()
        finally:
            self._client = None
            for _, _, waiter in self._applied_waiters:
                waiter.set()  # they see the store is gone
            self._applied_waiters.clear()
            self.endpoints.close_watchers("the registry lost its etcd store")
            self.services.close_watchers("the registry lost its etcd store")

    async def _load(self) -> int:
        """Read the whole prefix and make the catalogs equal to it (telling watchers the diff).

        After an outage the diff can be every key (all expired meanwhile): it yields after each
        change it applies, as the Watch loop does, so watchers drain as it goes instead of
        getting it all at once and overflowing their buffers.
        """
        kvs, revision = await self._client.get_prefix(self._prefix)
        assert isinstance(revision, int)
        seen: dict[str, set[str]] = {ENDPOINT: set(), SERVICE: set()}
        for kv in kvs:
            parsed = self._parse_key(kv.key)
            if parsed is None:
                continue
            kind, name = parsed
            seen[kind].add(name)
            value = _MESSAGE[kind].parse(kv.value)
            catalog = self.catalog(kind)
            if catalog.get(name) != value:
                catalog.put(value, revision=kv.mod_revision)
                await trio.lowlevel.checkpoint()
        for kind, names in seen.items():
            catalog = self.catalog(kind)
            for name in catalog.names():
                if name not in names and name in catalog:
                    catalog.delete(name, revision=revision)
                    await trio.lowlevel.checkpoint()
        self._advance(revision)
        return revision

    def _apply(self, event: Any) -> None:
        self._apply_to_catalogs(event)
        self._advance(event.mod_revision)

    def _apply_to_catalogs(self, event: Any) -> None:
        parsed = self._parse_key(event.key)
        if parsed is None:
            return  # a fence, or a key that is not ours
        kind, name = parsed
        catalog = self.catalog(kind)
        if event.kind is event.PUT:
            catalog.put(_MESSAGE[kind].parse(event.value), revision=event.mod_revision)
            foreign = event.lease
        else:
            catalog.delete(name, revision=event.mod_revision)
            foreign = None
        mine = self._mine.get((kind, name))
        if mine is None or mine.revision is None or event.mod_revision <= mine.revision:
            return
        if foreign is not None and foreign == mine.lease:
            return
        del self._mine[(kind, name)]
        if self._on_take_over is not None:
            self._on_take_over(kind, name)

    def _advance(self, revision: int) -> None:
        """The mirror now holds etcd's state at ``revision``: wake who waited for it."""
        self.endpoints.set_revision(revision)
        self.services.set_revision(revision)
        if revision <= self._applied:
            return
        self._applied = revision
        waiters = self._applied_waiters
        while waiters and waiters[0][0] <= revision:
            heapq.heappop(waiters)[2].set()

    async def _wait_applied(self, revision: int, what: str) -> None:
        """Wait until the mirror has applied ``revision`` (at most :data:`SYNC_TIMEOUT`)."""
        with trio.move_on_after(SYNC_TIMEOUT):
            while self._applied < revision:
                self._connected()
                waiter = trio.Event()
                heapq.heappush(self._applied_waiters, (revision, next(self._sequence), waiter))
                await waiter.wait()
            return
        raise Unavailable(
            f"the etcd store {self._url}: {what}: its watch did not apply revision {revision} "
            f"within {SYNC_TIMEOUT:g} s",
            hop=self.hop,
        )

    # -- the Store interface ---------------------------------------------------------------------

    def _connected(self) -> Any:
        if self._client is None:
            raise Unavailable(f"the etcd store {self._url} is not connected", hop=self.hop)
        return self._client

    async def sync(self) -> None:
        """Return once every change committed to etcd before the call has been applied.

        Raises:
            Unavailable: etcd is unreachable, or the watch did not catch up within
                :data:`SYNC_TIMEOUT`.
        """
        client = self._connected()
        with trio.move_on_after(SYNC_TIMEOUT):
            revision = await self._fence(client)
            await self._wait_applied(revision, "sync")
            return
        raise Unavailable(
            f"the etcd store {self._url} did not sync with etcd within {SYNC_TIMEOUT:g} s",
            hop=self.hop,
        )

    async def _fence(self, client: Any) -> int:
        """The revision of a fence write sent after this call began (one in flight at a time).

        The first caller that finds no fence in flight writes one; the others wait for it to end
        and use it if it was started after they began, else the next one.
        """
        wanted = self._fences_started + 1
        while self._fence_done[0] < wanted:
            if self._fence_busy:
                await self._fence_idle.wait()
                continue
            self._fence_busy = True
            self._fences_started += 1
            number = self._fences_started
            try:
                half = FENCE_TTL // 2  # one lease per half-TTL: a grant every 30 s at most
                expires = math.ceil((trio.current_time() + FENCE_TTL) / half) * half
                lease = await self._lease_until(client, expires)
                try:
                    revision = await client.put(self._fence_key, b"", lease=lease)
                except NotFound:
                    self._forget_lease(lease)  # etcd lost it: the next round grants another
                    continue
                self._fence_done = (number, revision)
            finally:
                self._fence_busy = False
                self._fence_idle.set()
                self._fence_idle = trio.Event()
        return self._fence_done[1]

    async def _lease_until(self, client: Any, expires: float) -> int:
        """A lease of this replica that lasts until ``expires`` (trio time) or a little longer.

        Every caller whose ``expires`` falls in the same second gets the same lease, granted once
        (by the first; the others wait for that grant) to expire at the end of that second: so
        it outlives ``expires`` by less than a second, plus etcd's own rounding.
        """
        second = math.ceil(expires)
        while (slot := self._leases.get(second)) is not None:
            await slot.ready.wait()
            if slot.lease:
                return slot.lease
            # That grant failed or was cancelled (its slot is gone): try again here.
        slot = self._leases[second] = _LeaseSlot()
        try:
            now = trio.current_time()
            for stale in [s for s in self._leases if s <= now]:
                del self._leases[stale]
            granted = await client.grant_lease(max(1, math.ceil(second - now)))
            slot.lease = granted.id
        finally:
            if not slot.lease and self._leases.get(second) is slot:
                del self._leases[second]
            slot.ready.set()
        return slot.lease

    def _forget_lease(self, lease: int) -> None:
        """Stop handing out ``lease`` (etcd no longer has it)."""
        for second, slot in list(self._leases.items()):
            if slot.lease == lease:
                del self._leases[second]

    async def put(self, kind: str, value: Any, entry: Entry) -> None:
        """Write the registration, then wait until this replica's watch has applied it.

        Raises:
            Unavailable: etcd is unreachable, or the watch did not apply the write within
                :data:`SYNC_TIMEOUT` (the write may have been made).
        """
        client = self._connected()
        key = (kind, entry.name)
        previous = self._mine.get(key)
        expiring = kind == ENDPOINT and math.isfinite(entry.deadline)
        for attempt in range(2):
            lease = 0
            if expiring:
                lease = await self._lease_until(client, entry.deadline + LEASE_MARGIN)
            self._mine[key] = write = _Write(lease)
            try:
                revision = await client.put(self._key(kind, entry.name), bytes(value), lease=lease)
            except BaseException as exc:  # cancelled too: leave nothing half-noted
                if previous is None:
                    self._mine.pop(key, None)
                else:
                    self._mine[key] = previous
                if isinstance(exc, NotFound) and lease and attempt == 0:
                    self._forget_lease(lease)  # a shared lease etcd lost: grant a new one
                    continue
                raise
            break
        write.revision = revision
        entry.token = write
        await self._wait_applied(revision, f"put {kind} {entry.name!r}")

    async def delete(self, kind: str, name: str) -> None:
        client = self._connected()
        self._mine.pop((kind, name), None)
        await client.delete(self._key(kind, name))
        await self.sync()

    async def expire(self, kind: str, entry: Entry) -> None:
        client = self._connected()
        write = entry.token
        key = (kind, entry.name)
        if self._mine.get(key) is write:
            del self._mine[key]
        if not isinstance(write, _Write) or write.revision is None:
            return
        await self._delete_batched(client, self._key(kind, entry.name), write.revision)

    async def _delete_batched(self, client: Any, key: bytes, revision: int) -> None:
        """Delete ``key`` if still at ``revision``, in one transaction with other expiries.

        Expiries due together (the bench: 1,000 a second) share ``delete_many_if`` calls: the
        first caller that finds none in flight sends every pending one, in batches, and the
        others wait for theirs. A failed batch is left to etcd's leases (the backstop).
        """
        done = trio.Event()
        self._expiring.append((key, revision, done))
        if self._expiry_busy:
            await done.wait()
            return
        self._expiry_busy = True
        try:
            while self._expiring:
                batch: dict[bytes, tuple[int, trio.Event]] = {}
                later = []
                for pending in self._expiring:
                    if len(batch) < MAX_TXN_OPS and pending[0] not in batch:
                        batch[pending[0]] = pending[1:]
                    else:
                        later.append(pending)
                self._expiring = later
                try:
                    await client.delete_many_if([(k, rev) for k, (rev, _) in batch.items()])
                except Unavailable:
                    pass  # etcd's lease removes them a moment later (the backstop)
                finally:
                    for _, event in batch.values():
                        event.set()
        finally:
            self._expiry_busy = False
            for _, _, event in self._expiring:  # left by a cancelled sender: the backstop's
                event.set()
            self._expiring.clear()
