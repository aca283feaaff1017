"""What the server roles share at run time: the connection supervisor, peers, registry lookups.

Each role (nsmgr, forwarder, endpoint) runs a supervised tree (:func:`open_role`, REST_FOR_ONE:
each child depends on the ones before it) whose first children (:func:`hop_children`) are the
``connections`` supervisor (SIMPLE_ONE_FOR_ONE ServerConnection actors) and, for roles with next
hops, ``peers`` (the clients and monitor streams to the next hops); its ``server`` child serves
the role's handlers on every URL (:func:`serve_urls`). Per Request, a role with next hops asks
its candidates in turn (:func:`first_answer`, each call through :func:`request_at`).
:func:`find_service` and :func:`find_endpoints` read the registry (a client to a registry or an
nsmgr) for discovery.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final, TypeVar

import trio

from trionsm.api.connection import Connection
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.api.registry import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceQuery,
)
from trionsm.errors import TrionsmError
from trionsm.identity import client_metadata
from trionsm.supervision import ChildSpec, ChildType, Strategy, Supervisor, open_supervisor
from trionsm.transport import Client, serve

from ._connection import CLOSE_TIMEOUT, NextHop, ServerConnection, ServerHop
from ._peers import Peers
from ._querycache import QueryCache
from ._select import all_failed_error

__all__ = [
    "Discovery",
    "OnStarted",
    "close_at",
    "find_endpoints",
    "find_service",
    "first_answer",
    "hop_children",
    "open_role",
    "request_at",
    "serve_connections",
    "serve_peers",
    "serve_urls",
    "token_metadata",
]

CONNECTION_INTENSITY = 100
"""Restarts the connection supervisor tolerates per second (its children are TEMPORARY)."""
ROLE_INTENSITY: Final = 3
ROLE_PERIOD: Final = 30.0
"""A role's tree gives up after more than 3 restarts in 30 s (its process then exits)."""

C = TypeVar("C")


@asynccontextmanager
async def open_role(name: str, children: Sequence[ChildSpec]) -> AsyncIterator[Supervisor]:
    """A role's supervised tree (REST_FOR_ONE, :data:`ROLE_INTENSITY` in :data:`ROLE_PERIOD`)."""
    async with open_supervisor(
        children,
        strategy=Strategy.REST_FOR_ONE,
        intensity=ROLE_INTENSITY,
        period=ROLE_PERIOD,
        name=name,
    ) as supervisor:
        yield supervisor


def hop_children(
    hop: ServerHop, client_options: Mapping[str, Any] | None = None
) -> list[ChildSpec]:
    """A role's first children: ``connections`` and, given ``client_options`` (a role with next
    hops), ``peers``."""
    children = [
        ChildSpec("connections", partial(serve_connections, hop), type=ChildType.SUPERVISOR)
    ]
    if client_options is not None:
        children.append(ChildSpec("peers", partial(serve_peers, hop, dict(client_options))))
    return children


async def serve_urls(
    nursery: trio.Nursery,
    urls: Sequence[str],
    handlers: Mapping[Any, Any],
    *,
    hop: str,
    **transport_options: Any,
) -> list[Any]:
    """Serve ``handlers`` on each of ``urls`` in ``nursery``; the servers, once all listen."""
    return [
        await nursery.start(partial(serve, url, handlers, hop=hop, **transport_options))
        for url in urls
    ]


class OnStarted:
    """A task status that calls ``callback(value)`` (which passes ``started`` on)."""

    def __init__(self, callback: Callable[[Any], None]) -> None:
        self._callback = callback

    def started(self, value: Any = None) -> None:
        self._callback(value)


async def request_at(
    hop: ServerHop, actor: ServerConnection, url: str, request: NetworkServiceRequest
) -> Connection:
    """Send ``request`` to the next hop at ``url``, within what is left of the actor's Request."""
    assert hop.peers is not None
    client = await hop.peers.client(url)
    reply: Connection = await client.network_service.request(
        request, timeout=actor.remaining(), metadata=token_metadata(hop)
    )
    return reply


async def first_answer(
    hop: ServerHop,
    candidates: Sequence[C],
    ask: Callable[[C], Awaitable[Connection]],
    *,
    service: str,
    kind: str = "endpoint",
) -> tuple[C, Connection]:
    """Ask each candidate in turn (``ask(candidate)``); the first that answers, and its answer.

    Raises:
        TrionsmError: every candidate failed (:func:`all_failed_error`: each one named, with
            its error).
    """
    failures: list[tuple[str, BaseException]] = []
    for candidate in candidates:
        try:
            return candidate, await ask(candidate)
        except TrionsmError as exc:
            failures.append((getattr(candidate, "name", str(candidate)), exc))
    raise all_failed_error(service, failures, hop=hop.name, kind=kind)


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
