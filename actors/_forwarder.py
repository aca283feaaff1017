"""The forwarder's per-request logic: endpoint choice, mechanisms, wires, VNIs.

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
typed error (hop, service, wire, cause); nothing is left half-made.

Remote KERNEL connections go over VXLAN (with ``VXLAN`` in ``mechanisms`` and a ``tunnel_ip``,
this forwarder's address in its ``underlay_netns``). On the client's node, the forwarder asks the
remote nsmgr for VXLAN with ``src_ip``/``src_port`` filled; the far side's forwarder fills
``dst_ip``/``dst_port``, picks the VNI (:mod:`._vni`: NSM's parity rule, unique per source, the
same VNI kept on a refresh while still valid), asks its endpoint for KERNEL and makes its vxlan
end in the endpoint's namespace, then replies; the client's forwarder makes its own end in the
client's namespace. A VNI the kernel refuses (``VniInUse``: another device of that underlay has
it) is replaced: the far side picks another one, the near side asks the far side again. Both
ends get one MTU: the near side asks for the smallest of the NSC's and what its own underlay
allows, the far side makes its end no larger (its own underlay may lower it) and replies with it,
and the near side makes its end with that. The payload is IP over the kernel's Ethernet device
(ARP works across, and both sides also know each other's MAC). Close, expiry and reselect remove
each side's end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import trio

from trionsm.api.connection import Connection, Mechanism
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.api.registry import NetworkServiceEndpoint
from trionsm.clock import Clock
from trionsm.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TrionsmError,
)
from trionsm.identity import TokenProvider
from trionsm.supervision import (
    ActorRef,
    ActorStopped,
    CallTimeout,
)

from ._connection import CLOSE_TIMEOUT, NextHop, ServerConnection, ServerHop, _Close
from ._dataplane import REMOVE_TIMEOUT, DataPlane, VxlanSpec, Wire, WireSpec
from ._mechanisms import (
    DEFAULT_VXLAN_PORT,
    KERNEL,
    LOCAL,
    NOOP,
    REMOTE,
    VXLAN,
    Param,
    is_local_url,
    kernel_mechanism,
    negotiate,
    noop_mechanism,
    vxlan_mechanism,
    vxlan_port,
    with_parameters,
)
from ._reconcile import (
    Reconciler,
    ensure_wire,
    leftover_vni,
)
from ._role import Discovery, close_at, token_metadata
from ._select import RoundRobin, all_failed_error, drop_expired, select_endpoints
from ._vni import VniBook

__all__ = ["REMOVE_TIMEOUT", "STOP_TIMEOUT", "VNI_ATTEMPTS", "Forwarder"]

VNI_ATTEMPTS = 4
"""Times a remote wire is tried with a new VNI when the kernel refuses one (VniInUse)."""
STOP_TIMEOUT = 2 * CLOSE_TIMEOUT
"""Seconds a stopping forwarder gives its connections to close (unless it keeps its data plane)."""


class Forwarder(ServerHop):
    """The forwarder's per-request logic on top of the shared server hop.

    Args:
        name: its name (path segment and registration).
        mechanisms: the mechanism types it can program (KERNEL needs ``dataplane``).
        remote: decides whether a next hop URL is on another node (default: by URL scheme).
        dataplane: programs KERNEL wires (None: KERNEL connections are refused).
        tunnel_ip: this forwarder's address on the underlay (required for VXLAN).
        underlay_netns: the namespace holding ``tunnel_ip`` (default: the forwarder's own).
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
        tunnel_ip: str = "",
        underlay_netns: str = "",
    ) -> None:
        super().__init__(name, tokens, clock=clock)
        self.mechanisms = tuple(mechanisms)
        self.dataplane = dataplane
        self.tunnel_ip = tunnel_ip
        self.underlay_netns = underlay_netns or "file:///proc/self/ns/net"
        self.vnis = VniBook()
        self.vni_rng: random.Random | None = None  # tests seed the VNI choice
        self.round_robin = RoundRobin()
        self.registry: Any = None  # a Client to the nsmgr's registry front
        self.discovery = Discovery()  # cached look-ups through it
        self.reconciler: Reconciler | None = None  # a restarted forwarder's leftovers, if any
        # Each live connection's wire, by connection id (as in its actor's state, "wire"): what
        # a reconcile scan must never remove.
        self.wires: dict[str, Wire] = {}
        self._remote = remote or (lambda url: not is_local_url(url))

    def _outgoing_preferences(
        self,
        url: str,
        incoming: Mechanism,
        service: str,
        vni: int | None = None,
        underlay_mtu: int = 0,
    ) -> list[Mechanism]:
        remote = self._remote(url)
        if incoming.type == KERNEL:
            if remote:
                return [self._vxlan_preference(incoming, service, vni, underlay_mtu)]
            return [kernel_mechanism()]
        if incoming.type == VXLAN:
            if remote:
                raise FailedPrecondition(
                    "a VXLAN connection ends on this node, but the endpoint is on another one",
                    hop=self.name,
                    service=service,
                )
            return [kernel_mechanism()]
        return [noop_mechanism(REMOTE if remote else LOCAL)] if NOOP in self.mechanisms else []

    def _vxlan_preference(
        self, incoming: Mechanism, service: str, vni: int | None = None, underlay_mtu: int = 0
    ) -> Mechanism:
        """The client side's VXLAN preference towards another node (``src_*`` filled, and the
        VNI of this connection's leftover vxlan end, if a restart left one). Its MTU is the
        smallest of the NSC's and what this node's underlay allows (``underlay_mtu``, 0: not
        known): the far side makes its end no larger, so both ends get the same MTU whichever
        node's underlay is the smaller."""
        needs = "a KERNEL connection to an endpoint on another node needs VXLAN"
        if VXLAN not in self.mechanisms:
            offered = ", ".join(self.mechanisms)
            raise FailedPrecondition(
                f"{needs}, which this forwarder does not offer (it has {offered})",
                hop=self.name,
                service=service,
            )
        if not self.tunnel_ip:
            raise FailedPrecondition(
                f"{needs}, and this forwarder has no tunnel_ip configured",
                hop=self.name,
                service=service,
            )
        wanted = incoming.parameters.get(Param.MTU, "")
        mtus = [int(wanted) if wanted.isdigit() else 0, underlay_mtu]
        return vxlan_mechanism(
            self.tunnel_ip,
            src_port=DEFAULT_VXLAN_PORT,
            vni=vni,
            mtu=min((mtu for mtu in mtus if mtu), default=None),
        )

    async def _underlay_mtu(
        self,
        dataplane: DataPlane | None,
        incoming: Mechanism,
        candidates: Sequence[Any],
        service: str,
    ) -> int:
        """What this node's underlay allows a vxlan end, when a KERNEL request may go to an
        endpoint on another node (one read of the underlay); else 0.

        Raises:
            FailedPrecondition: no interface of the underlay holds ``tunnel_ip``.
        """
        if dataplane is None or incoming.type != KERNEL or not self.tunnel_ip:
            return 0
        if VXLAN not in self.mechanisms or not any(self._remote(c.url) for c in candidates):
            return 0
        try:
            return await dataplane.vxlan_mtu(self.underlay_netns, self.tunnel_ip, hop=self.name)
        except TrionsmError as exc:
            raise type(exc)(exc.reason, hop=self.name, service=service) from exc

    def _answer_vxlan(
        self,
        actor: ServerConnection,
        incoming: Mechanism,
        service: str,
        excluded: frozenset[int] = frozenset(),
    ) -> Mechanism:
        """The server side's VXLAN mechanism: ``dst_*`` filled and the VNI chosen (the incoming
        one kept while still valid), recorded for this connection.

        Raises:
            FailedPrecondition: no ``tunnel_ip`` configured.
            InvalidArgument: no or a malformed ``src_ip``/``src_port``.
        """
        if not self.tunnel_ip:
            raise FailedPrecondition(
                "a VXLAN connection needs this forwarder's tunnel_ip, and none is configured",
                hop=self.name,
                service=service,
            )
        parameters = incoming.parameters
        src_ip = parameters.get(Param.SRC_IP, "").strip()
        if not src_ip:
            raise InvalidArgument(
                "the VXLAN mechanism has no src_ip", hop=self.name, service=service
            )
        port = vxlan_port(parameters, Param.SRC_PORT, hop=self.name, service=service)
        try:
            vni = self.vnis.assign(
                actor.id,
                src_ip,
                self.tunnel_ip,
                requested=parameters.get(Param.VNI, ""),
                excluded=excluded,
                orig_src_ip=parameters.get(Param.ORIG_SRC_IP, ""),
                orig_dst_ip=parameters.get(Param.ORIG_DST_IP, ""),
                rng=self.vni_rng,
            )
        except TrionsmError as exc:
            raise type(exc)(exc.reason, hop=self.name, service=service) from exc
        # One UDP port per tunnel: a Linux vxlan device sends to and listens on the same one.
        filled = {Param.DST_IP: self.tunnel_ip, Param.DST_PORT: str(port), Param.VNI: str(vni)}
        return with_parameters(incoming, filled)

    def release(self, actor: ServerConnection) -> None:
        self.vnis.release(actor.id)
        # The connection ends (or starts over): a wire it still holds is nobody's now, a
        # leftover for reconcile to find.
        wire = actor.state.get("wire")
        if wire is not None:
            self._forget_wire(actor, wire)

    def live_wires(self) -> list[Wire]:
        """The wires the live connections hold now (a reconcile scan keeps them)."""
        return list(self.wires.values())

    def _hold_wire(self, actor: ServerConnection, wire: Wire) -> None:
        actor.state["wire"] = wire
        self.wires[actor.id] = wire

    def _forget_wire(self, actor: ServerConnection, wire: Wire) -> None:
        """``wire`` is gone (or nobody's): the connection no longer holds it."""
        if actor.state.get("wire") is wire:
            del actor.state["wire"]
        if self.wires.get(actor.id) is wire:
            del self.wires[actor.id]

    async def _check_kernel(self, incoming: Mechanism, service: str) -> DataPlane:
        if self.dataplane is None:
            raise FailedPrecondition(
                f"this forwarder has no data plane for {incoming.type} connections",
                hop=self.name,
                service=service,
            )
        if incoming.type == KERNEL:
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
        dataplane = None
        if incoming.type in (KERNEL, VXLAN):
            dataplane = await self._check_kernel(incoming, service)
        if incoming.type == VXLAN:
            incoming = self._answer_vxlan(actor, incoming, service)
        candidates = await self._candidates(connection, actor.remaining())
        # A restarted forwarder asks for its leftover vxlan end's VNI (so it stays as it is).
        nsc_id = connection.path.path_segments[0].id if connection.path.path_segments else ""
        vni = await leftover_vni(dataplane, self.reconciler, incoming, nsc_id, hop=self.name)
        underlay_mtu = await self._underlay_mtu(dataplane, incoming, candidates, service)
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
                        endpoint.url, incoming, service, vni, underlay_mtu
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
                again = partial(self._ask_again, client, outgoing, actor)
                incoming, reply = await self._plumb(
                    dataplane, actor, incoming, reply, endpoint.url, again
                )
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
        again: Callable[[Connection], Awaitable[Connection]],
    ) -> tuple[Mechanism, Connection]:
        """Make (or keep) the connection's wire; returns the incoming mechanism as made and the
        reply it was made for (another one when the far side had to pick another VNI).

        On failure the endpoint's connection is closed and the connection forgets its endpoint,
        then the error propagates (nothing of the new wire remains).
        """
        from trionsm.kernel import VniInUse

        service = reply.network_service
        excluded: set[int] = set()
        try:
            for attempt in range(VNI_ATTEMPTS):
                spec = self._spec(dataplane, actor, incoming, reply)
                try:  # adopts a leftover of a previous life and claims it, if any
                    # The current wire stays the connection's until its removal is through.
                    wire: Wire = await ensure_wire(
                        dataplane,
                        actor.state.get("wire"),
                        spec,
                        reconciler=self.reconciler,
                        hop=self.name,
                        service=service,
                        forget=partial(self._forget_wire, actor),
                    )
                    break
                except VniInUse:
                    if attempt == VNI_ATTEMPTS - 1 or not isinstance(spec, VxlanSpec):
                        raise
                    if incoming.type == VXLAN:  # ours to pick: another one
                        excluded.add(spec.vni)
                        incoming = self._answer_vxlan(actor, incoming, service, frozenset(excluded))
                    else:  # the far side picks: ask it again (on the path it answered)
                        reply = await again(reply)
        except BaseException:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await self._abandon(actor, url, reply)
            raise
        self._hold_wire(actor, wire)
        made = {} if incoming.type == VXLAN else {Param.NAME: wire.ifname}
        if wire.mtu:
            made[Param.MTU] = str(wire.mtu)
        return with_parameters(incoming, made), reply

    async def _ask_again(
        self,
        client: Any,
        outgoing: NetworkServiceRequest,
        actor: ServerConnection,
        reply: Connection,
    ) -> Connection:
        """``outgoing`` again without its mechanism, on the path of its ``reply`` (the same
        connection downstream): the far side picks a new VNI."""
        connection = outgoing.connection
        assert connection is not None
        assert connection.path is not None
        assert reply.path is not None
        path = dataclasses.replace(reply.path, index=connection.path.index)
        retry = dataclasses.replace(
            outgoing,
            connection=dataclasses.replace(connection, mechanism=None, path=path),
            mechanism_preferences=[  # no VNI asked for: the far side picks another one
                dataclasses.replace(
                    preference,
                    parameters={k: v for k, v in preference.parameters.items() if k != Param.VNI},
                )
                for preference in outgoing.mechanism_preferences
            ],
        )
        answer: Connection = await client.network_service.request(
            retry, timeout=actor.remaining(), metadata=token_metadata(self)
        )
        return answer

    def _spec(
        self, dataplane: DataPlane, actor: ServerConnection, incoming: Mechanism, reply: Connection
    ) -> WireSpec | VxlanSpec:
        """The wire for this reply: a veth pair, or this side's vxlan end of a remote one. Its
        alias names this forwarder and the NSC's connection id (path segment 0's), which stays
        the same across re-requests and reselects, whichever forwarder serves them."""
        service, hop = reply.network_service, self.name
        underlay = self.underlay_netns
        assert reply.path is not None
        nsc_id = reply.path.path_segments[0].id
        if incoming.type == VXLAN:  # the endpoint's node
            return dataplane.plan_vxlan(
                nsc_id, "endpoint", reply.mechanism, incoming, reply.context,
                underlay_netns=underlay, hop=hop, service=service, owner=hop,
            )  # fmt: skip
        if reply.mechanism is not None and reply.mechanism.type == VXLAN:  # the client's node
            return dataplane.plan_vxlan(
                nsc_id, "client", incoming, reply.mechanism, reply.context,
                underlay_netns=underlay, hop=hop, service=service, owner=hop,
            )  # fmt: skip
        return dataplane.plan(
            nsc_id, incoming, reply.mechanism, reply.context, hop=hop, service=service, owner=hop
        )

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
        """Remove the connection's wire, shielded within ``REMOVE_TIMEOUT`` (the Close's own
        bound may pass meanwhile); the connection holds it until it is gone.

        Raises:
            DeadlineExceeded, TrionsmError: as :meth:`DataPlane.remove_within` (the wire kept).
        """
        wire = actor.state.get("wire")
        if wire is None or self.dataplane is None:
            return
        service = actor.connection.network_service if actor.connection else None
        await self.dataplane.remove_within(wire, hop=self.name, service=service)
        self._forget_wire(actor, wire)

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

    async def close_all(self) -> None:
        """Close every connection as if its client had (downstream, its wire, its subscribers),
        concurrently, each within ``STOP_TIMEOUT``: a forwarder stopping for good."""

        async def close(ref: ActorRef) -> None:
            with contextlib.suppress(ActorStopped, CallTimeout, TrionsmError):
                await ref.call(_Close(), timeout=STOP_TIMEOUT)

        async with trio.open_nursery() as nursery:
            for ref in list(self._actors.values()):
                nursery.start_soon(close, ref)
