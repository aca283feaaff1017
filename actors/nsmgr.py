"""The nsmgr: the node's front door. Picks the forwarder; serves the registry for its node.

``serve_nsmgr`` runs an nsmgr as a supervised tree::

    nsmgr <name> (REST_FOR_ONE)
    ├── registry        embedded memory registry (only when the node has no registry URL)
    ├── connections     SIMPLE_ONE_FOR_ONE ServerConnection per connection id (TEMPORARY)
    ├── peers           clients and monitor streams to the forwarders and the registry
    └── server          NetworkService + MonitorConnection + both registry APIs (+ Health)

Per Request: find this node's forwarders (registered here as service ``forwarder``), keep those
the network service's match metadata selects (default ``p2p=true``), prefer the one this
connection used (remembered per connection, else the one named on the path, so it survives an
nsmgr restart and a reselect keeps a forwarder that still works, as NSM's ``discoverforwarder``
does) and call them in turn until one answers. A restarted nsmgr knows no local URL until its
forwarders re-register (they do at once when their registry watch breaks); when the path names
a forwarder the registry still lists under this nsmgr, the Request waits up to
:data:`STICKY_GRACE` for it rather than moving the connection to another forwarder. With no
forwarder: Unavailable naming the node. Registrations from this node's endpoints and forwarders
go upstream under the nsmgr's public URL (NSM's ``localbypass``).

After each successful Request the nsmgr watches the network service while the connection lives
here and closes the connection when its endpoint no longer matches (``_netsvcmonitor``: one
watch per service in use, shared by its connections).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
import trio

from trionsm.api.connection import Connection
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.api.registry import NetworkServiceEndpoint
from trionsm.clock import Clock
from trionsm.errors import InvalidArgument, Unavailable
from trionsm.identity import JwtTokenProvider, TokenProvider
from trionsm.supervision import ChildSpec, ChildType, Supervisor
from trionsm.transport import HEALTH, MONITOR_CONNECTION, NETWORK_SERVICE

from ._connection import NextHop, ServerConnection, ServerHop
from ._health import Health
from ._localbypass import LocalBypass, localbypass_handlers
from ._mechanisms import is_local_url
from ._netsvcmonitor import NetworkServiceMonitor
from ._role import (
    Discovery,
    close_at,
    first_answer,
    hop_children,
    open_role,
    request_at,
    serve_urls,
)
from ._select import drop_expired, prefer_named, select_forwarders
from .forwarder import FORWARDER_SERVICE
from .registry import serve_registry

__all__ = ["STICKY_GRACE", "Nsmgr", "NsmgrHandle", "serve_nsmgr"]

STICKY_GRACE: Final = 5.0
"""Seconds a Request waits for the path's forwarder to re-register at a restarted nsmgr."""


class Nsmgr(ServerHop):
    """The nsmgr's per-request logic: forwarder selection on top of the shared server hop."""

    def __init__(self, name: str, *, tokens: TokenProvider, clock: Clock | None = None) -> None:
        super().__init__(name, tokens, clock=clock)
        self.bypass: LocalBypass | None = None
        self.registry: Any = None  # the upstream registry client
        self.discovery = Discovery()  # cached look-ups through it
        self.services: NetworkServiceMonitor | None = None  # netsvcmonitor, once serving

    async def _forwarders(
        self, connection: Connection, sticky: str | None, bound: float
    ) -> list[Any]:
        bypass = self.bypass
        if bypass is None or self.registry is None:
            raise Unavailable("the nsmgr is starting", hop=self.name)
        query = NetworkServiceEndpoint(network_service_names=[FORWARDER_SERVICE])
        found = drop_expired(
            await self.discovery.endpoints(query, bound=bound), self.clock.timestamp()
        )
        ours = [f for f in found if f.url == bypass.public_url]
        if sticky and any(f.name == sticky for f in ours) and bypass.local_url(sticky) is None:
            # Registered here before this nsmgr (re)started: give it time to re-register.
            await bypass.wait_local(sticky, min(STICKY_GRACE, bound / 2))
        local = []
        for forwarder in ours:
            real = bypass.local_url(forwarder.name)
            if real is not None:
                local.append(dataclasses.replace(forwarder, url=real))
        if not local:
            raise Unavailable(
                f"no forwarder is registered on this node ({self.name})",
                hop=self.name,
                service=connection.network_service,
            )
        ns = await self.discovery.service(connection.network_service, bound=bound)
        chosen = select_forwarders(
            connection.network_service, connection.labels, ns, local, hop=self.name
        )
        return prefer_named(chosen, sticky)

    async def forward(self, actor: ServerConnection, request: NetworkServiceRequest) -> Connection:
        connection = request.connection
        assert connection is not None
        assert connection.path is not None
        index = connection.path.index
        segments = connection.path.path_segments
        sticky = actor.state.get("forwarder")
        if sticky is None and len(segments) > index + 1:
            sticky = segments[index + 1].name  # the forwarder this path used (before a restart)
        candidates = await self._forwarders(connection, sticky, actor.remaining())
        forwarder, reply = await first_answer(
            self,
            candidates,
            lambda forwarder: request_at(self, actor, forwarder.url, request),
            service=connection.network_service,
            kind="forwarder",
        )
        actor.state["forwarder"] = forwarder.name
        assert reply.path is not None
        next_id = reply.path.path_segments[index + 1].id
        actor.follow(NextHop(forwarder.url, next_id, forwarder.name))
        return reply

    def established(self, actor: ServerConnection, request: NetworkServiceRequest) -> None:
        """Watch the network service while the connection lives here (``netsvcmonitor``)."""
        connection = actor.connection
        if self.services is None or connection is None or request.connection is None:
            return
        if not connection.network_service_endpoint_name:
            return
        self.services.subscribe(
            actor.id,
            connection.network_service,
            connection.network_service_endpoint_name,
            request.connection.labels,
            actor.revoke,
        )

    async def close_downstream(self, actor: ServerConnection) -> None:
        if actor.next is not None and actor.connection is not None:
            await close_at(self, actor.next, actor.connection)

    def forget(self, actor: ServerConnection) -> None:
        actor.state.pop("forwarder", None)
        if self.services is not None:
            self.services.unsubscribe(actor.id)

    def release(self, actor: ServerConnection) -> None:
        if self.services is not None:
            self.services.unsubscribe(actor.id)


@attrs.frozen(eq=False)
class NsmgrHandle:
    """A running nsmgr: ``url`` (the first bound), ``public_url``, ``nsmgr`` (logic),
    ``supervisor``, ``urls`` (every bound URL, in the order given)."""

    name: str
    url: str
    public_url: str
    nsmgr: Nsmgr
    supervisor: Supervisor
    urls: tuple[str, ...] = ()


async def serve_nsmgr(
    name: str,
    url: str | Sequence[str],
    *,
    registry: str | None = None,
    public_url: str | None = None,
    tokens: TokenProvider | None = None,
    clock: Clock | None = None,
    client_options: Mapping[str, Any] | None = None,
    registry_options: Mapping[str, Any] | None = None,
    task_status: trio.TaskStatus[NsmgrHandle] = trio.TASK_STATUS_IGNORED,
    **transport_options: Any,
) -> None:
    """Run the nsmgr ``name`` on ``url`` until cancelled (see the module docstring).

    Args:
        name: its name (path segment).
        url: where it serves NetworkService, MonitorConnection and the registry APIs: one URL
            or several (a unix socket for the node's workloads and a TCP port for other nodes).
        registry: the registry URL; None embeds an in-memory registry for this node alone.
        public_url: the URL other nodes dial (registered for local endpoints; default: the
            first bound URL that is not node-local, e.g. ``tcp://``, else the first).
        client_options: for clients to forwarders and the registry (``roundtrip_bytes``...).
        registry_options: for the embedded registry (``expiry``...).
        transport_options: for ``transport.serve``.
    """
    nsmgr = Nsmgr(
        name,
        tokens=tokens or JwtTokenProvider(f"spiffe://trionsm.local/nsmgr/{name}", clock=clock),
        clock=clock,
    )
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise InvalidArgument("serve_nsmgr needs at least one URL to listen on", hop=name)
    options = dict(client_options or {})
    bound: list[str] = []
    upstream = {"url": registry}

    async def run_registry(*, task_status: trio.TaskStatus[Any]) -> None:
        embedded = f"inproc://{name}-registry-{id(nsmgr):x}"
        upstream["url"] = embedded
        await serve_registry(
            embedded,
            hop=f"{name}/registry",
            task_status=task_status,
            **dict(registry_options or {}),
        )

    async def run_server(*, task_status: trio.TaskStatus[Any]) -> None:
        assert nsmgr.peers is not None
        assert upstream["url"] is not None
        nsmgr.registry = await nsmgr.peers.client(upstream["url"])
        async with trio.open_nursery() as nursery:
            nsmgr.discovery.start(nursery, nsmgr.registry)
            nsmgr.services = NetworkServiceMonitor(nursery, nsmgr.registry)
            handlers: dict[Any, Any] = {
                NETWORK_SERVICE: nsmgr,
                MONITOR_CONNECTION: nsmgr,
                HEALTH: Health(),
            }
            # The bypass needs the public URL, known once bound: start with the given one.
            bypass = LocalBypass(public_url or urls[0], nsmgr.registry, hop=name)
            handlers.update(localbypass_handlers(bypass, nsmgr.registry))
            servers = await serve_urls(nursery, urls, handlers, hop=name, **transport_options)
            bound[:] = [server.url for server in servers]
            if public_url is None:
                bypass.public_url = next((u for u in bound if not is_local_url(u)), bound[0])
            nsmgr.bypass = bypass
            task_status.started(servers[0])

    children = []
    if registry is None:
        children.append(ChildSpec("registry", run_registry, type=ChildType.SUPERVISOR))
    children += [*hop_children(nsmgr, options), ChildSpec("server", run_server)]
    async with open_role(name, children) as supervisor:
        assert nsmgr.bypass is not None
        task_status.started(
            NsmgrHandle(name, bound[0], nsmgr.bypass.public_url, nsmgr, supervisor, tuple(bound))
        )
        await trio.sleep_forever()
