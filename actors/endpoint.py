"""The endpoint (NSE): serves a network service, hands out addresses, stays registered.

``serve_endpoint`` runs an NSE as a supervised tree::

    endpoint <name> (REST_FOR_ONE)
    ├── connections     SIMPLE_ONE_FOR_ONE ServerConnection per connection id (TEMPORARY)
    ├── server          NetworkService + MonitorConnection (+ Health) on the endpoint's URL
    └── lease           keeps the registration alive at the nsmgr or registry (TRANSIENT)

Per Request (the chain of pure steps): the mechanism is negotiated against the types this endpoint
accepts; point-to-point IPAM gives the pair of addresses (recovered from the request after an
endpoint restart; the request's ``excluded_prefixes`` honoured) with the routes to each other;
DNS configs and labels are added; the path is trimmed after this hop. A connection whose previous
hop stops refreshing is closed at ``previous segment expiry - request timeout``.

For a KERNEL request the chosen mechanism names the endpoint's side of the wire: its network
namespace (``inodeURL``, the ``netns`` it serves in), its interface name, picked by the
endpoint (``nsm-`` and a hash of the connection id, the same on every refresh) unless the
request names one, and its ``mtu`` if it has one (the wire takes the smallest asked for). The
forwarder makes the wire; an endpoint without ``netns`` refuses KERNEL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import trio

from trionsm.api.connection import Connection, Mechanism
from trionsm.api.connectioncontext import ConnectionContext, DnsConfig, DnsContext
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.api.registry import NetworkServiceEndpoint, NetworkServiceLabels
from trionsm.clock import Clock
from trionsm.errors import FailedPrecondition
from trionsm.identity import JwtTokenProvider, TokenProvider
from trionsm.supervision import (
    ChildSpec,
    Supervisor,
)
from trionsm.transport import HEALTH, MONITOR_CONNECTION, NETWORK_SERVICE

from ._connection import ServerConnection, ServerHop
from ._health import Health
from ._ipam import PointToPointIpam
from ._mechanisms import (
    KERNEL,
    NOOP,
    Param,
    check_interface_name,
    endpoint_interface_name,
    negotiate,
    with_parameters,
)
from ._path import trim_path
from ._role import OnStarted, hop_children, open_role, serve_urls
from .lease import Lease, serve_lease

__all__ = ["DEFAULT_ENDPOINT_MECHANISMS", "Endpoint", "EndpointHandle", "serve_endpoint"]

DEFAULT_ENDPOINT_MECHANISMS = (KERNEL, NOOP)


class Endpoint(ServerHop):
    """The endpoint's per-request logic (pure steps) on top of the shared server hop."""

    def __init__(
        self,
        name: str,
        *,
        cidrs: Sequence[str],
        mechanisms: Sequence[str] = DEFAULT_ENDPOINT_MECHANISMS,
        labels: Mapping[str, str] | None = None,
        dns: Sequence[DnsConfig] = (),
        tokens: TokenProvider,
        clock: Clock | None = None,
        netns: str | None = None,
        strict_ipam: bool = False,
        mtu: int | None = None,
    ) -> None:
        super().__init__(name, tokens, clock=clock)
        self.netns = netns
        self.mtu = mtu
        self.ipam = PointToPointIpam(cidrs, hop=name, strict=strict_ipam) if cidrs else None
        self.mechanisms = tuple(mechanisms)
        self.labels = dict(labels or {})
        self.dns = list(dns)

    async def forward(self, actor: ServerConnection, request: NetworkServiceRequest) -> Connection:
        connection = request.connection
        assert connection is not None
        mechanism = negotiate(
            connection.mechanism,
            request.mechanism_preferences,
            self.mechanisms,
            hop=self.name,
            service=connection.network_service,
        )
        if mechanism.type == KERNEL:
            mechanism = self._kernel_end(actor.id, mechanism, connection.network_service)
        context = connection.context or ConnectionContext()
        if self.ipam is not None:
            ip_context = context.ip_context
            excluded = list(ip_context.excluded_prefixes) if ip_context is not None else []
            context = dataclasses.replace(
                context, ip_context=self.ipam.assign(connection.id, ip_context, excluded)
            )
        if self.dns:
            configs = list(context.dns_context.configs) if context.dns_context else []
            configs += [config for config in self.dns if config not in configs]
            context = dataclasses.replace(context, dns_context=DnsContext(configs=configs))
        labels = {**connection.labels, **self.labels} if self.labels else connection.labels
        reply = dataclasses.replace(
            connection,
            mechanism=mechanism,
            context=context,
            labels=labels,
            network_service_endpoint_name=self.name,
        )
        assert reply.path is not None
        return trim_path(reply, reply.path.index)

    def _kernel_end(self, connection_id: str, mechanism: Mechanism, service: str) -> Mechanism:
        """The KERNEL mechanism with this endpoint's namespace and interface name in it."""
        if self.netns is None:
            raise FailedPrecondition(
                f"{self.name} serves in no network namespace, so it cannot take a KERNEL "
                "interface (serve_endpoint(netns=...))",
                hop=self.name,
                service=service,
            )
        name = mechanism.parameters.get(Param.NAME) or endpoint_interface_name(connection_id)
        check_interface_name(name, hop=self.name, service=service)
        parameters = {Param.INODE_URL: self.netns, Param.NAME: name}
        if self.mtu is not None:
            parameters[Param.MTU] = str(self.mtu)
        return with_parameters(mechanism, parameters)

    def release(self, actor: ServerConnection) -> None:
        if self.ipam is not None:
            self.ipam.release(actor.id)


@attrs.frozen(eq=False)
class EndpointHandle:
    """A running endpoint.

    Attributes:
        name: its name; url: where it serves (bound); endpoint: its logic (connections, IPAM);
        lease: its registration (None when not registered); supervisor: its tree.
    """

    name: str
    url: str
    endpoint: Endpoint
    supervisor: Supervisor
    lease: Lease[NetworkServiceEndpoint] | None


async def serve_endpoint(
    name: str,
    url: str,
    *,
    services: str | Sequence[str],
    registry: str | None = None,
    cidr: str | Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    mechanisms: Sequence[str] = DEFAULT_ENDPOINT_MECHANISMS,
    dns: Sequence[DnsConfig] = (),
    netns: str | None = None,
    strict_ipam: bool = False,
    mtu: int | None = None,
    public_url: str | None = None,
    tokens: TokenProvider | None = None,
    clock: Clock | None = None,
    lease_options: Mapping[str, Any] | None = None,
    task_status: trio.TaskStatus[EndpointHandle] = trio.TASK_STATUS_IGNORED,
    **transport_options: Any,
) -> None:
    """Run the endpoint ``name`` on ``url`` until cancelled (see the module docstring).

    ``task_status.started(handle)`` once it serves and, with ``registry``, is registered.

    Args:
        name: the endpoint's name (registered, and its path segment name).
        url: where it serves (``inproc://``, ``unix://``, ``tcp://...:0``).
        services: the network service(s) it serves.
        registry: where to register (the node's nsmgr, usually); None: not registered.
        cidr: the address pool(s) for point-to-point IPAM (IPv4 and/or IPv6); none: no IPAM.
        labels: its labels for every service it serves (matched by the NS's selectors) and added
            to each connection.
        mechanisms: the mechanism types it accepts.
        dns: DNS configs handed to clients.
        netns: the network namespace it serves in, as an ``inodeURL``
            (``file:///run/netns/<name>``, ``file:///proc/<pid>/ns/net``): where the endpoint's
            end of each KERNEL wire goes. Checked at start (NotFound, PermissionDenied,
            InvalidArgument naming it). None: KERNEL requests are refused.
        mtu: the MTU its end of each KERNEL wire asks for (68..65535; the wire takes the
            smallest of the client's, this and the connection's); None: no preference.
        strict_ipam: drop addresses outside this endpoint's pools from each connection (NSM's
            ``NSM_IPAM_POLICY=strict``), so a client healed here from another endpoint keeps
            none of that one's addresses; default: keep them (NSM's ``polite``).
        public_url: the URL registered (default: the bound URL).
        tokens: mints its tokens (default: unsigned JWT-shaped tokens for ``nse/<name>``).
        lease_options: passed to :func:`~trionsm.actors.serve_lease`.
        transport_options: passed to ``transport.serve``.
    """
    service_names = [services] if isinstance(services, str) else list(services)
    if netns is not None:
        from trionsm.kernel import resolve_namespace

        await resolve_namespace(netns, hop=name)
    endpoint = Endpoint(
        name,
        cidrs=[cidr] if isinstance(cidr, str) else list(cidr),
        mechanisms=mechanisms,
        labels=labels,
        dns=dns,
        tokens=tokens or JwtTokenProvider(f"spiffe://trionsm.local/nse/{name}", clock=clock),
        clock=clock,
        netns=netns,
        strict_ipam=strict_ipam,
        mtu=mtu,
    )
    handlers = {NETWORK_SERVICE: endpoint, MONITOR_CONNECTION: endpoint, HEALTH: Health()}
    bound: dict[str, str] = {}
    leases: list[Lease[NetworkServiceEndpoint]] = []

    async def run_server(*, task_status: trio.TaskStatus[Any]) -> None:
        async with trio.open_nursery() as nursery:
            (server,) = await serve_urls(nursery, [url], handlers, hop=name, **transport_options)
            bound["url"] = server.url
            task_status.started(server)

    async def run_lease(*, task_status: trio.TaskStatus[Any]) -> None:
        assert registry is not None
        registration = NetworkServiceEndpoint(
            name=name,
            network_service_names=service_names,
            network_service_labels={
                service: NetworkServiceLabels(labels=dict(labels or {}))
                for service in service_names
            },
            url=public_url or bound["url"],
        )

        def started(lease: Lease[NetworkServiceEndpoint]) -> None:
            leases[:] = [lease]
            task_status.started(lease)

        status: Any = OnStarted(started)
        await serve_lease(registry, registration, task_status=status, **dict(lease_options or {}))

    children = [*hop_children(endpoint), ChildSpec("server", run_server)]
    if registry is not None:
        children.append(ChildSpec("lease", run_lease))
    async with open_role(name, children) as supervisor:
        task_status.started(
            EndpointHandle(name, bound["url"], endpoint, supervisor, leases[0] if leases else None)
        )
        await trio.sleep_forever()
