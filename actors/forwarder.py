"""The forwarder: picks the endpoint, negotiates the mechanisms, programs the data plane.

``serve_forwarder`` runs a forwarder as a supervised tree::

    forwarder <name> (REST_FOR_ONE)
    ├── connections     SIMPLE_ONE_FOR_ONE ServerConnection per connection id (TEMPORARY)
    ├── peers           clients and monitor streams to next hops (endpoints, remote nsmgrs)
    ├── server          NetworkService + MonitorConnection (+ Health)
    └── lease           registered at its nsmgr as service ``forwarder``, label ``p2p=true``

Per Request (NSM's forwarder chain, as pure steps around one call): negotiate the incoming
mechanism; discover the candidates: the endpoint named in the request (a refresh or heal without
reselect), else the network service and its endpoints through the nsmgr's registry, dropping
expired ones and applying the NS's matches (selectors, templates, fallthrough); order them round
robin per service; call each in turn with this forwarder's own mechanism preferences for the
outgoing hop (LOCAL towards a local endpoint, REMOTE towards another node's nsmgr) until one
answers. The reply goes back with the incoming mechanism. Errors name every candidate tried and
why it failed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import attrs
import trio

from trionsm.api.connection import Connection, Mechanism
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.api.registry import NetworkServiceEndpoint, NetworkServiceLabels
from trionsm.clock import Clock
from trionsm.errors import NotFound, TrionsmError
from trionsm.identity import JwtTokenProvider, TokenProvider
from trionsm.supervision import ChildSpec, ChildType, Strategy, Supervisor, open_supervisor
from trionsm.transport import HEALTH, MONITOR_CONNECTION, NETWORK_SERVICE, serve

from ._connection import NextHop, ServerConnection, ServerHop
from ._health import Health
from ._mechanisms import LOCAL, NOOP, REMOTE, is_local_url, negotiate, noop_mechanism
from ._role import Discovery, serve_connections, serve_peers, token_metadata
from ._select import RoundRobin, all_failed_error, drop_expired, select_endpoints
from .lease import Lease, serve_lease

__all__ = [
    "FORWARDER_LABELS",
    "FORWARDER_SERVICE",
    "Forwarder",
    "ForwarderHandle",
    "serve_forwarder",
]

FORWARDER_SERVICE = "forwarder"
FORWARDER_LABELS = {"p2p": "true"}


class Forwarder(ServerHop):
    """The forwarder's per-request logic on top of the shared server hop.

    Args:
        name: its name (path segment and registration).
        mechanisms: the mechanism types it can program (``NOOP`` until a data plane is given).
        remote: decides whether a next hop URL is on another node (default: by URL scheme).
    """

    def __init__(
        self,
        name: str,
        *,
        tokens: TokenProvider,
        mechanisms: Sequence[str] = (NOOP,),
        remote: Any = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name, tokens, clock=clock)
        self.mechanisms = tuple(mechanisms)
        self.round_robin = RoundRobin()
        self.registry: Any = None  # a Client to the nsmgr's registry front
        self.discovery = Discovery()  # cached look-ups through it
        self._remote = remote or (lambda url: not is_local_url(url))

    def _outgoing_preferences(self, url: str) -> list[Mechanism]:
        cls = REMOTE if self._remote(url) else LOCAL
        return [noop_mechanism(cls)] if NOOP in self.mechanisms else []

    async def _candidates(self, connection: Connection, bound: float) -> list[Any]:
        service = connection.network_service
        if self.registry is None:
            raise NotFound("the forwarder has no registry yet", hop=self.name, service=service)
        now = self.clock.timestamp()
        if connection.network_service_endpoint_name:
            named = await self.discovery.endpoints(
                NetworkServiceEndpoint(name=connection.network_service_endpoint_name),
                bound=bound,
            )
            named = drop_expired(named, now)
            if named:
                return named
            raise NotFound(
                f"endpoint {connection.network_service_endpoint_name!r} asked for by name is not "
                "registered (or expired)",
                hop=self.name,
                service=service,
            )
        ns = await self.discovery.service(service, bound=bound)
        if ns is None:
            raise NotFound(
                f"network service {service!r} is not registered", hop=self.name, service=service
            )
        endpoints = await self.discovery.endpoints(
            NetworkServiceEndpoint(network_service_names=[service]), bound=bound
        )
        endpoints = drop_expired(endpoints, now)
        chosen = select_endpoints(service, connection.labels, ns, endpoints, hop=self.name)
        return self.round_robin.order(service, chosen)

    async def forward(self, actor: ServerConnection, request: NetworkServiceRequest) -> Connection:
        connection = request.connection
        assert connection is not None
        assert connection.path is not None
        service = connection.network_service
        incoming = negotiate(
            connection.mechanism,
            request.mechanism_preferences,
            self.mechanisms,
            hop=self.name,
            service=service,
        )
        candidates = await self._candidates(connection, actor.remaining())
        failures: list[tuple[str, BaseException]] = []
        for endpoint in candidates:
            same = actor.state.get("endpoint") == endpoint.name
            outgoing = NetworkServiceRequest(
                connection=dataclasses.replace(
                    connection,
                    network_service_endpoint_name=endpoint.name,
                    mechanism=actor.state.get("mechanism") if same else None,
                ),
                mechanism_preferences=self._outgoing_preferences(endpoint.url),
            )
            try:
                assert self.peers is not None
                client = await self.peers.client(endpoint.url)
                reply = await client.network_service.request(
                    outgoing, timeout=actor.remaining(), metadata=token_metadata(self)
                )
            except TrionsmError as exc:
                failures.append((endpoint.name, exc))
                continue
            if same or "endpoint" not in actor.state:
                pass
            elif actor.next is not None:  # moved to another endpoint: close the old one
                await self._close_at(actor.next, actor)
            actor.state["endpoint"] = endpoint.name
            actor.state["mechanism"] = reply.mechanism
            assert reply.path is not None
            next_id = reply.path.path_segments[connection.path.index + 1].id
            actor.follow(NextHop(endpoint.url, next_id, endpoint.name))
            return dataclasses.replace(reply, mechanism=incoming)
        raise all_failed_error(service, failures, hop=self.name)

    async def _close_at(self, next_hop: NextHop, actor: ServerConnection) -> None:
        if self.peers is None or actor.connection is None:
            return
        client = await self.peers.client(next_hop.url)
        closing = dataclasses.replace(actor.connection, mechanism=actor.state.get("mechanism"))
        await client.network_service.close(
            closing, timeout=actor.remaining(), metadata=token_metadata(self)
        )

    async def close_downstream(self, actor: ServerConnection) -> None:
        if actor.next is not None:
            await self._close_at(actor.next, actor)

    def forget(self, actor: ServerConnection) -> None:
        actor.state.pop("endpoint", None)
        actor.state.pop("mechanism", None)


@attrs.frozen(eq=False)
class ForwarderHandle:
    """A running forwarder: ``url`` (bound), ``forwarder`` (logic), ``supervisor``, ``lease``."""

    name: str
    url: str
    forwarder: Forwarder
    supervisor: Supervisor
    lease: Lease[NetworkServiceEndpoint] | None


async def serve_forwarder(
    name: str,
    url: str,
    *,
    nsmgr: str,
    mechanisms: Sequence[str] = (NOOP,),
    labels: Mapping[str, str] | None = None,
    remote: Any = None,
    public_url: str | None = None,
    tokens: TokenProvider | None = None,
    clock: Clock | None = None,
    client_options: Mapping[str, Any] | None = None,
    lease_options: Mapping[str, Any] | None = None,
    task_status: trio.TaskStatus[ForwarderHandle] = trio.TASK_STATUS_IGNORED,
    **transport_options: Any,
) -> None:
    """Run the forwarder ``name`` on ``url``, registered at ``nsmgr``, until cancelled.

    Args:
        name: its name.
        url: where it serves.
        nsmgr: its nsmgr's URL (registration and discovery go through it).
        mechanisms: the mechanism types it programs.
        labels: its registration labels (default ``p2p=true``).
        remote: ``remote(url) -> bool``, whether a next hop is on another node (default: by
            scheme; in-process meshes tell it).
        client_options: for the clients to next hops and the nsmgr (``roundtrip_bytes``...).
        lease_options: for its registration lease.
        transport_options: for ``transport.serve``.
    """
    forwarder = Forwarder(
        name,
        tokens=tokens or JwtTokenProvider(f"spiffe://trionsm.local/forwarder/{name}", clock=clock),
        mechanisms=mechanisms,
        remote=remote,
        clock=clock,
    )
    options = dict(client_options or {})
    handlers = {NETWORK_SERVICE: forwarder, MONITOR_CONNECTION: forwarder, HEALTH: Health()}
    bound: dict[str, str] = {}
    leases: list[Lease[NetworkServiceEndpoint]] = []

    async def run_server(*, task_status: trio.TaskStatus[Any]) -> None:
        assert forwarder.peers is not None
        forwarder.registry = await forwarder.peers.client(nsmgr)
        async with trio.open_nursery() as nursery:
            forwarder.discovery.start(nursery, forwarder.registry)
            server = await nursery.start(
                partial(serve, url, handlers, hop=name, **transport_options)
            )
            bound["url"] = server.url
            task_status.started(server)

    async def run_lease(*, task_status: trio.TaskStatus[Any]) -> None:
        registration = NetworkServiceEndpoint(
            name=name,
            network_service_names=[FORWARDER_SERVICE],
            network_service_labels={
                FORWARDER_SERVICE: NetworkServiceLabels(labels=dict(labels or FORWARDER_LABELS))
            },
            url=public_url or bound["url"],
        )

        class _Status:
            def started(self, lease: Any = None) -> None:
                leases[:] = [lease]
                task_status.started(lease)

        status: Any = _Status()
        await serve_lease(
            nsmgr, registration, task_status=status, **{**options, **dict(lease_options or {})}
        )

    children = [
        ChildSpec("connections", partial(serve_connections, forwarder), type=ChildType.SUPERVISOR),
        ChildSpec("peers", partial(serve_peers, forwarder, options)),
        ChildSpec("server", run_server),
        ChildSpec("lease", run_lease),
    ]
    async with open_supervisor(
        children, strategy=Strategy.REST_FOR_ONE, intensity=3, period=30.0, name=name
    ) as supervisor:
        task_status.started(ForwarderHandle(name, bound["url"], forwarder, supervisor, leases[0]))
        await trio.sleep_forever()
