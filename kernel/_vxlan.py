"""VXLAN (remote) wires: one vxlan device per side, its tunnel in the node's underlay namespace.

A remote connection crosses two nodes, so each forwarder makes only its own end:
:func:`create_vxlan_end` makes a ``vxlan`` link whose tunnel belongs to the *underlay* namespace
(the forwarder's node: ``local`` is the forwarder's tunnel address, ``remote`` the peer
forwarder's, the VNI and UDP port the VXLAN mechanism carries, learning off, bound to the
underlay interface that holds the local address) and whose interface is born in the *workload*
namespace (the client's or the endpoint's): one netlink call sent from the underlay with the
workload as the target namespace, the same as making it in the underlay and moving it, but
with no moment where it sits in the underlay. The kernel keeps the tunnel's UDP socket in the
underlay (the device's link namespace), so packets leave and arrive through the node's network.

The MTU is the underlay interface's minus the VXLAN overhead (50 bytes over IPv4, 70 over IPv6),
or the requested one if smaller; a larger request is lowered to what the underlay allows, and
:attr:`VxlanEnd.mtu` says what was made. Then the end is configured by the code the veth wire
uses (``_linkconfig``): final name and alias (from the plan), addresses (IPv6 with ``nodad``),
up, neighbours, routes, policy routes. Both MAC addresses derive from the tunnel
(:func:`vxlan_macs`), so each side knows the other's without asking and adds permanent neighbour
entries for it; ARP still works across the tunnel (the default forwarding entry points at the
remote), it is just not needed.

The kernel refuses a second vxlan device with the same VNI and UDP port in one underlay
namespace (whatever the addresses, and even when the first has moved elsewhere):
:func:`create_vxlan_end` reports that as :class:`VniInUse`, an AlreadyExists naming the VNI, so
the caller can choose another VNI and try again. If any step fails, or the caller is cancelled,
the device is deleted, so nothing half-made remains in either namespace.

Removal and listing are the alias-based functions of the veth wire (``remove_wire``,
``list_wires``, ``check_wire``): a vxlan end is a single interface carrying the same alias.
:func:`plan_vxlan_end` checks the input and plans the end without the kernel; reconcile
(``_vxlan_reconcile``) compares a leftover end with the same plan, to adopt it as it is.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import secrets
from functools import partial
from typing import Any, Literal

import attrs
import trio

from trionsm.api.connectioncontext import IpContext
from trionsm.errors import AlreadyExists, FailedPrecondition, InvalidArgument, TrionsmError

from ._handles import Handle, KernelFailure, Lane, step
from ._linkconfig import configure_end, delete_index, wait_until_ready
from ._netlink import Netlink, current_netlink
from ._netns import Namespace, open_namespace, resolve_namespace
from ._routes import remove_orphan_rules, unless
from ._veth import WireEnd
from ._wireplan import Address, SidePlan, WirePlan, plan_wire

__all__ = [
    "DEFAULT_VXLAN_PORT",
    "MAX_VNI",
    "Side",
    "VniInUse",
    "VxlanEnd",
    "VxlanPlan",
    "create_vxlan_end",
    "plan_vxlan_end",
    "vxlan_macs",
    "vxlan_mtu",
]

DEFAULT_VXLAN_PORT = 4789
MAX_VNI = 2**24 - 1
_OVERHEAD = {4: 50, 6: 70}  # outer IP + UDP + VXLAN + inner Ethernet headers
_ROLLBACK_GRACE = 10.0

Side = Literal["client", "endpoint"]
"""Which end: the client's (its addresses are the IPContext's ``src_*``, and its tunnel address
is the mechanism's ``src_ip``) or the endpoint's (``dst_*``, ``dst_ip``)."""


class VniInUse(AlreadyExists):
    """The underlay already has a vxlan device with this VNI and port: choose another VNI.

    Raised by :func:`create_vxlan_end` (nothing was made); ``vni`` names the refused VNI when
    known (the error keeps its class, not this attribute, across the wire).
    """

    vni: int | None = None


@attrs.frozen
class VxlanEnd:
    """One side of a VXLAN wire :func:`create_vxlan_end` made.

    Attributes:
        connection_id: the connection whose alias the interface carries.
        end: the interface in the workload namespace.
        underlay: the namespace holding the tunnel (the forwarder's node).
        local_ip, remote_ip: the tunnel's addresses (this side's, the peer's).
        vni: the VXLAN network identifier.
        port: the UDP port (the device sends to it and listens on it).
        mtu: the interface's MTU as made.
    """

    connection_id: str
    end: WireEnd
    underlay: Namespace
    local_ip: str
    remote_ip: str
    vni: int
    port: int
    mtu: int

    @property
    def ends(self) -> tuple[WireEnd, ...]:
        """Its single interface (``check_wire`` and ``remove_wire`` take any wire's ends)."""
        return (self.end,)


@attrs.frozen
class VxlanPlan:
    """One side's vxlan end as :func:`plan_vxlan_end` checked it (no kernel involved).

    Attributes:
        wire: the wire's plan (alias, MTU wanted, both sides' addresses and routes).
        side: which end this is; ``here`` its side of ``wire``, ``there`` the other one.
        local, remote: the tunnel's addresses (this side's, the peer's).
        vni, port: the VXLAN network identifier and UDP port.
        mac, peer_mac: this end's MAC address and the other end's (:func:`vxlan_macs`).
    """

    wire: WirePlan
    side: Side
    here: SidePlan
    there: SidePlan
    local: Address
    remote: Address
    vni: int
    port: int
    mac: str
    peer_mac: str

    @property
    def alias(self) -> str:
        return self.wire.alias


def plan_vxlan_end(
    connection_id: str,
    ifname: str,
    *,
    side: Side,
    local_ip: str,
    remote_ip: str,
    vni: int,
    port: int = DEFAULT_VXLAN_PORT,
    mtu: int = 0,
    ip_context: IpContext | None = None,
    owner: str = "",
    hop: str | None = None,
) -> VxlanPlan:
    """Check a vxlan end's input (the arguments of :func:`create_vxlan_end`) and plan it. Pure.

    Raises:
        InvalidArgument: a bad address, VNI, port, name or MTU, naming it.
    """
    local, remote = _tunnel(local_ip, remote_ip, hop)
    if not 0 <= vni <= MAX_VNI:
        raise InvalidArgument(f"VNI {vni} is outside 0..{MAX_VNI}", hop=hop)
    if not 1 <= port <= 65535:
        raise InvalidArgument(f"VXLAN port {port} is outside 1..65535", hop=hop)
    client = side == "client"
    wire = plan_wire(
        connection_id,
        ifname if client else "",
        "" if client else ifname,
        mtu=mtu,
        ip_context=ip_context,
        hop=hop,
        owner=owner,
    )
    here, there = (wire.client, wire.endpoint) if client else (wire.endpoint, wire.client)
    src, dst = (local, remote) if client else (remote, local)
    macs = vxlan_macs(str(src), str(dst), vni)
    mac, peer_mac = macs if client else macs[::-1]
    return VxlanPlan(wire, side, here, there, local, remote, vni, port, mac, peer_mac)


def allowed_mtu(lower_mtu: int, version: int, wanted: int) -> int:
    """The MTU a vxlan end gets: ``wanted`` (0: no wish), at most what an underlay interface of
    MTU ``lower_mtu`` leaves after the VXLAN overhead of IP ``version``."""
    allowed = lower_mtu - _OVERHEAD[version]
    return min(wanted, allowed) if wanted else allowed


async def vxlan_mtu(
    underlay_ns: Namespace | str,
    local_ip: str,
    *,
    hop: str | None = None,
    netlink: Netlink | None = None,
) -> int:
    """The most MTU a vxlan end with its tunnel from ``local_ip`` may have: the MTU of the
    underlay interface holding ``local_ip`` minus the VXLAN overhead of its IP version (what
    :func:`create_vxlan_end` makes when no smaller MTU is asked for). One read (``PROBE`` lane).

    Raises:
        InvalidArgument: ``local_ip`` is not an IP address.
        FailedPrecondition: no interface of the underlay holds ``local_ip``.
        NotFound, PermissionDenied: the namespace is missing or not ours.
    """
    try:
        local = ipaddress.ip_address(local_ip.strip())
    except ValueError:
        raise InvalidArgument(
            f"tunnel address {local_ip!r} is not an IP address", hop=hop
        ) from None
    netlink = netlink or current_netlink()
    underlay = await resolve_namespace(underlay_ns, hop=hop)
    lower = await netlink.run(underlay, partial(lower_link, local=local), lane=Lane.PROBE, hop=hop)
    if lower is None:
        raise FailedPrecondition(
            f"no interface in the underlay namespace {underlay} holds the tunnel address {local}",
            hop=hop,
        )
    return allowed_mtu(lower.get("mtu"), local.version, 0)


def vxlan_macs(src_ip: str, dst_ip: str, vni: int) -> tuple[str, str]:
    """The client's and the endpoint's MAC address on the tunnel ``src_ip -> dst_ip``, ``vni``.

    Pure: both forwarders compute the same pair from the VXLAN mechanism, so each configures a
    permanent neighbour entry for the other side. Locally administered unicast addresses; the
    two always differ.
    """
    digest = hashlib.sha256(f"{src_ip}|{dst_ip}|{vni}".encode()).digest()
    client, endpoint = bytearray(digest[:6]), bytearray(digest[:6])
    client[0] = (client[0] & 0xF8) | 0x02  # locally administered, unicast, bit 2 clear...
    endpoint[0] = client[0] | 0x04  # ...and set on the endpoint's
    return _mac(client), _mac(endpoint)


def _mac(octets: bytearray) -> str:
    return ":".join(f"{octet:02x}" for octet in octets)


async def create_vxlan_end(
    connection_id: str,
    underlay_ns: Namespace | str,
    netns: Namespace | str,
    ifname: str,
    *,
    side: Side,
    local_ip: str,
    remote_ip: str,
    vni: int,
    port: int = DEFAULT_VXLAN_PORT,
    mtu: int = 0,
    ip_context: IpContext | None = None,
    owner: str = "",
    hop: str | None = None,
    netlink: Netlink | None = None,
) -> VxlanEnd:
    """Make and configure this side's end of a VXLAN wire; see the module docstring.

    Args:
        connection_id: this side's connection id (the interface's alias comes from it).
        underlay_ns: the namespace of the tunnel (holds ``local_ip`` on one of its interfaces).
        netns: the workload's namespace, where the interface goes.
        ifname: the interface's name there (``""``: ``nsm-1`` on the client side, a name
            derived from the connection id on the endpoint side).
        side: ``"client"`` or ``"endpoint"`` (which addresses and routes of ``ip_context``).
        local_ip, remote_ip: this side's and the peer's tunnel address (same family).
        vni: 0..2**24-1. port: the UDP port, both sides the same.
        mtu: the MTU wanted (0: the most the underlay allows).
        ip_context: addresses, routes, neighbours and policies (NSM's IPContext).
        owner: the forwarder making it (the alias is ``alias_for(connection_id, owner)``).
        hop: named in every error. netlink: the executor (the run's shared one by default).

    Cancellation: at any point; what was made is removed (shielded, bounded) before
    ``Cancelled`` propagates.

    Raises:
        InvalidArgument: bad input (an address, VNI, port, name, MTU), before any change.
        FailedPrecondition: no interface of the underlay holds ``local_ip``.
        NotFound, PermissionDenied: a namespace is missing or not ours.
        VniInUse: the underlay has a vxlan device with this VNI and port already.
        AlreadyExists: the name or an address is taken in the workload namespace.
        TrionsmError: any other kernel refusal, naming the step.
    """
    plan = plan_vxlan_end(
        connection_id,
        ifname,
        side=side,
        local_ip=local_ip,
        remote_ip=remote_ip,
        vni=vni,
        port=port,
        mtu=mtu,
        ip_context=ip_context,
        owner=owner,
        hop=hop,
    )
    here, there = plan.here, plan.there
    netlink = netlink or current_netlink()
    underlay = await resolve_namespace(underlay_ns, hop=hop)
    workload = await resolve_namespace(netns, hop=hop)
    temporary = f"tx{secrets.token_hex(6)}"
    create = partial(
        _create_vxlan,
        name=temporary,
        local=plan.local,
        remote=plan.remote,
        vni=vni,
        port=port,
        mtu=plan.wire.mtu,
        mac=plan.mac,
        target=workload,
        hop=hop,
    )
    made_mtu = await netlink.run(underlay, create, hop=hop)
    index: int | None = None
    try:
        index = await netlink.run(workload, partial(_index_of, name=temporary), hop=hop)
        peers = tuple(a.ip for a in there.addresses)
        configure = partial(
            configure_end, index=index, side=here, alias=plan.alias, peer=(peers, plan.peer_mac)
        )
        await netlink.run(workload, configure, hop=hop)
        await wait_until_ready(netlink, ((workload, index, here),), hop=hop)
    except BaseException as exc:
        with trio.move_on_after(_ROLLBACK_GRACE, shield=True):
            try:
                await netlink.run(workload, partial(_delete, index=index, name=temporary), hop=hop)
            except TrionsmError as failed:  # report the first failure; say what may remain
                exc.add_note(f"rolling back {plan.alias} failed, it may remain: {failed}")
        raise
    return VxlanEnd(
        connection_id=connection_id,
        end=WireEnd(workload, here.ifname, index),
        underlay=underlay,
        local_ip=str(plan.local),
        remote_ip=str(plan.remote),
        vni=vni,
        port=port,
        mtu=made_mtu,
    )


def _tunnel(local_ip: str, remote_ip: str, hop: str | None) -> tuple[Address, Address]:
    addresses = []
    for what, text in (("local tunnel address", local_ip), ("remote tunnel address", remote_ip)):
        try:
            addresses.append(ipaddress.ip_address(text.strip()))
        except ValueError:
            raise InvalidArgument(f"{what} {text!r} is not an IP address", hop=hop) from None
    local, remote = addresses
    if local.version != remote.version:
        raise InvalidArgument(
            f"tunnel addresses {local} and {remote} are of different families", hop=hop
        )
    if local == remote:
        raise InvalidArgument(f"tunnel addresses are both {local}", hop=hop)
    return local, remote


# --- jobs: run on a handle thread inside a namespace -----------------------------------------


def _create_vxlan(
    handle: Handle,
    *,
    name: str,
    local: Address,
    remote: Address,
    vni: int,
    port: int,
    mtu: int,
    mac: str,
    target: Namespace,
    hop: str | None,
) -> int:
    """In the underlay: find the interface holding ``local``, make the device in ``target``."""
    ipr, here = handle.ipr, handle.namespace
    lower = lower_link(handle, local=local)
    if lower is None:
        raise FailedPrecondition(
            f"no interface in the underlay namespace {here} holds the tunnel address {local}",
            hop=hop,
        )
    lower_mtu: int = lower.get("mtu")
    chosen = allowed_mtu(lower_mtu, local.version, mtu)
    if chosen < 68:
        raise FailedPrecondition(
            f"the underlay interface {lower.get('ifname')} in {here} (MTU {lower_mtu}) leaves "
            f"{chosen} bytes for VXLAN; at least 68 are needed",
            hop=hop,
        )
    six = "6" if local.version == 6 else ""
    spec = {
        "vxlan_id": vni,
        f"vxlan_local{six}": str(local),
        f"vxlan_group{six}": str(remote),
        "vxlan_link": lower["index"],
        "vxlan_port": port,
        "vxlan_learning": 0,
    }
    fd = open_namespace(target, hop=hop)
    try:
        what = f"creating vxlan {vni} ({local} -> {remote}:{port}) from {here} into {target}"
        try:
            with step(what):
                ipr.link(
                    "add", ifname=name, kind="vxlan", address=mac, mtu=chosen, net_ns_fd=fd, **spec
                )
        except KernelFailure as exc:
            if exc.code != errno.EEXIST:
                raise
            refused = VniInUse(
                f"{what}: the underlay {here} has a vxlan device with VNI {vni} on port {port}",
                hop=hop,
            )
            refused.vni = vni
            raise refused from exc
    finally:
        os.close(fd)
    return chosen


def lower_link(handle: Handle, *, local: Address) -> Any | None:
    """The underlay interface holding the tunnel address ``local`` (its link message), or None."""
    ipr, here = handle.ipr, handle.namespace
    with step(f"looking for the interface holding {local} in {here}"):
        holders = [
            a["index"]
            for a in ipr.addr("dump")
            if a.get("IFA_LOCAL", a.get("IFA_ADDRESS")) == str(local)
        ]
    if not holders:
        return None
    with step(f"reading the underlay interface #{holders[0]} in {here}"):
        (lower,) = ipr.link("get", index=holders[0])
    return lower


def _index_of(handle: Handle, *, name: str) -> int:
    with step(f"reading the new vxlan {name} in {handle.namespace}"):
        (link,) = handle.ipr.link("get", ifname=name)
    index: int = link["index"]
    return index


def _delete(handle: Handle, *, index: int | None, name: str) -> None:
    """Delete the device (by index once known, else by its temporary name) and sweep the policy
    rules that pointed at it."""
    if index is not None:
        delete_index(handle, index=index)
    else:
        with step(f"deleting {name} in {handle.namespace}"), unless(errno.ENODEV):
            handle.ipr.link("del", ifname=name)
    remove_orphan_rules(handle.ipr, handle.namespace)
