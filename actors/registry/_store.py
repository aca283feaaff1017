"""Where registrations live: the store interface and the in-memory store.

A store owns the two :class:`~._catalog.Catalog` views (endpoints and services) that Find reads
and watchers follow, and applies writes to its backing storage. The registry calls it with the
name's lock held, so a store never sees two writes of one name at once.

* :class:`MemoryStore` (the default): the catalogs are the storage; writes apply at once.
* ``EtcdStore`` (``_etcd_store``): etcd is the storage, shared by registry replicas; the catalogs
  mirror it through etcd's Watch.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

from trionsm.api.registry import NetworkService, NetworkServiceEndpoint

from ._catalog import DEFAULT_WATCH_BUFFER, Catalog
from ._entry import Entry
from ._match import endpoint_matches, service_matches

__all__ = ["ENDPOINT", "SERVICE", "MemoryStore", "Store", "make_catalogs"]

ENDPOINT = "endpoint"
SERVICE = "service"


def make_catalogs(
    *, watch_buffer: int = DEFAULT_WATCH_BUFFER, hop: str = "registry"
) -> tuple[Catalog[NetworkServiceEndpoint], Catalog[NetworkService]]:
    """The endpoint and service catalogs with NSM's Find rules."""
    endpoints: Catalog[NetworkServiceEndpoint] = Catalog(
        ENDPOINT,
        name_of=lambda nse: nse.name,
        services_of=lambda nse: nse.network_service_names,
        query_services=lambda query: query.network_service_names,
        query_name=lambda query: query.name,
        matches=endpoint_matches,
        watch_buffer=watch_buffer,
        hop=hop,
    )
    services: Catalog[NetworkService] = Catalog(
        SERVICE,
        name_of=lambda ns: ns.name,
        services_of=lambda ns: (),
        query_services=lambda query: (),
        query_name=lambda query: query.name,
        matches=service_matches,
        watch_buffer=watch_buffer,
        hop=hop,
    )
    return endpoints, services


class Store(Protocol):
    """What the registry needs from a store (all writes are made with the name's lock held)."""

    endpoints: Catalog[NetworkServiceEndpoint]
    services: Catalog[NetworkService]
    local: bool
    """True when this replica is the only writer (its entries own every registration)."""

    @property
    def description(self) -> str:
        """``memory`` or the store's URL, for status and errors."""
        ...

    def catalog(self, kind: str) -> Catalog[Any]:
        """The catalog of ``kind`` (ENDPOINT or SERVICE)."""
        ...

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the store's tasks (etcd: its Watch); ``started()`` once the catalogs are loaded."""
        ...

    async def sync(self) -> None:
        """Return once the catalogs show every write committed before the call."""
        ...

    async def put(self, kind: str, value: Any, entry: Entry) -> None:
        """Store ``value`` (replacing any previous value) for ``entry``, visible on return."""
        ...

    async def delete(self, kind: str, name: str) -> None:
        """Remove ``name`` (absent is fine), visible on return."""
        ...

    async def expire(self, kind: str, entry: Entry) -> None:
        """Remove ``entry``'s registration if it is still the one ``entry`` wrote."""
        ...


class MemoryStore:
    """Registrations in this process only: the catalogs are the storage."""

    local = True

    def __init__(self, *, watch_buffer: int = DEFAULT_WATCH_BUFFER, hop: str = "registry") -> None:
        self.endpoints, self.services = make_catalogs(watch_buffer=watch_buffer, hop=hop)

    @property
    def description(self) -> str:
        return "memory"

    def catalog(self, kind: str) -> Catalog[Any]:
        return self.endpoints if kind == ENDPOINT else self.services

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.endpoints.close_watchers("the registry stopped")
            self.services.close_watchers("the registry stopped")

    async def sync(self) -> None:
        return

    async def put(self, kind: str, value: Any, entry: Entry) -> None:
        entry.token = value
        self.catalog(kind).put(value)

    async def delete(self, kind: str, name: str) -> None:
        self.catalog(kind).delete(name)

    async def expire(self, kind: str, entry: Entry) -> None:
        catalog = self.catalog(kind)
        if catalog.get(entry.name) is entry.token:
            catalog.delete(entry.name)
