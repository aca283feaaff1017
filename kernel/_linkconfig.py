"""One end of a wire, configured in its own namespace (sync jobs for a handle thread, shared by
the veth and the vxlan wires).

:func:`configure_end` gives an interface its final name and the alias in one message, its
addresses (IPv6 with ``nodad``), sets it up, adds permanent neighbour entries for the other end's
addresses (we choose both MAC addresses, so no ARP or neighbour discovery is needed on a
point-to-point wire), then its routes and policy routes. :func:`wait_until_ready` waits until an
end can carry traffic; :func:`random_mac` and :func:`delete_index` are the small pieces both wire
kinds need.
"""

from __future__ import annotations

import errno
import secrets
from functools import partial
from typing import Any

import trio

from ._handles import Handle, KernelFailure, Lane, step
from ._netlink import Netlink
from ._netns import Namespace
from ._routes import add_policy, add_route, unless
from ._wireplan import Address, SidePlan

__all__ = ["configure_end", "delete_index", "random_mac", "wait_until_ready"]

_IFA_F_NODAD = 0x02
_NUD_PERMANENT = 0x80
_RTN_LOCAL = 2
_UP_TIMEOUT = 2.0  # then the wire is returned anyway: liveness checks will tell
_READY_STATES = ("UP", "UNKNOWN")  # a vxlan device reports UNKNOWN: it has no carrier of its own


def configure_end(
    handle: Handle,
    *,
    index: int,
    side: SidePlan,
    alias: str,
    peer: tuple[tuple[Address, ...], str],
) -> None:
    ipr, here = handle.ipr, handle.namespace
    with handle.lock:  # the check and the add must not interleave with another wire's
        _check_addresses_free(ipr, side, here)
        with step(f"naming the interface {side.ifname!r} in {here}"):
            ipr.link("set", index=index, ifname=side.ifname, ifalias=alias)
        for address in side.addresses:
            flags = _IFA_F_NODAD if address.version == 6 else 0
            with step(f"adding address {address} to {side.ifname} in {here}"):
                ipr.addr(
                    "add",
                    index=index,
                    address=str(address.ip),
                    prefixlen=address.network.prefixlen,
                    flags=flags,
                )
    with step(f"setting {side.ifname} up in {here}"):
        ipr.link("set", index=index, state="up")
    peer_addresses, peer_mac = peer
    neighbours = [(ip, peer_mac) for ip in peer_addresses] + list(side.neighbors)
    for ip, mac in neighbours:
        with step(f"adding neighbour {ip} ({mac}) on {side.ifname} in {here}"):
            ipr.neigh("replace", dst=str(ip), lladdr=mac, ifindex=index, state=_NUD_PERMANENT)
    for route in side.routes:
        add_route(ipr, index, route, table=None, what=f"on {side.ifname} in {here}")
    if side.policies:
        with handle.lock:  # table choice and rule: atomic among this namespace's wires
            for policy in side.policies:
                add_policy(ipr, index, policy, f"on {side.ifname} in {here}")


def random_mac() -> str:
    """A random locally administered unicast MAC."""
    octets = bytearray(secrets.token_bytes(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{octet:02x}" for octet in octets)


def _check_addresses_free(ipr: Any, side: SidePlan, here: Namespace) -> None:
    """Refuse an address another interface of the namespace has: the kernel would accept it.

    A route lookup answers "local" for every address assigned in the namespace, on any
    interface, up or down; unlike an address dump it costs the same with 1,000 interfaces
    (0.4 ms against 25 ms for 400 addresses here).
    """
    for address in side.addresses:
        try:
            (route,) = ipr.route("get", dst=str(address.ip))
        except Exception:  # no route at all: certainly not local
            continue
        if route.get("type") == _RTN_LOCAL:
            raise KernelFailure(
                errno.EADDRINUSE,
                f"address {address.ip} for {side.ifname} is already assigned in {here}",
            )


def delete_index(handle: Handle, *, index: int) -> None:
    """Delete interface ``index`` (gone already is fine: its peer took it along)."""
    with step(f"deleting interface #{index} in {handle.namespace}"), unless(errno.ENODEV):
        handle.ipr.link("del", index=index)


async def wait_until_ready(
    netlink: Netlink, ends: tuple[tuple[Namespace, int, SidePlan], ...], *, hop: str | None
) -> None:
    """Wait (briefly, bounded) until every end in ``ends`` can carry traffic: operationally up
    (or UNKNOWN, as a vxlan device reports), and every address of theirs answered as local by the
    routing table.

    The kernel finishes bringing a link up in deferred work: carrier is applied from its
    link-watch work, and an IPv6 address gets its local route from the address-configuration
    work, even with ``nodad`` (its flags look final before that). Until then the first packets
    are dropped (``Ip6InAddrErrors``) and the first ping waits for a retransmit: 2.5 % of wires
    lost their first IPv6 echo here. Ready after 1-3 ms as a rule.
    """
    delay = 0.001
    with trio.move_on_after(_UP_TIMEOUT):
        for namespace, index, side in ends:
            job = partial(_ready, index=index, addresses=tuple(a.ip for a in side.addresses))
            while not await netlink.run(namespace, job, lane=Lane.PROBE, hop=hop):
                await trio.sleep(delay)
                delay = min(delay * 2, 0.05)


def _ready(handle: Handle, *, index: int, addresses: tuple[Address, ...]) -> bool:
    with step(f"reading interface #{index} in {handle.namespace}"):
        (link,) = handle.ipr.link("get", index=index)
    if link.get("operstate") not in _READY_STATES:
        return False
    for address in addresses:
        try:
            (route,) = handle.ipr.route("get", dst=str(address))
        except Exception:  # no route to it yet
            return False
        if route.get("type") != _RTN_LOCAL:
            return False
    return True
