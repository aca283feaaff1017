"""What the server roles share at run time: the connection supervisor, peers, registry lookups.

Each role (nsmgr, forwarder, endpoint) runs a supervised tree whose first children are the
``connections`` supervisor (SIMPLE_ONE_FOR_ONE ServerConnection actors) and, for roles with next
hops, ``peers`` (the clients and monitor streams to the next hops). :func:`serve_connections` and
:func:`serve_peers` are those children. :func:`find_service` and :func:`find_endpoints` read the
registry (a client to a registry or an nsmgr) for discovery.
"""

from __future__ import annotations

from typing import Any

import trio

from trionsm.api.connection import Connection
from trionsm.api.registry import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceQuery,
)
from trionsm.identity import client_metadata
from trionsm.supervision import Strategy, open_supervisor
from trionsm.transport import Client

from ._connection import CLOSE_TIMEOUT, NextHop, ServerHop
from ._peers import Peers
from ._querycache import QueryCache

__all__ = [
    "Discovery",
    "close_at",
    "find_endpoints",
    "find_service",
    "serve_connections",
    "serve_peers",
    "token_metadata",
]

CONNECTION_INTENSITY = 100
"""Restarts the connection supervisor tolerates per second (its children are TEMPORARY)."""


async def serve_connections(hop: ServerHop, *, task_status: trio.TaskStatus[Any]) -> None:
    """The ``connections`` child: a SIMPLE_ONE_FOR_ONE supervisor of the hop's connections."""
    async with open_supervisor(
        [hop.connection_spec()],
        strategy=Strategy.SIMPLE_ONE_FOR_ONE,
        intensity=CONNECTION_INTENSITY,
        period=1.0,
        name="connections",
    ) as supervisor:
        hop.attach(supervisor)
        try:
            task_status.started(supervisor)
            await trio.sleep_forever()
        finally:
            hop.attach(None)
            hop.hub.close(f"{hop.name} stopped")


async def serve_peers(
    hop: ServerHop, options: dict[str, Any], *, task_status: trio.TaskStatus[Any]
) -> None:
    """The ``peers`` child: clients and monitor streams to the hop's next hops."""
    async with trio.open_nursery() as nursery:
        hop.peers = Peers(nursery, hop.name, **options)
        try:
            task_status.started(hop.peers)
            await trio.sleep_forever()
        finally:
            hop.peers = None


async def close_at(hop: ServerHop, next_hop: NextHop, connection: Connection) -> None:
    """Close ``connection`` at ``next_hop`` (one call, bounded by ``CLOSE_TIMEOUT``)."""
    if hop.peers is None:
        return
    client = await hop.peers.client(next_hop.url)
    await client.network_service.close(
        connection, timeout=CLOSE_TIMEOUT, metadata=token_metadata(hop)
    )


def token_metadata(hop: ServerHop) -> dict[str, str]:
    """NSM's per-RPC token metadata for a call from ``hop`` to its next hop."""
    return client_metadata(hop.tokens.issue())


class Discovery:
    """Registry look-ups for a role: from a :class:`QueryCache` once started, else direct."""

    def __init__(self) -> None:
        self.client: Client | None = None
        self.cache: QueryCache | None = None

    def start(self, nursery: trio.Nursery, client: Client) -> None:
        """Use ``client`` (the registry or the nsmgr's front), cached in ``nursery``."""
        self.client = client
        self.cache = QueryCache(nursery, client)

    async def service(self, name: str, *, bound: float) -> NetworkService | None:
        if self.cache is not None:
            return await self.cache.service(name)
        assert self.client is not None
        return await find_service(self.client, name, bound=bound)

    async def endpoints(
        self, query: NetworkServiceEndpoint, *, bound: float
    ) -> list[NetworkServiceEndpoint]:
        if self.cache is not None:
            return await self.cache.endpoints(query)
        assert self.client is not None
        return await find_endpoints(self.client, query, bound=bound)


async def find_service(client: Client, name: str, *, bound: float) -> NetworkService | None:
    """The registered network service ``name``, or None (the Find bounded by ``bound`` s)."""
    query = NetworkServiceQuery(network_service=NetworkService(name=name))
    async with client.ns_registry.find(query, timeout=bound) as stream:
        async for response in stream:
            if response.network_service is not None and not response.deleted:
                return response.network_service
    return None


async def find_endpoints(
    client: Client, query: NetworkServiceEndpoint, *, bound: float
) -> list[NetworkServiceEndpoint]:
    """Every registered endpoint matching ``query`` (a Find without watch)."""
    found = []
    request = NetworkServiceEndpointQuery(network_service_endpoint=query)
    async with client.nse_registry.find(request, timeout=bound) as stream:
        async for response in stream:
            if response.network_service_endpoint is not None and not response.deleted:
                found.append(response.network_service_endpoint)
    return found
