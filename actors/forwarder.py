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

KERNEL (LOCAL) connections need a :class:`DataPlane` (``serve_forwarder`` opens one when
``mechanisms`` has KERNEL and none is given): the client's namespace is checked before any
endpoint is asked; the endpoint is asked for KERNEL (LOCAL preference) and, once it answers, the
veth wire between the two namespaces is made (``_dataplane``); the reply goes back with the
incoming mechanism's interface name and MTU filled in. A refresh keeps a wire that is still whole
(recreating one deleted behind our back); Close, expiry, reselect and a move to another endpoint
remove it. A failed wire closes the endpoint's connection and fails the Request with the kernel's
typed error (hop, service, wire, cause); nothing is left half-made. A KERNEL connection to an
endpoint on another node needs a REMOTE mechanism (VXLAN), not programmed yet: such candidates
fail with FailedPrecondition.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import trio

from trionsm.api.connection import Connection, Mechanism
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.api.registry import NetworkServiceEndpoint, NetworkServiceLabels
from trionsm.clock import Clock
from trionsm.errors import FailedPrecondition, NotFound, TrionsmError
from trionsm.identity import JwtTokenProvider, TokenProvider
from trionsm.supervision import ChildSpec, ChildType, Strategy, Supervisor, open_supervisor
from trionsm.transport import HEALTH, MONITOR_CONNECTION, NETWORK_SERVICE, serve

from ._connection import CLOSE_TIMEOUT, NextHop, ServerConnection, ServerHop
from ._dataplane import DataPlane, Wire, open_dataplane
from ._health import Health
from ._mechanisms import (
    KERNEL,
    LOCAL,
    NOOP,
    REMOTE,
    Param,
    is_local_url,
    kernel_mechanism,
    negotiate,
    noop_mechanism,
    with_parameters,
)
from ._role import Discovery, close_at, serve_connections, serve_peers, token_metadata
from ._select import RoundRobin, all_failed_error, drop_expired, select_endpoints
from .lease import Lease, serve_lease

__all__ = [
    "FORWARDER_LABELS",
    "FORWARDER_SERVICE",
    "DataPlane",
    "Forwarder",
    "ForwarderHandle",
    "open_dataplane",
    "serve_forwarder",
]

FORWARDER_SERVICE = "forwarder"
FORWARDER_LABELS = {"p2p": "true"}


class Forwarder(ServerHop):
    """The forwarder's per-request logic on top of the shared server hop.

    Args:
        name: its name (path segment and registration).
        mechanisms: the mechanism types it can program (KERNEL needs ``dataplane``).
        remote: decides whether a next hop URL is on another node (default: by URL scheme).
        dataplane: programs KERNEL wires (None: KERNEL connections are refused).
    """

    def __init__(
        self,
        name: str,
        *,
        tokens: TokenProvider,
        mechanisms: Sequence[str] = (NOOP,),
        remote: Any = None,
        clock: Clock | None = None,
        dataplane: DataPlane | None = None,
    ) -> None:
        super().__init__(name, tokens, clock=clock)
        self.mechanisms = tuple(mechanisms)
        self.dataplane = dataplane
        self.round_robin = RoundRobin()
        self.registry: Any = None  # a Client to the nsmgr's registry front
        self.discovery = Discovery()  # cached look-ups through it
        self._remote = remote or (lambda url: not is_local_url(url))

    def _outgoing_preferences(self, url: str, incoming: Mechanism, service: str) -> list[Mechanism]:
        remote = self._remote(url)
        if incoming.type == KERNEL:
            if remote:
                raise FailedPrecondition(
                    "a KERNEL connection to an endpoint on another node needs a REMOTE "
                    "mechanism (VXLAN), which this forwarder does not program yet",
                    hop=self.name,
                    service=service,
                )
            return [kernel_mechanism()]
        return [noop_mechanism(REMOTE if remote else LOCAL)] if NOOP in self.mechanisms else []

    async def _check_kernel(self, incoming: Mechanism, service: str) -> DataPlane:
        if self.dataplane is None:
            raise FailedPrecondition(
                "this forwarder has no data plane for KERNEL connections",
                hop=self.name,
                service=service,
            )
        await self.dataplane.check_client(incoming, hop=self.name, service=service)
        return self.dataplane

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
        dataplane = await self._check_kernel(incoming, service) if incoming.type == KERNEL else None
        candidates = await self._candidates(connection, actor.remaining())
        failures: list[tuple[str, BaseException]] = []
        for endpoint in candidates:
            same = actor.state.get("endpoint") == endpoint.name
            try:
                outgoing = NetworkServiceRequest(
                    connection=dataclasses.replace(
                        connection,
                        network_service_endpoint_name=endpoint.name,
                        mechanism=actor.state.get("mechanism") if same else None,
                    ),
                    mechanism_preferences=self._outgoing_preferences(
                        endpoint.url, incoming, service
                    ),
                )
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
                # Best effort: the old endpoint is usually why we moved (dead); it expires anyway.
                with trio.move_on_after(CLOSE_TIMEOUT), contextlib.suppress(TrionsmError):
                    await self._remove_wire(actor)
                    await self._close_at(actor.next, actor)
            if dataplane is not None:
                incoming = await self._plumb(dataplane, actor, incoming, reply, endpoint.url)
            actor.state["endpoint"] = endpoint.name
            actor.state["mechanism"] = reply.mechanism
            assert reply.path is not None
            next_id = reply.path.path_segments[connection.path.index + 1].id
            actor.follow(NextHop(endpoint.url, next_id, endpoint.name))
            return dataclasses.replace(reply, mechanism=incoming)
        raise all_failed_error(service, failures, hop=self.name)

    async def _plumb(
        self,
        dataplane: DataPlane,
        actor: ServerConnection,
        incoming: Mechanism,
        reply: Connection,
        url: str,
    ) -> Mechanism:
        """Make (or keep) the connection's wire; returns the incoming mechanism as made.

        On failure the endpoint's connection is closed and the connection forgets its endpoint,
        then the error propagates (nothing of the new wire remains).
        """
        service = reply.network_service
        try:
            spec = dataplane.plan(
                actor.id, incoming, reply.mechanism, reply.context, hop=self.name, service=service
            )
            wire: Wire = await dataplane.ensure(
                actor.state.pop("wire", None), spec, hop=self.name, service=service
            )
        except BaseException:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await self._abandon(actor, url, reply)
            raise
        actor.state["wire"] = wire
        made = {Param.NAME: wire.spec.client_ifname}
        if wire.spec.mtu:
            made[Param.MTU] = str(wire.spec.mtu)
        return with_parameters(incoming, made)

    async def _abandon(self, actor: ServerConnection, url: str, reply: Connection) -> None:
        """Close the endpoint's connection ``reply`` (best effort) and forget the endpoint."""
        for key in ("endpoint", "mechanism"):
            actor.state.pop(key, None)
        actor.follow(None)
        if self.peers is None:
            return
        with contextlib.suppress(TrionsmError):
            client = await self.peers.client(url)
            await client.network_service.close(
                reply, timeout=CLOSE_TIMEOUT, metadata=token_metadata(self)
            )

    async def _remove_wire(self, actor: ServerConnection) -> None:
        wire = actor.state.pop("wire", None)
        if wire is not None and self.dataplane is not None:
            await self.dataplane.remove(wire, hop=self.name)

    async def _close_at(self, next_hop: NextHop, actor: ServerConnection) -> None:
        if actor.connection is not None:
            closing = dataclasses.replace(actor.connection, mechanism=actor.state.get("mechanism"))
            await close_at(self, next_hop, closing)

    async def close_downstream(self, actor: ServerConnection) -> None:
        try:
            await self._remove_wire(actor)
        finally:
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
    dataplane: DataPlane | None = None,
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
        mechanisms: the mechanism types it programs (``(KERNEL, NOOP)`` for veth wires).
        dataplane: programs the KERNEL wires (shared, not closed here); None with KERNEL in
            ``mechanisms``: the forwarder opens its own for as long as it runs.
        labels: its registration labels (default ``p2p=true``).
        remote: ``remote(url) -> bool``, whether a next hop is on another node (default: by
            scheme; in-process meshes tell it).
        client_options: for the clients to next hops and the nsmgr (``roundtrip_bytes``...).
        lease_options: for its registration lease.
        transport_options: for ``transport.serve``.
    """
    tokens = tokens or JwtTokenProvider(f"spiffe://trionsm.local/forwarder/{name}", clock=clock)
    async with _dataplane_for(mechanisms, dataplane) as chosen:
        forwarder = Forwarder(
            name,
            tokens=tokens,
            mechanisms=mechanisms,
            remote=remote,
            clock=clock,
            dataplane=chosen,
        )
        await _serve(
            forwarder,
            url,
            nsmgr=nsmgr,
            labels=labels,
            public_url=public_url,
            client_options=client_options,
            lease_options=lease_options,
            task_status=task_status,
            **transport_options,
        )


@asynccontextmanager
async def _dataplane_for(
    mechanisms: Sequence[str], dataplane: DataPlane | None
) -> AsyncIterator[DataPlane | None]:
    if dataplane is not None or KERNEL not in mechanisms:
        yield dataplane
        return
    async with open_dataplane() as owned:
        yield owned


async def _serve(
    forwarder: Forwarder,
    url: str,
    *,
    nsmgr: str,
    labels: Mapping[str, str] | None,
    public_url: str | None,
    client_options: Mapping[str, Any] | None,
    lease_options: Mapping[str, Any] | None,
    task_status: trio.TaskStatus[ForwarderHandle],
    **transport_options: Any,
) -> None:
    name = forwarder.name
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
