"""The etcd store: registrations in etcd, shared by registry replicas.

Theory of operation. Entries live under a key prefix (default ``/trionsm/registry/``) as protobuf
bytes of the NSM message: ``<prefix>nse/<name>`` and ``<prefix>ns/<name>``. Each replica keeps
the two catalogs as a mirror of that prefix: it loads it once (one consistent read), then applies
etcd's Watch from the next revision, in order. The catalogs (and so every Find and watcher of the
replica) change only from the Watch, so all replicas show the same history.

Writes: a Register puts the entry with a fresh etcd lease whose TTL is the entry's remaining
lifetime + :data:`LEASE_MARGIN`, then waits until its own watch has applied that revision, so the
caller's next Find (through any replica that syncs) sees it. The replica that took the Register
is the entry's authority: its EntryActor deletes the key at the deadline, with a transaction that
only deletes the revision it wrote. The lease is the backstop: if that replica dies, etcd drops
the key a moment after the deadline and every other replica's watchers see the deletion.

Take-over: when another replica re-registers a name this replica holds (a put with a lease that
is not ours, newer than our write), our entry stands down without deleting anything.

Sync: before Register, Unregister and Find the registry calls :meth:`EtcdStore.sync`, which asks
etcd for a progress notification on the Watch and waits for it: every change committed before the
call has then been applied, so a registration made through replica A is found through replica B.

Outages: while etcd is unreachable, calls fail with Unavailable and watchers keep their stream;
the store reconnects with backoff, reloads the prefix, and tells watchers exactly what changed in
between (puts and deletions), then watches again.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Final

import attrs
import trio

from trionsm.api.registry import NetworkService, NetworkServiceEndpoint
from trionsm.errors import FailedPrecondition, InvalidArgument, TrionsmError, Unavailable
from trionsm.transport import parse_url

from ._catalog import DEFAULT_WATCH_BUFFER, Catalog
from ._entry import Entry
from ._store import ENDPOINT, SERVICE, make_catalogs

__all__ = ["DEFAULT_PREFIX", "LEASE_MARGIN", "EtcdStore"]

DEFAULT_PREFIX: Final = "/trionsm/registry/"
LEASE_MARGIN: Final = 2.0
"""Seconds the backstop lease outlives an entry's deadline (the live replica deletes first)."""

SYNC_TIMEOUT: Final = 5.0
RETRY_MIN, RETRY_MAX = 0.2, 2.0

_SEGMENT = {ENDPOINT: "nse/", SERVICE: "ns/"}
_MESSAGE: dict[str, type[Any]] = {ENDPOINT: NetworkServiceEndpoint, SERVICE: NetworkService}


@attrs.define
class _Write:
    """What this replica last wrote for a name: its lease and (once known) its revision."""

    lease: int
    revision: int | None = None


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
        self._watch: Any = None
        self._mine: dict[tuple[str, str], _Write] = {}
        self._progress = 0
        self._progress_event = trio.Event()
        self._watch_changed = trio.Event()
        self._on_take_over: Any = None

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
                            self._set_watch(watch)
                            if not started:
                                started = True
                                task_status.started()
                            delay = RETRY_MIN
                            async for event in watch:
                                if event.kind is event.PROGRESS:
                                    self._note_progress(event.mod_revision)
                                else:
                                    self._apply(event)
                                    revision = event.mod_revision
                    except (Unavailable, FailedPrecondition):
                        self._set_watch(None)
                        if not started:
                            raise
                        await trio.sleep(delay)
                        delay = min(delay * 2, RETRY_MAX)
                        with contextlib.suppress(Unavailable):
                            revision = await self._load()
        finally:
            self._client = None
            self._set_watch(None)
            self._progress_event.set()
            self.endpoints.close_watchers("the registry lost its etcd store")
            self.services.close_watchers("the registry lost its etcd store")

    def _set_watch(self, watch: Any) -> None:
        self._watch = watch
        self._watch_changed.set()
        self._watch_changed = trio.Event()

    async def _load(self) -> int:
        """Read the whole prefix and make the catalogs equal to it (telling watchers the diff)."""
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
        for kind, names in seen.items():
            catalog = self.catalog(kind)
            for name in catalog.names():
                if name not in names:
                    catalog.delete(name, revision=revision)
            catalog.set_revision(revision)
        return revision

    def _apply(self, event: Any) -> None:
        parsed = self._parse_key(event.key)
        if parsed is None:
            return
        kind, name = parsed
        catalog = self.catalog(kind)
        if event.kind is event.PUT:
            catalog.put(_MESSAGE[kind].parse(event.value), revision=event.mod_revision)
            self.services.set_revision(event.mod_revision)
            self.endpoints.set_revision(event.mod_revision)
            foreign = event.lease
        else:
            catalog.delete(name, revision=event.mod_revision)
            self.services.set_revision(event.mod_revision)
            self.endpoints.set_revision(event.mod_revision)
            foreign = None
        mine = self._mine.get((kind, name))
        if mine is None or mine.revision is None or event.mod_revision <= mine.revision:
            return
        if foreign is not None and foreign == mine.lease:
            return
        del self._mine[(kind, name)]
        if self._on_take_over is not None:
            self._on_take_over(kind, name)

    def _note_progress(self, revision: int) -> None:
        self.endpoints.set_revision(revision)
        self.services.set_revision(revision)
        self._progress += 1
        self._progress_event.set()
        self._progress_event = trio.Event()

    # -- the Store interface ---------------------------------------------------------------------

    def _connected(self) -> Any:
        if self._client is None:
            raise Unavailable(f"the etcd store {self._url} is not connected", hop=self.hop)
        return self._client

    async def sync(self) -> None:
        self._connected()
        with trio.move_on_after(SYNC_TIMEOUT):
            while self._watch is None:  # reconnecting: wait a little for the watch
                await self._watch_changed.wait()
            seen = self._progress
            await self._watch.request_progress()
            while self._progress == seen and self._watch is not None:
                await self._progress_event.wait()
            if self._progress != seen:
                return
        raise Unavailable(
            f"the etcd store {self._url} did not confirm its watch within {SYNC_TIMEOUT:g} s",
            hop=self.hop,
        )

    async def put(self, kind: str, value: Any, entry: Entry) -> None:
        client = self._connected()
        lease = 0
        if kind == ENDPOINT and math.isfinite(entry.deadline):
            remaining = entry.deadline - trio.current_time()
            granted = await client.grant_lease(max(1, math.ceil(remaining + LEASE_MARGIN)))
            lease = granted.id
        key = (kind, entry.name)
        previous = self._mine.get(key)
        self._mine[key] = write = _Write(lease)
        try:
            revision = await client.put(self._key(kind, entry.name), bytes(value), lease=lease)
        except TrionsmError:
            if previous is None:
                self._mine.pop(key, None)
            else:
                self._mine[key] = previous
            raise
        write.revision = revision
        entry.token = write
        await self.catalog(kind).wait_revision(revision)

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
        try:
            await client.delete_if(self._key(kind, entry.name), mod_revision=write.revision)
        except Unavailable:
            return  # etcd's lease removes it a moment later (the backstop)
