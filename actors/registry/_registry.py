"""The registry's logic: Register, Unregister and Find for endpoints and services.

Theory of operation. Register validates the message (``_validate``), takes the name's lock, brings
the store up to date (``sync``: a replica must see writes made through other replicas), checks who
owns the name, computes the expiry and writes the stored form:

* ``expiration_time = min(requested, now + expiry)`` (endpoints; services never expire);
* ``initial_registration_time`` is kept from the first registration;
* ``path_ids`` records the owner: the first registrant's authenticated identity (SPIFFE ID).

Then it starts the name's EntryActor (first registration) or moves its deadline (refresh). A write
the store refuses (etcd down) changes nothing. Unregister removes the registration and ends its
entry; an unknown name is harmless. Find streams the current matches and, with ``watch``, every
later change (see ``_catalog``).

Ownership: a name registered by an authenticated peer may be re-registered or unregistered only by
the same identity (anyone else gets PermissionDenied). Without TLS no peer is authenticated, so the
check cannot be enforced; such calls are allowed and counted in :attr:`Registry.unverified`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from trionsm.api.registry import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceEndpointResponse,
    NetworkServiceQuery,
    NetworkServiceResponse,
)
from trionsm.clock import Clock, current_clock
from trionsm.errors import InvalidArgument, PermissionDenied, Unavailable
from trionsm.transport import Peer

from ._catalog import Catalog
from ._entry import Entry, KeyedLock
from ._store import ENDPOINT, SERVICE, Store
from ._validate import check_endpoint, check_service

__all__ = ["DEFAULT_EXPIRY", "DEFAULT_PAYLOAD", "Registry"]

DEFAULT_EXPIRY = 60.0
DEFAULT_PAYLOAD = "IP"

Spawn = Callable[[Entry], Awaitable[object]]


class Registry:
    """Register/Unregister/Find over a :class:`Store`, with one EntryActor per name.

    Args:
        store: where registrations live.
        expiry: the longest an endpoint registration lives without a refresh (seconds).
        clock: maps Trio time to the wire's wall-clock Timestamps (default: the run's clock).
        hop: this registry's name in errors.
    """

    def __init__(
        self,
        store: Store,
        *,
        expiry: float = DEFAULT_EXPIRY,
        clock: Clock | None = None,
        hop: str = "registry",
    ) -> None:
        if not expiry > 0:
            raise ValueError(f"expiry must be positive seconds, got {expiry!r}")
        self.store = store
        self.expiry = expiry
        self.hop = hop
        self.unverified = 0
        self._clock = clock
        self._entries: dict[tuple[str, str], Entry] = {}
        self._locks = KeyedLock()
        self._spawn: Spawn | None = None
        take_over = getattr(store, "on_take_over", None)
        if take_over is not None:
            take_over(self._taken_over)

    @property
    def clock(self) -> Clock:
        if self._clock is None:
            self._clock = current_clock()
        return self._clock

    def entries(self) -> dict[tuple[str, str], Entry]:
        """A snapshot of this replica's live entries, keyed by (kind, name)."""
        return dict(self._entries)

    # -- the entry supervisor --------------------------------------------------------------------

    def attach(self, spawn: Spawn) -> None:
        """Start entries with ``spawn(entry)`` (the entry supervisor's ``start_child``)."""
        self._spawn = spawn

    async def adopt(self) -> None:
        """Give every stored registration an entry again (a restarted entry supervisor).

        Only for stores this replica owns alone (memory): with a shared store the other replicas'
        registrations are theirs, and the store's own expiry backstop covers ours.
        """
        if not self.store.local:
            return
        for kind in (ENDPOINT, SERVICE):
            catalog = self.store.catalog(kind)
            for name in catalog.names():
                value = catalog.get(name)
                if value is None or (kind, name) in self._entries:
                    continue
                deadline = trio.current_time() if kind == ENDPOINT else math.inf
                if kind == ENDPOINT and value.expiration_time is not None:
                    deadline = self.clock.deadline(value.expiration_time)
                entry = Entry(kind, name, deadline, token=value)
                await self._keep(entry, True, deadline)

    def detach(self) -> None:
        """The entry supervisor stopped: its entries are gone, so forget them."""
        self._spawn = None
        for entry in self._entries.values():
            entry.ended = True
        self._entries.clear()

    def _taken_over(self, kind: str, name: str) -> None:
        """Another replica re-registered ``name``: its entry there is the authority now."""
        entry = self._entries.pop((kind, name), None)
        if entry is not None:
            entry.end()

    async def expire(self, entry: Entry) -> bool:
        """An entry's deadline passed: remove its registration (False if it was refreshed)."""
        key = (entry.kind, entry.name)
        async with self._locks.hold(f"{entry.kind}:{entry.name}"):
            if entry.ended:
                return True
            if trio.current_time() < entry.deadline:
                return False
            if self._entries.get(key) is entry:
                del self._entries[key]
            await self.store.expire(entry.kind, entry)
            return True

    async def _keep(self, entry: Entry, fresh: bool, deadline: float) -> None:
        if not fresh:
            entry.move(deadline)
            return
        if self._spawn is None:
            raise Unavailable("the registry is stopping", hop=self.hop)
        await self._spawn(entry)
        self._entries[(entry.kind, entry.name)] = entry

    # -- ownership -------------------------------------------------------------------------------

    def _owner(self, path_ids: list[str], peer: Peer | None, kind: str, name: str) -> list[str]:
        caller = peer.identity if peer is not None else None
        owner = path_ids[0] if path_ids else None
        if owner is None or owner == caller:
            if caller is None:
                self.unverified += 1
            return [caller] if caller is not None else []
        raise PermissionDenied(
            f"{kind} {name!r} is owned by {owner}; "
            f"{caller or 'an unauthenticated peer'} may not change it",
            hop=self.hop,
            service=name,
        )

    # -- endpoints -------------------------------------------------------------------------------

    async def register_endpoint(
        self, nse: NetworkServiceEndpoint, peer: Peer | None = None
    ) -> NetworkServiceEndpoint:
        """Register or refresh ``nse``; returns the stored form (with its expiration_time)."""
        clock = self.clock
        now = trio.current_time()
        check_endpoint(nse, now=clock.timestamp(now), hop=self.hop)
        async with self._locks.hold(f"{ENDPOINT}:{nse.name}"):
            await self.store.sync()
            current = self.store.endpoints.get(nse.name)
            owner = self._owner(current.path_ids if current else [], peer, ENDPOINT, nse.name)
            deadline = now + self.expiry
            if nse.expiration_time is not None:
                deadline = min(deadline, clock.deadline(nse.expiration_time))
            first = current.initial_registration_time if current is not None else None
            stored = dataclasses.replace(
                nse,
                expiration_time=clock.timestamp(deadline),
                initial_registration_time=first or clock.timestamp(now),
                path_ids=owner,
            )
            entry = self._entries.get((ENDPOINT, nse.name))
            fresh = entry is None
            if entry is None:
                entry = Entry(ENDPOINT, nse.name, deadline)
            await self.store.put(ENDPOINT, stored, entry)
            await self._keep(entry, fresh, deadline)
            return stored

    async def unregister_endpoint(
        self, nse: NetworkServiceEndpoint, peer: Peer | None = None
    ) -> None:
        """Remove the registration named ``nse.name`` (an unknown name is harmless)."""
        await self._unregister(ENDPOINT, nse.name, peer)

    def find_endpoints(
        self, query: NetworkServiceEndpointQuery
    ) -> AsyncIterator[NetworkServiceEndpointResponse]:
        """The matches of ``query``, then (``watch``) every change until the caller leaves."""
        return self._find(
            self.store.endpoints,
            query.network_service_endpoint or NetworkServiceEndpoint(),
            query.watch,
            lambda value, deleted: NetworkServiceEndpointResponse(
                network_service_endpoint=value, deleted=deleted
            ),
        )

    # -- services --------------------------------------------------------------------------------

    async def register_service(
        self, ns: NetworkService, peer: Peer | None = None
    ) -> NetworkService:
        """Register ``ns`` (payload defaults to IP; services never expire)."""
        check_service(ns, hop=self.hop)
        async with self._locks.hold(f"{SERVICE}:{ns.name}"):
            await self.store.sync()
            current = self.store.services.get(ns.name)
            owner = self._owner(current.path_ids if current else [], peer, SERVICE, ns.name)
            stored = dataclasses.replace(ns, payload=ns.payload or DEFAULT_PAYLOAD, path_ids=owner)
            entry = self._entries.get((SERVICE, ns.name))
            fresh = entry is None
            if entry is None:
                entry = Entry(SERVICE, ns.name)
            await self.store.put(SERVICE, stored, entry)
            await self._keep(entry, fresh, entry.deadline)
            return stored

    async def unregister_service(self, ns: NetworkService, peer: Peer | None = None) -> None:
        """Remove the network service named ``ns.name`` (an unknown name is harmless)."""
        await self._unregister(SERVICE, ns.name, peer)

    def find_services(self, query: NetworkServiceQuery) -> AsyncIterator[NetworkServiceResponse]:
        """The matches of ``query``, then (``watch``) every change until the caller leaves."""
        return self._find(
            self.store.services,
            query.network_service or NetworkService(),
            query.watch,
            lambda value, deleted: NetworkServiceResponse(network_service=value, deleted=deleted),
        )

    # -- shared ----------------------------------------------------------------------------------

    async def _unregister(self, kind: str, name: str, peer: Peer | None) -> None:
        field = "network_service_endpoint" if kind == ENDPOINT else "network_service"
        if not name:
            raise InvalidArgument(
                f"{field}.name: empty; say which {kind} to unregister", hop=self.hop
            )
        async with self._locks.hold(f"{kind}:{name}"):
            await self.store.sync()
            current = self.store.catalog(kind).get(name)
            if current is not None:
                self._owner(current.path_ids, peer, kind, name)
                await self.store.delete(kind, name)
            entry = self._entries.pop((kind, name), None)
            if entry is not None:
                entry.end()

    async def _find(
        self,
        catalog: Catalog[Any],
        query: Any,
        watch: bool,
        response: Callable[[Any, bool], Any],
    ) -> AsyncIterator[Any]:
        await self.store.sync()
        if not watch:
            for value in catalog.find(query):
                yield response(value, False)
            return
        with catalog.watch(query) as (snapshot, watcher):
            for value in snapshot:
                yield response(value, False)
            async for change in watcher:
                yield response(change.value, change.deleted)
