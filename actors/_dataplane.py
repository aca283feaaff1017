"""The forwarder's data plane: one KERNEL (veth) wire per connection, through ``trionsm.kernel``.

Theory of operation. For a connection whose incoming mechanism is KERNEL/LOCAL, the forwarder
asks the endpoint for KERNEL too, and once the endpoint has answered it plugs the two together:
a veth pair with the client's end in the incoming mechanism's namespace (``inodeURL``) under its
``name`` (default ``nsm-1``) and the endpoint's end in the namespace and under the name the
endpoint's mechanism carries, the MTU if one is given (the smallest of the incoming
mechanism's, the endpoint's and the connection context's), and the addresses and routes of the
reply's IPContext. Every interface carries the alias ``trionsm:<id>``, the id being the
forwarder's own connection id: stable across refreshes, re-requests and forwarder restarts.

The forwarder keeps each connection's :class:`Wire` in its connection actor, so the Requests and
Closes of one connection are serialised by that actor while different connections' kernel work
runs concurrently in the executor's lanes (creations, removals and probes each have their own).
What :class:`DataPlane` does for it:

* :meth:`DataPlane.check_client`, before the endpoint is asked: the incoming mechanism names a
  namespace that exists and a valid interface name, so a bad client costs the endpoint nothing.
* :meth:`DataPlane.plan`: the :class:`WireSpec` the two mechanisms and the reply describe.
* :meth:`DataPlane.ensure`, after the endpoint answered: the wire of that spec. The same wire,
  still whole (a refresh): nothing is changed. A different spec (another endpoint, new
  addresses) or a wire deleted behind our back: the old one is removed and the new one made. A
  leftover carrying our own alias (a restarted forwarder, re-requested) is removed and the wire
  made again. A failed creation leaves nothing (``create_kernel_wire`` rolls back).
* :meth:`DataPlane.remove`, on Close, expiry, reselect and a move to another endpoint.

Errors are the kernel's typed errors (NotFound for a missing namespace, AlreadyExists for a taken
name or address, InvalidArgument...), naming the forwarder, the network service, the wire and the
cause. ``trionsm.kernel`` (and pyroute2) is imported on first use, not with this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import attrs

from trionsm.api.connection import Mechanism
from trionsm.api.connectioncontext import ConnectionContext, IpContext
from trionsm.errors import AlreadyExists, FailedPrecondition, InvalidArgument, TrionsmError

from ._mechanisms import KERNEL, Param, check_interface_name, describe

if TYPE_CHECKING:
    from trionsm.kernel import KernelWire, Netlink, NetlinkLimits

__all__ = ["DataPlane", "Wire", "WireSpec", "open_dataplane"]

DEFAULT_CLIENT_INTERFACE = "nsm-1"
"""The client end's name when the incoming mechanism names none (as ``trionsm.kernel``)."""


@attrs.frozen
class WireSpec:
    """What one connection's wire should look like (compared on every refresh).

    Attributes:
        connection_id: the forwarder's connection id (the alias ``trionsm:<id>``).
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

    @property
    def description(self) -> str:
        """``nsm-1 in <client netns> <-> nsm-... in <endpoint netns>``, for errors and logs."""
        return (
            f"{self.client_ifname} in {self.client_netns} <-> "
            f"{self.endpoint_ifname} in {self.endpoint_netns}"
        )


@attrs.frozen
class Wire:
    """A wire the data plane made: its spec and what the kernel package reported."""

    spec: WireSpec
    kernel: KernelWire


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

    def plan(
        self,
        connection_id: str,
        incoming: Mechanism,
        outgoing: Mechanism | None,
        context: ConnectionContext | None,
        *,
        hop: str,
        service: str,
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
        )

    async def ensure(self, current: Wire | None, spec: WireSpec, *, hop: str, service: str) -> Wire:
        """The wire of ``spec``: ``current`` if it is that wire and still whole, else a new one
        (``current`` removed first). Cancellable: a creation cut short leaves nothing.

        Raises:
            TrionsmError: the kernel's typed error, naming the wire, the service and the cause;
                nothing of the new wire remains (``current`` may have been removed already).
        """
        from trionsm.kernel import check_wire, remove_wire

        if current is not None:
            whole = False
            if current.spec == spec:
                with contextlib.suppress(TrionsmError):  # cannot tell: make it again
                    whole = await check_wire(current.kernel, hop=hop, netlink=self.netlink)
            if whole:
                return current
            await self.remove(current, hop=hop, service=service)
        try:
            try:
                return Wire(spec, await self._create(spec, hop))
            except AlreadyExists:
                # A leftover of this very connection (a restarted forwarder re-requested, or a
                # removal that failed): ours to replace. Anything else keeps the error.
                ends = [spec.client_netns, spec.endpoint_netns]
                names = [spec.client_ifname, spec.endpoint_ifname]
                if not await remove_wire(
                    spec.connection_id, ends, ifnames=names, hop=hop, netlink=self.netlink
                ):
                    raise
                return Wire(spec, await self._create(spec, hop))
        except TrionsmError as exc:
            raise _about(exc, f"creating the wire {spec.description}", service) from exc

    async def _create(self, spec: WireSpec, hop: str) -> KernelWire:
        from trionsm.kernel import create_kernel_wire

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
        )

    async def remove(self, wire: Wire, *, hop: str, service: str | None = None) -> None:
        """Delete both ends of ``wire`` (idempotent: what is gone already is fine).

        Raises:
            TrionsmError: the kernel refused a deletion (naming the wire and the cause).
        """
        from trionsm.kernel import remove_wire

        ends = [wire.kernel.client.namespace, wire.kernel.endpoint.namespace]
        names = [wire.kernel.client.ifname, wire.kernel.endpoint.ifname]
        try:
            await remove_wire(
                wire.spec.connection_id, ends, ifnames=names, hop=hop, netlink=self.netlink
            )
        except TrionsmError as exc:
            raise _about(exc, f"removing the wire {wire.spec.description}", service) from exc


@contextlib.asynccontextmanager
async def open_dataplane(limits: NetlinkLimits | None = None) -> AsyncIterator[DataPlane]:
    """A data plane with an executor of its own, closed (its threads joined) when the block
    exits. Wires are not removed on exit: they belong to their connections."""
    from trionsm.kernel import open_netlink

    async with open_netlink(limits) as netlink:
        yield DataPlane(netlink)


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
