"""The forwarder's data plane: one KERNEL (veth) wire per connection, through ``trionsm.kernel``.

Theory of operation. For a connection whose incoming mechanism is KERNEL/LOCAL, the forwarder
asks the endpoint for KERNEL too, and once the endpoint has answered it plugs the two together:
a veth pair with the client's end in the incoming mechanism's namespace (``inodeURL``) under its
``name`` (default ``nsm-1``) and the endpoint's end in the namespace and under the name the
endpoint's mechanism carries, the MTU if one is given (the smallest of the incoming
mechanism's, the endpoint's and the connection context's), and the addresses and routes of the
reply's IPContext. Every interface carries the alias ``trionsm:<forwarder>:<id>``, the id being
the NSC's connection id (path segment 0's): stable across refreshes, re-requests, reselects and
forwarder restarts, so a forwarder recognises its own leftovers and a client's old wire.

The forwarder keeps each connection's :class:`Wire` in its connection actor, so the Requests and
Closes of one connection are serialised by that actor while different connections' kernel work
runs concurrently in the executor's lanes (creations, removals and probes each have their own).
What :class:`DataPlane` does for it:

* :meth:`DataPlane.check_client`, before the endpoint is asked: the incoming mechanism names a
  namespace that exists and a valid interface name, so a bad client costs the endpoint nothing.
* :meth:`DataPlane.plan`: the :class:`WireSpec` the two mechanisms and the reply describe.
* :meth:`DataPlane.ensure`, after the endpoint answered: the wire of that spec. The same wire,
  still whole (a refresh): nothing is changed. A different spec (another endpoint, new
  addresses) or a wire deleted behind our back: the old one is removed and the new one made.
  A leftover (a restarted forwarder, re-requested) that is exactly the wire of the spec, a veth
  pair or this side's vxlan end (VNI, tunnel, underlay, MAC, MTU, addresses, routes,
  neighbours), is adopted as it is: same interfaces, no flap. A leftover of the same client
  connection that differs (logged with why), or that another forwarder made (the client
  reselected after its forwarder died), is removed and the wire made again; a name held by
  anything else is AlreadyExists naming its owner. A failed creation leaves nothing (the
  kernel package rolls back).
* :meth:`DataPlane.remove`, on Close, expiry, reselect and a move to another endpoint: exactly
  the interfaces made or adopted (namespace, index and alias), so a late Close of an old
  forwarder's connection never touches the wire a new forwarder made under the same name.

A remote connection has one wire per node, VXLAN in between: :meth:`DataPlane.plan_vxlan` gives
this forwarder's side (:class:`VxlanSpec`): on the client's node, the client's namespace and
name from the incoming KERNEL mechanism and the tunnel from the remote's VXLAN reply; on the
endpoint's node, the endpoint's namespace and name from its KERNEL reply and the tunnel from the
incoming VXLAN mechanism. Both sides' devices have their tunnel in the forwarder's underlay
namespace. :meth:`DataPlane.ensure` and :meth:`DataPlane.remove` take either kind of spec and
wire; a VNI the underlay already has comes back as ``trionsm.kernel.VniInUse`` (an
AlreadyExists), for the forwarder to choose or ask for another. :meth:`DataPlane.leftover_vni`
reads the VNI of a client's leftover vxlan end, which a restarted forwarder asks the far side
for again, so that both nodes' ends stay as they are.

Errors are the kernel's typed errors (NotFound for a missing namespace, AlreadyExists for a taken
name or address, InvalidArgument...), naming the forwarder, the network service, the wire and the
cause. ``trionsm.kernel`` (and pyroute2) is imported on first use, not with this module.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal

import attrs
import trio

from trionsm.api.connection import Mechanism
from trionsm.api.connectioncontext import ConnectionContext, IpContext
from trionsm.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    TrionsmError,
)

from ._mechanisms import KERNEL, VXLAN, Param, check_interface_name, describe, vxlan_port

if TYPE_CHECKING:
    from trionsm.kernel import (
        Inspection,
        KernelWire,
        Netlink,
        NetlinkLimits,
        VxlanEnd,
        VxlanInspection,
        WireAlias,
    )

__all__ = ["REMOVE_TIMEOUT", "DataPlane", "VxlanSpec", "Wire", "WireSpec", "open_dataplane"]

log = logging.getLogger("trionsm.actors.dataplane")

REMOVE_TIMEOUT = 60.0
"""Seconds a wire's removal may take, whatever bounds the Request or Close that asked for it:
hundreds of Closes at once queue behind the executor's teardown lane, and a removal cut short by
its caller's own bound would leave the wire behind with no connection left to remove it."""

DEFAULT_CLIENT_INTERFACE = "nsm-1"
"""The client end's name when the incoming mechanism names none (as ``trionsm.kernel``)."""


@attrs.frozen
class WireSpec:
    """What one connection's wire should look like (compared on every refresh).

    Attributes:
        connection_id: the NSC's connection id (the alias ``trionsm:<owner>:<id>``).
        client_netns, client_ifname: the client end's namespace URL and interface name.
        endpoint_netns, endpoint_ifname: the endpoint end's.
        mtu: both ends' MTU; 0 keeps the kernel's default.
        ip_context: addresses, routes, neighbours, policies (compared by ``encoded``).
    """

    connection_id: str
    client_netns: str
    client_ifname: str
    endpoint_netns: str
    endpoint_ifname: str
    mtu: int
    ip_context: IpContext | None = attrs.field(eq=False)
    encoded: bytes = attrs.field(repr=False)  # the IPContext's encoding, for comparison
    owner: str = ""  # the forwarder making it

    @property
    def alias(self) -> str:
        """What both ends carry: ``trionsm:<owner>:<connection id>``."""
        return _alias(self.connection_id, self.owner)

    @property
    def description(self) -> str:
        """``nsm-1 in <client netns> <-> nsm-... in <endpoint netns>``, for errors and logs."""
        return (
            f"{self.client_ifname} in {self.client_netns} <-> "
            f"{self.endpoint_ifname} in {self.endpoint_netns}"
        )

    @property
    def namespaces(self) -> tuple[str, ...]:
        """The namespaces its interfaces live in."""
        return (self.client_netns, self.endpoint_netns)

    @property
    def ifnames(self) -> tuple[str, ...]:
        """Its interfaces' names."""
        return (self.client_ifname, self.endpoint_ifname)


@attrs.frozen
class VxlanSpec:
    """This forwarder's side of a remote connection's wire: one vxlan device.

    Attributes:
        connection_id: the NSC's connection id (the alias ``trionsm:<owner>:<id>``).
        side: ``"client"`` (the NSC's node) or ``"endpoint"`` (the NSE's node).
        netns, ifname: the interface's namespace URL and name.
        underlay_netns: where the tunnel lives (the forwarder's node).
        local_ip, remote_ip: this side's and the peer's tunnel address.
        vni, port: the VXLAN network identifier and UDP port.
        mtu: the MTU wanted; 0: the most the underlay allows.
        ip_context: addresses, routes, neighbours, policies (compared by ``encoded``).
    """

    connection_id: str
    side: Literal["client", "endpoint"]
    netns: str
    ifname: str
    underlay_netns: str
    local_ip: str
    remote_ip: str
    vni: int
    port: int
    mtu: int
    ip_context: IpContext | None = attrs.field(eq=False)
    encoded: bytes = attrs.field(repr=False)
    owner: str = ""  # the forwarder making it

    @property
    def alias(self) -> str:
        """What the interface carries: ``trionsm:<owner>:<connection id>``."""
        return _alias(self.connection_id, self.owner)

    @property
    def description(self) -> str:
        """``nsm-1 in <netns> over VXLAN 42 (a -> b:4789)``, for errors and logs."""
        tunnel = f"{self.local_ip} -> {self.remote_ip}:{self.port}"
        return f"{self.ifname} in {self.netns} over VXLAN {self.vni} ({tunnel})"

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.netns,)

    @property
    def ifnames(self) -> tuple[str, ...]:
        return (self.ifname,)


@attrs.frozen
class Wire:
    """A wire the data plane made: its spec and what the kernel package reported (a veth pair
    for a local connection, this side's vxlan end for a remote one)."""

    spec: WireSpec | VxlanSpec
    kernel: KernelWire | VxlanEnd

    @property
    def ifname(self) -> str:
        """The name of the interface on the incoming side (the client's, or this node's end)."""
        if isinstance(self.spec, VxlanSpec):
            return self.spec.ifname
        return self.spec.client_ifname

    @property
    def mtu(self) -> int:
        """The MTU as made (0: the kernel's default on a veth pair)."""
        return self.kernel.mtu


class DataPlane:
    """A forwarder's KERNEL data plane (see the module docstring); stateless between calls.

    Args:
        netlink: the executor every kernel call goes through; None: the Trio run's shared one
            (:func:`trionsm.kernel.current_netlink`). :func:`open_dataplane` owns one instead.
    """

    def __init__(self, netlink: Netlink | None = None) -> None:
        self._netlink = netlink

    @property
    def netlink(self) -> Netlink:
        """The executor in use."""
        if self._netlink is None:
            from trionsm.kernel import current_netlink

            return current_netlink()
        return self._netlink

    async def check_client(self, mechanism: Mechanism, *, hop: str, service: str) -> None:
        """Check the incoming KERNEL mechanism before anything is asked of the endpoint.

        Raises:
            InvalidArgument: no ``inodeURL``, a malformed one, a bad interface name or MTU.
            NotFound, PermissionDenied: the client's namespace does not exist or is not ours.
        """
        from trionsm.kernel import resolve_namespace

        netns = _netns(mechanism, "the client's", hop, service)
        _ifname(mechanism, DEFAULT_CLIENT_INTERFACE, "client", hop, service)
        _mtu(mechanism.parameters, "the client's mechanism", hop, service)
        try:
            await resolve_namespace(netns, hop=hop)
        except TrionsmError as exc:
            raise _about(exc, "the client's namespace", service) from exc

    async def leftover_vni(
        self, incoming: Mechanism, connection_id: str, *, owner: str, hop: str
    ) -> int | None:
        """The VNI of the vxlan end that ``owner`` made for ``connection_id`` under the client's
        interface name in the client's namespace (both from the incoming KERNEL mechanism): a
        leftover of a restarted forwarder. None when there is none, or it cannot be read. One
        lookup (``PROBE`` lane); nothing is changed.
        """
        from trionsm.kernel import lookup

        netns = incoming.parameters.get(Param.INODE_URL, "")
        ifname = incoming.parameters.get(Param.NAME, "") or DEFAULT_CLIENT_INTERFACE
        if incoming.type != KERNEL or not netns:
            return None
        try:
            end = await lookup(netns, ifname, hop=hop, netlink=self.netlink)
        except TrionsmError:  # the request itself will say what is wrong with the namespace
            return None
        if end is None or end.tunnel is None or end.alias != _alias(connection_id, owner):
            return None
        return end.tunnel.vni

    async def vxlan_mtu(self, underlay_netns: str, tunnel_ip: str, *, hop: str) -> int:
        """The most MTU a vxlan end with its tunnel from ``tunnel_ip`` in ``underlay_netns`` may
        have (the underlay interface's MTU minus the VXLAN overhead). One read (``PROBE``).

        Raises:
            FailedPrecondition: no interface of the underlay holds ``tunnel_ip``.
            NotFound, PermissionDenied, InvalidArgument: as the kernel's ``vxlan_mtu``.
        """
        from trionsm.kernel import vxlan_mtu

        return await vxlan_mtu(underlay_netns, tunnel_ip, hop=hop, netlink=self.netlink)

    def plan(
        self,
        connection_id: str,
        incoming: Mechanism,
        outgoing: Mechanism | None,
        context: ConnectionContext | None,
        *,
        hop: str,
        service: str,
        owner: str = "",
    ) -> WireSpec:
        """The wire between the client's ``incoming`` and the endpoint's ``outgoing`` mechanism.

        Raises:
            FailedPrecondition: the endpoint answered with something other than KERNEL.
            InvalidArgument: a mechanism without a namespace, a bad name or MTU.
        """
        if outgoing is None or outgoing.type != KERNEL:
            raise FailedPrecondition(
                f"the endpoint answered a KERNEL request with {describe(outgoing)}",
                hop=hop,
                service=service,
            )
        mtus = [
            _mtu(incoming.parameters, "the client's mechanism", hop, service),
            _mtu(outgoing.parameters, "the endpoint's mechanism", hop, service),
            context.mtu if context is not None else 0,
        ]
        ip_context = context.ip_context if context is not None else None
        return WireSpec(
            connection_id=connection_id,
            client_netns=_netns(incoming, "the client's", hop, service),
            client_ifname=_ifname(incoming, DEFAULT_CLIENT_INTERFACE, "client", hop, service),
            endpoint_netns=_netns(outgoing, "the endpoint's", hop, service),
            endpoint_ifname=_ifname(outgoing, "", "endpoint", hop, service),
            mtu=min((mtu for mtu in mtus if mtu), default=0),
            ip_context=ip_context,
            encoded=bytes(ip_context) if ip_context is not None else b"",
            owner=owner,
        )

    def plan_vxlan(
        self,
        connection_id: str,
        side: Literal["client", "endpoint"],
        workload: Mechanism | None,
        tunnel: Mechanism | None,
        context: ConnectionContext | None,
        *,
        underlay_netns: str,
        hop: str,
        service: str,
        owner: str = "",
    ) -> VxlanSpec:
        """This side's vxlan end: ``workload`` is the KERNEL mechanism of this node's workload
        (the client's incoming one, or the endpoint's reply), ``tunnel`` the VXLAN mechanism
        with both tunnel addresses and the VNI (the remote's reply, or the incoming one as this
        forwarder filled it). The MTU is the smallest the two mechanisms and the context give.

        Raises:
            FailedPrecondition: the next hop answered with another mechanism than asked for.
            InvalidArgument: a missing or malformed parameter, named.
        """
        client = side == "client"
        if tunnel is None or tunnel.type != VXLAN:
            raise FailedPrecondition(
                f"the remote side answered a VXLAN request with {describe(tunnel)}",
                hop=hop,
                service=service,
            )
        if workload is None or workload.type != KERNEL:
            raise FailedPrecondition(
                f"the endpoint answered a KERNEL request with {describe(workload)}",
                hop=hop,
                service=service,
            )
        parameters = tunnel.parameters
        addresses = {key: parameters.get(key, "").strip() for key in (Param.SRC_IP, Param.DST_IP)}
        for key, value in addresses.items():
            if not value:
                raise InvalidArgument(f"the VXLAN mechanism has no {key}", hop=hop, service=service)
        vni = parameters.get(Param.VNI, "").strip()
        if not vni.isdigit() or len(vni) > 8:
            raise InvalidArgument(
                f"the VXLAN mechanism's {Param.VNI} {vni[:20]!r} is not a VNI",
                hop=hop,
                service=service,
            )
        local, remote = addresses[Param.SRC_IP], addresses[Param.DST_IP]
        mtus = [
            _mtu(workload.parameters, "the KERNEL mechanism", hop, service),
            _mtu(parameters, "the VXLAN mechanism", hop, service),
            context.mtu if context is not None else 0,
        ]
        ip_context = context.ip_context if context is not None else None
        whose = "the client's" if client else "the endpoint's"
        return VxlanSpec(
            connection_id=connection_id,
            side=side,
            netns=_netns(workload, whose, hop, service),
            ifname=_ifname(
                workload, DEFAULT_CLIENT_INTERFACE if client else "", side, hop, service
            ),
            underlay_netns=underlay_netns,
            local_ip=local if client else remote,
            remote_ip=remote if client else local,
            vni=int(vni),
            port=vxlan_port(parameters, Param.DST_PORT, hop=hop, service=service),
            mtu=min((mtu for mtu in mtus if mtu), default=0),
            ip_context=ip_context,
            encoded=bytes(ip_context) if ip_context is not None else b"",
            owner=owner,
        )

    async def ensure(
        self,
        current: Wire | None,
        spec: WireSpec | VxlanSpec,
        *,
        hop: str,
        service: str,
        adopt: bool = False,
        forget: Callable[[Wire], None] | None = None,
    ) -> Wire:
        """The wire of ``spec``: ``current`` if it is that wire and still whole; else a leftover
        (veth pair or vxlan end) that is exactly that wire, adopted as it is (no flap); else a
        new one, ``current`` and this client connection's stale interfaces under its names
        removed first. ``current`` is removed as by :meth:`remove_within` (shielded, bounded:
        a cancellation meanwhile waits for it), and ``forget(current)`` is called once it is
        gone, not before: the caller keeps the wire until then, to remove it later if need be.
        Cancellable otherwise: a creation cut short leaves nothing.

        Args:
            adopt: look for a leftover before creating (the forwarder restarted and may hold
                one); without it, one is looked for only when the creation finds a name taken.
            forget: called with ``current`` once it has been removed.

        Raises:
            AlreadyExists: a name is held by another connection's wire or by an interface we did
                not make (naming its owner).
            DeadlineExceeded: removing ``current`` took over :data:`REMOVE_TIMEOUT` (it may
                remain; it was not forgotten).
            TrionsmError: the kernel's typed error, naming the wire, the service and the cause;
                nothing of the new wire remains (``current`` is forgotten only if removed).
        """
        from trionsm.kernel import check_wire

        if current is not None:
            whole = False
            if current.spec == spec:
                with contextlib.suppress(TrionsmError):  # cannot tell: make it again
                    whole = await check_wire(
                        current.kernel, hop=hop, netlink=self.netlink, alias=spec.alias
                    )
            if whole:
                return current
            await self.remove_within(current, hop=hop, service=service)
            if forget is not None:
                forget(current)
        try:
            if adopt:
                adopted, _ = await self._take_over(spec, hop)
                if adopted is not None:
                    return adopted
            try:
                return _made(spec, await self._create(spec, hop))
            except AlreadyExists:
                adopted, cleared = await self._take_over(spec, hop)
                if adopted is not None:
                    return adopted
                if not cleared:
                    raise
                return _made(spec, await self._create(spec, hop))
        except TrionsmError as exc:
            raise _about(exc, f"creating the wire {spec.description}", service) from exc

    async def _take_over(self, spec: WireSpec | VxlanSpec, hop: str) -> tuple[Wire | None, int]:
        """Adopt the leftover that is exactly ``spec``'s wire (a veth pair, or this side's vxlan
        end); else remove what holds its names and belongs to the same client connection (ours,
        or a dead forwarder's). Returns the adopted wire (or None) and how many stale interfaces
        were removed.

        Raises:
            AlreadyExists: a name is held by anything else (naming its owner).
        """
        from trionsm.kernel import (
            inspect_vxlan_end,
            inspect_wire,
            plan_vxlan_end,
            plan_wire,
            remove_interfaces,
        )

        if isinstance(spec, WireSpec):
            plan = plan_wire(
                spec.connection_id,
                spec.client_ifname,
                spec.endpoint_ifname,
                mtu=spec.mtu,
                ip_context=spec.ip_context,
                hop=hop,
                owner=spec.owner,
            )
            seen: Inspection | VxlanInspection = await inspect_wire(
                plan, spec.client_netns, spec.endpoint_netns, hop=hop, netlink=self.netlink
            )
        else:
            arguments = _vxlan_arguments(spec)
            underlay, netns = arguments.pop("underlay_ns"), arguments.pop("netns")
            vxlan = plan_vxlan_end(**arguments, hop=hop)
            seen = await inspect_vxlan_end(vxlan, underlay, netns, hop=hop, netlink=self.netlink)
        if seen.wire is not None:
            return _made(spec, seen.wire), 0
        ends = seen.ends
        for end in ends:
            parsed = end.parsed
            if parsed is None or parsed.connection_id != spec.connection_id:
                raise AlreadyExists(
                    f"{end.ifname} in {end.namespace} is taken by {_holder(parsed)}", hop=hop
                )
        if ends:
            log.info("%s: replacing the leftover %s: %s", hop, spec.description, seen.difference)
            await remove_interfaces(ends, hop=hop, netlink=self.netlink)
        return None, len(ends)

    async def _create(self, spec: WireSpec | VxlanSpec, hop: str) -> KernelWire | VxlanEnd:
        from trionsm.kernel import create_kernel_wire, create_vxlan_end

        if isinstance(spec, VxlanSpec):
            return await create_vxlan_end(**_vxlan_arguments(spec), hop=hop, netlink=self.netlink)
        return await create_kernel_wire(
            spec.connection_id,
            spec.client_netns,
            spec.client_ifname,
            spec.endpoint_netns,
            spec.endpoint_ifname,
            mtu=spec.mtu,
            ip_context=spec.ip_context,
            hop=hop,
            netlink=self.netlink,
            owner=spec.owner,
        )

    async def remove(self, wire: Wire, *, hop: str, service: str | None = None) -> None:
        """Delete the interfaces of ``wire``, exactly those made or adopted (namespace, index
        and alias): one made since under the same name is left alone. Idempotent: what is gone
        already is fine.

        Raises:
            TrionsmError: the kernel refused a deletion (naming the wire and the cause).
        """
        from trionsm.kernel import remove_interfaces

        ends = [(end.namespace, end.index, wire.spec.alias) for end in wire.kernel.ends]
        try:
            await remove_interfaces(ends, hop=hop, netlink=self.netlink)
        except TrionsmError as exc:
            raise _about(exc, f"removing the wire {wire.spec.description}", service) from exc

    async def remove_within(
        self,
        wire: Wire,
        *,
        hop: str,
        service: str | None = None,
        timeout: float = REMOVE_TIMEOUT,  # noqa: ASYNC109
    ) -> None:
        """:meth:`remove`, shielded and bounded by ``timeout``: a cancellation of the caller
        meanwhile waits for the removal (then takes effect), so a removal once asked for is
        never cut short by its caller's bound.

        Raises:
            DeadlineExceeded: the removal took over ``timeout`` (the wire may remain).
            TrionsmError: as :meth:`remove`.
        """
        with trio.move_on_after(timeout, shield=True) as scope:
            await self.remove(wire, hop=hop, service=service)
        if scope.cancelled_caught:
            raise DeadlineExceeded(
                f"removing the wire {wire.spec.description} took over {timeout:.0f} s "
                "(the kernel's teardown lane is stuck)",
                hop=hop,
                service=service,
            )


@contextlib.asynccontextmanager
async def open_dataplane(limits: NetlinkLimits | None = None) -> AsyncIterator[DataPlane]:
    """A data plane with an executor of its own, closed (its threads joined) when the block
    exits. Wires are not removed on exit: they belong to their connections."""
    from trionsm.kernel import open_netlink

    async with open_netlink(limits) as netlink:
        yield DataPlane(netlink)


def _made(spec: WireSpec | VxlanSpec, kernel: KernelWire | VxlanEnd) -> Wire:
    """The wire with the MTU it was made with in its spec: a vxlan end's comes from its underlay
    and goes back in the reply, so a refresh asking for it again finds the same spec."""
    if isinstance(spec, VxlanSpec) and spec.mtu != kernel.mtu:
        spec = attrs.evolve(spec, mtu=kernel.mtu)
    return Wire(spec, kernel)


def _vxlan_arguments(spec: VxlanSpec) -> dict[str, Any]:
    """What ``create_vxlan_end`` makes ``spec``'s end with (and ``inspect_vxlan_end`` compares
    a leftover with)."""
    return {
        "connection_id": spec.connection_id,
        "underlay_ns": spec.underlay_netns,
        "netns": spec.netns,
        "ifname": spec.ifname,
        "side": spec.side,
        "local_ip": spec.local_ip,
        "remote_ip": spec.remote_ip,
        "vni": spec.vni,
        "port": spec.port,
        "mtu": spec.mtu,
        "ip_context": spec.ip_context,
        "owner": spec.owner,
    }


def _alias(connection_id: str, owner: str) -> str:
    from trionsm.kernel import alias_for

    return alias_for(connection_id, owner)


def _holder(alias: WireAlias | None) -> str:
    """Who holds an interface, by its alias."""
    if alias is None:
        return "an interface that trionsm did not make"
    if not alias.owner:
        return f"trionsm's wire of connection {alias.connection_id!r}"
    return f"forwarder {alias.owner!r}'s wire of connection {alias.connection_id!r}"


def _about(exc: TrionsmError, what: str, service: str | None) -> TrionsmError:
    """``exc`` again (same class and hop) with what we were doing and the service named."""
    return type(exc)(f"{what}: {exc.reason}", hop=exc.hop, service=service or exc.service)


def _netns(mechanism: Mechanism, whose: str, hop: str, service: str) -> str:
    netns = mechanism.parameters.get(Param.INODE_URL, "")
    if not netns:
        raise InvalidArgument(
            f"{whose} KERNEL mechanism names no network namespace ({Param.INODE_URL})",
            hop=hop,
            service=service,
        )
    return netns


def _ifname(mechanism: Mechanism, default: str, side: str, hop: str, service: str) -> str:
    name = mechanism.parameters.get(Param.NAME, "") or default
    if not name:
        raise InvalidArgument(
            f"the {side}'s KERNEL mechanism names no interface ({Param.NAME})",
            hop=hop,
            service=service,
        )
    try:
        check_interface_name(name, hop=hop, service=service)
    except InvalidArgument as exc:
        raise InvalidArgument(f"the {side} end: {exc.reason}", hop=hop, service=service) from exc
    return name


def _mtu(parameters: dict[str, str], where: str, hop: str, service: str) -> int:
    text = parameters.get(Param.MTU, "")
    if not text:
        return 0
    if not text.isdigit() or not 68 <= int(text) <= 65535:
        raise InvalidArgument(
            f"{where}: MTU {text[:20]!r} is not a number in 68..65535", hop=hop, service=service
        )
    return int(text)
