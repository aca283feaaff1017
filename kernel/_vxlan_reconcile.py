"""Reconcile for VXLAN ends: read a leftover vxlan end and compare it with the end a request plans.

A remote connection's side is one vxlan device (:mod:`._vxlan`), so a restarted forwarder adopts
it the way it adopts a veth pair (:mod:`._reconcile`): :func:`inspect_vxlan_end` reads the
interface the plan names in the workload's namespace, and the underlay interface holding the
plan's tunnel address, and :func:`compare_vxlan` says whether it is exactly that end: the
alias, a vxlan device, the VNI, both tunnel addresses, the UDP port, learning off, its tunnel
in the underlay namespace (the link namespace the device reports is the underlay, as the
workload's namespace numbers it, when the kernel tells) and bound to the interface holding the
local address, this side's MAC, the MTU it would be made with, up, exactly the planned
addresses, routes, policy routes and the permanent neighbour entries for the peer's addresses at
the peer's MAC. A match is a :class:`~trionsm.kernel.VxlanEnd` to adopt as it is (same
interface, same index, nothing changed); otherwise the inspection says why, for the caller to
replace it (or refuse it, if another connection's alias holds the name).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from functools import partial
from typing import Any

import attrs
import trio

from ._handles import Handle, Lane, step
from ._netlink import Netlink, current_netlink
from ._netns import Namespace, open_namespace, resolve_namespace
from ._reconcile import Interface, compare_end, observe
from ._veth import WireEnd
from ._vxlan import VxlanEnd, VxlanPlan, allowed_mtu, lower_link
from ._wireplan import Address

__all__ = ["VxlanInspection", "compare_vxlan", "inspect_vxlan_end"]


@attrs.frozen
class Lower:
    """The underlay interface holding a tunnel's local address: its index and MTU."""

    index: int
    mtu: int


@attrs.frozen
class VxlanInspection:
    """What holds a vxlan end's name now, and whether it is the planned end.

    Attributes:
        end: the interface of that name, None where the name is free.
        wire: the end to adopt when it is exactly the plan's, else None.
        difference: why it is not (empty when ``wire`` is set).
    """

    end: Interface | None
    wire: VxlanEnd | None
    difference: str

    @property
    def ends(self) -> list[Interface]:
        return [self.end] if self.end is not None else []


async def inspect_vxlan_end(
    plan: VxlanPlan,
    underlay_ns: Namespace | str,
    netns: Namespace | str,
    *,
    hop: str | None = None,
    netlink: Netlink | None = None,
) -> VxlanInspection:
    """Read the end :func:`~trionsm.kernel.create_vxlan_end` would make for ``plan`` (from
    :func:`~trionsm.kernel.plan_vxlan_end`, with the same arguments), and compare it with the
    plan (:func:`compare_vxlan`). Nothing is changed.

    Two reads at once in the ``PROBE`` lane: the interface in ``netns`` (with the number
    ``netns`` gives the underlay), and the underlay interface holding the local address.

    Raises:
        NotFound, PermissionDenied, InvalidArgument: a namespace is missing or cannot be entered.
        TrionsmError: the kernel refused a lookup.
    """
    netlink = netlink or current_netlink()
    underlay = await resolve_namespace(underlay_ns, hop=hop)
    workload = await resolve_namespace(netns, hop=hop)
    seen: dict[str, Any] = {}

    async def read_end() -> None:
        job = partial(_observe_vxlan, ifname=plan.here.ifname, underlay=underlay, hop=hop)
        seen["end"] = await netlink.run(workload, job, lane=Lane.PROBE, hop=hop)

    async def read_lower() -> None:
        job = partial(_lower, local=plan.local)
        seen["lower"] = await netlink.run(underlay, job, lane=Lane.PROBE, hop=hop)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_end)
        nursery.start_soon(read_lower)
    end, underlay_nsid = seen["end"]
    same = underlay.key == workload.key
    difference = compare_vxlan(
        plan, end, lower=seen["lower"], underlay_nsid=underlay_nsid, same_namespace=same
    )
    wire = None
    if not difference:
        wire = VxlanEnd(
            connection_id=plan.wire.connection_id,
            end=WireEnd(workload, end.ifname, end.index),
            underlay=underlay,
            local_ip=str(plan.local),
            remote_ip=str(plan.remote),
            vni=plan.vni,
            port=plan.port,
            mtu=end.mtu,
        )
    return VxlanInspection(end, wire, difference)


def compare_vxlan(
    plan: VxlanPlan,
    end: Interface | None,
    *,
    lower: Lower | None,
    underlay_nsid: int | None,
    same_namespace: bool,
) -> str:
    """Why ``end`` is not exactly the vxlan end of ``plan`` ("" when it is). Pure.

    Args:
        lower: the underlay interface holding the plan's local address (None: none does).
        underlay_nsid: the underlay as ``end``'s namespace numbers it (None: not known; the
            device's link namespace is then not compared).
        same_namespace: the underlay is ``end``'s own namespace.
    """
    if end is None:
        return f"the vxlan end {plan.here.ifname} is missing"
    if end.alias != plan.alias:
        return f"the vxlan end {end} does not carry {plan.alias}"
    tunnel = end.tunnel
    if end.kind != "vxlan" or tunnel is None:
        return f"{end} is a {end.kind or '?'} interface, not a vxlan device"
    if tunnel.vni != plan.vni:
        return f"{end} has VNI {tunnel.vni}, not {plan.vni}"
    if (_ip(tunnel.local), _ip(tunnel.remote)) != (plan.local, plan.remote):
        return (
            f"{end} tunnels {tunnel.local or '?'} -> {tunnel.remote or '?'}, "
            f"not {plan.local} -> {plan.remote}"
        )
    if tunnel.port != plan.port:
        return f"{end} uses UDP port {tunnel.port}, not {plan.port}"
    if tunnel.learning:
        return f"{end} learns remote addresses (planned: learning off)"
    if tunnel.link_netnsid is None:
        if not same_namespace:
            return f"{end} has its tunnel in its own namespace, not in the underlay"
    elif underlay_nsid is not None and tunnel.link_netnsid != underlay_nsid:
        return f"{end} has its tunnel in another namespace than the underlay"
    if lower is None:
        return f"no underlay interface holds the tunnel address {plan.local} any more"
    if tunnel.lower_index != lower.index:
        return (
            f"{end} is bound to underlay interface #{tunnel.lower_index}, not to "
            f"#{lower.index} holding {plan.local}"
        )
    if end.mac != plan.mac:
        return f"{end} has MAC {end.mac}, not {plan.mac}"
    mtu = allowed_mtu(lower.mtu, plan.local.version, plan.wire.mtu)
    return compare_end(end, plan.here, mtu=mtu, peer=(plan.there.addresses, plan.peer_mac))


def _ip(text: str) -> Address | None:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(text)
    return None


# --- jobs: run on a handle thread inside a namespace -----------------------------------------


def _observe_vxlan(
    handle: Handle, *, ifname: str, underlay: Namespace, hop: str | None
) -> tuple[Interface | None, int | None]:
    """The interface ``ifname``, and the number this namespace gives ``underlay`` (None when the
    interface reports no link namespace, or the number cannot be read)."""
    end = observe(handle, ifname=ifname)
    if end is None or end.tunnel is None or end.tunnel.link_netnsid is None:
        return end, None
    fd = open_namespace(underlay, hop=hop)
    try:
        with step(f"reading the number {handle.namespace} gives {underlay}"):
            try:
                reply = handle.ipr.get_netnsid(fd=fd)
            except Exception:  # an old kernel or pyroute2: the relation is not readable
                return end, None
    finally:
        os.close(fd)
    nsid = reply.get("nsid") if isinstance(reply, dict) else None
    return end, nsid if isinstance(nsid, int) else None  # -1: it has none (not the link netns)


def _lower(handle: Handle, *, local: Address) -> Lower | None:
    link = lower_link(handle, local=local)
    return None if link is None else Lower(link["index"], link.get("mtu"))
