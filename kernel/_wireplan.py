"""What a KERNEL wire should look like, checked before the kernel is touched (pure, no I/O).

:func:`plan_wire` turns a connection id, two interface names, an MTU and NSM's ``IPContext`` into
a :class:`WirePlan`: one :class:`SidePlan` per end. ``src_*`` belongs to the client (NSC) end and
``dst_*`` to the endpoint (NSE) end. A route with an empty ``nextHop`` goes through the other end's
first address of the same family (NSM's rule); a route to exactly that address, or one with no
such address, is a link route on the interface; any other gateway is added ``onlink`` (the
point-to-point /32 and /128 addresses share no subnet). ``ip_neighbors`` and ``policies`` apply to
the client end. Every error is an ``InvalidArgument`` naming the hop and the offending field.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from urllib.parse import quote, unquote

import attrs

from trionsm.api.connectioncontext import IpContext, PolicyRoute, Route
from trionsm.errors import InvalidArgument

__all__ = [
    "ALIAS_PREFIX",
    "DEFAULT_CLIENT_IFNAME",
    "IFNAME_MAX",
    "Address",
    "Network",
    "PolicyPlan",
    "RoutePlan",
    "SidePlan",
    "WireAlias",
    "WirePlan",
    "alias_for",
    "check_ifname",
    "parse_alias",
    "plan_wire",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

ALIAS_PREFIX = "trionsm:"
DEFAULT_CLIENT_IFNAME = "nsm-1"
IFNAME_MAX = 15  # IFNAMSIZ - 1
_ALIAS_MAX = 255  # IFALIASZ - 1
_OWNER_SAFE = "@/+=,~"  # besides letters, digits and "_.-": readable, and never ":" or "%"
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "ipv6-icmp": 58, "sctp": 132}


@attrs.frozen
class RoutePlan:
    """A route on one end: ``gateway`` None means a link route (``scope link``)."""

    prefix: Network
    gateway: Address | None


@attrs.frozen
class PolicyPlan:
    """One policy route (``ip rule`` plus a table of its own) for one address family."""

    family: int  # 4 or 6
    source: Network | None
    protocol: int | None
    dst_ports: tuple[int, int] | None
    src_ports: tuple[int, int] | None
    routes: tuple[RoutePlan, ...]


@attrs.frozen
class SidePlan:
    """One end of the wire."""

    ifname: str
    addresses: tuple[Interface, ...]
    routes: tuple[RoutePlan, ...]
    neighbors: tuple[tuple[Address, str], ...] = ()
    policies: tuple[PolicyPlan, ...] = ()


@attrs.frozen
class WirePlan:
    """Both ends; ``mtu`` 0 keeps the kernel's default."""

    connection_id: str
    alias: str
    mtu: int
    client: SidePlan
    endpoint: SidePlan


@attrs.frozen
class WireAlias:
    """What an interface's alias says: which forwarder made it, for which client connection.

    Attributes:
        owner: the forwarder's name (``""`` for an alias without one).
        connection_id: the NSC's connection id (path segment 0's id: stable across refreshes,
            re-requests and reselects, so a new forwarder recognises the same client's old wire).
    """

    owner: str
    connection_id: str

    def __str__(self) -> str:
        return alias_for(self.connection_id, self.owner)


def alias_for(connection_id: str, owner: str = "") -> str:
    """The alias every interface of ``connection_id`` made by forwarder ``owner`` carries:
    ``trionsm:<owner>:<connection id>``, the owner percent-encoded so that it holds no ``:``
    (``trionsm:<connection id>`` without an owner). :func:`parse_alias` reads it back."""
    if not owner:
        return ALIAS_PREFIX + connection_id
    return f"{ALIAS_PREFIX}{quote(owner, safe=_OWNER_SAFE)}:{connection_id}"


def parse_alias(alias: str | None) -> WireAlias | None:
    """The :class:`WireAlias` of an interface alias, or None when it is not one of ours.

    ``trionsm:<owner>:<id>`` gives both; ``trionsm:<id>`` (no second ``:``) gives no owner.
    """
    if not alias or not alias.startswith(ALIAS_PREFIX):
        return None
    rest = alias.removeprefix(ALIAS_PREFIX)
    owner, colon, connection_id = rest.partition(":")
    if not colon:
        return WireAlias("", rest) if rest else None
    if not owner or not connection_id:
        return None
    return WireAlias(unquote(owner), connection_id)


def check_ifname(name: str, field: str, *, hop: str | None) -> str:
    """``name`` if Linux accepts it as an interface name, else InvalidArgument naming ``field``."""
    size = len(name.encode())
    if size > IFNAME_MAX:
        raise InvalidArgument(
            f"{field} {name!r} is {size} bytes long; Linux allows at most {IFNAME_MAX}", hop=hop
        )
    if not name or name in (".", "..") or any(c in name for c in "/:") or not name.isprintable():
        raise InvalidArgument(f"{field} {name!r} is not a valid interface name", hop=hop)
    if any(c.isspace() for c in name):
        raise InvalidArgument(f"{field} {name!r} contains white space", hop=hop)
    return name


def plan_wire(
    connection_id: str,
    client_ifname: str,
    endpoint_ifname: str,
    *,
    mtu: int,
    ip_context: IpContext | None,
    hop: str | None,
    owner: str = "",
) -> WirePlan:
    """Check everything and build the plan. ``client_ifname`` defaults to ``nsm-1`` and
    ``endpoint_ifname`` to ``nsm-`` plus 11 hex digits of the connection id's SHA-1; the alias
    is ``alias_for(connection_id, owner)``.

    Raises:
        InvalidArgument: naming the field and what is wrong with it.
    """
    alias = alias_for(connection_id, owner)
    if not connection_id or not connection_id.isprintable():
        raise InvalidArgument(f"connection id {connection_id!r} is empty or unprintable", hop=hop)
    if len(alias.encode()) > _ALIAS_MAX:
        raise InvalidArgument("connection id is too long for an interface alias", hop=hop)
    if mtu != 0 and not 68 <= mtu <= 65535:
        raise InvalidArgument(f"MTU {mtu} is outside 68..65535", hop=hop)
    client_ifname = check_ifname(
        client_ifname or DEFAULT_CLIENT_IFNAME, "client interface", hop=hop
    )
    digest = hashlib.sha1(connection_id.encode()).hexdigest()[:11]
    endpoint_ifname = check_ifname(
        endpoint_ifname or f"nsm-{digest}", "endpoint interface", hop=hop
    )
    ctx = ip_context or IpContext()
    src = tuple(_interface(a, "src_ip_addrs", hop) for a in ctx.src_ip_addrs)
    dst = tuple(_interface(a, "dst_ip_addrs", hop) for a in ctx.dst_ip_addrs)
    if mtu and mtu < 1280 and any(a.version == 6 for a in (*src, *dst)):
        raise InvalidArgument(f"MTU {mtu} is below IPv6's minimum of 1280", hop=hop)
    neighbors = tuple(_neighbor(n.ip, n.hardware_address, hop) for n in ctx.ip_neighbors)
    client = SidePlan(
        ifname=client_ifname,
        addresses=src,
        routes=tuple(_route(r, dst, "src_routes", hop) for r in ctx.src_routes),
        neighbors=neighbors,
        policies=tuple(p for policy in ctx.policies for p in _policies(policy, dst, hop)),
    )
    endpoint = SidePlan(
        ifname=endpoint_ifname,
        addresses=dst,
        routes=tuple(_route(r, src, "dst_routes", hop) for r in ctx.dst_routes),
    )
    return WirePlan(connection_id, alias, mtu, client, endpoint)


def _interface(text: str, field: str, hop: str | None) -> Interface:
    try:
        return ipaddress.ip_interface(text.strip())
    except ValueError:
        raise InvalidArgument(f"{field}: {text!r} is not an IP address or CIDR", hop=hop) from None


def _route(route: Route, peer: Sequence[Interface], field: str, hop: str | None) -> RoutePlan:
    try:
        prefix = ipaddress.ip_network(route.prefix.strip(), strict=False)
    except ValueError:
        raise InvalidArgument(f"{field}: prefix {route.prefix!r} is not a CIDR", hop=hop) from None
    gateway: Address | None
    if route.next_hop:
        try:
            gateway = ipaddress.ip_address(route.next_hop.strip())
        except ValueError:
            raise InvalidArgument(
                f"{field}: nextHop {route.next_hop!r} is not an IP address", hop=hop
            ) from None
        if gateway.version != prefix.version:
            raise InvalidArgument(
                f"{field}: nextHop {gateway} and prefix {prefix} are of different families", hop=hop
            )
    else:
        gateway = next((a.ip for a in peer if a.version == prefix.version), None)
    if gateway is not None and prefix.num_addresses == 1 and gateway in prefix:
        gateway = None  # a route to the peer itself: on the link
    return RoutePlan(prefix, gateway)


def _neighbor(ip: str, mac: str, hop: str | None) -> tuple[Address, str]:
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        raise InvalidArgument(f"ip_neighbors: {ip!r} is not an IP address", hop=hop) from None
    if not _MAC.fullmatch(mac):
        raise InvalidArgument(f"ip_neighbors: {mac!r} is not a MAC address", hop=hop)
    return address, mac.lower()


def _policies(policy: PolicyRoute, peer: Sequence[Interface], hop: str | None) -> list[PolicyPlan]:
    source: Network | None = None
    if policy.from_:
        try:
            source = ipaddress.ip_network(policy.from_.strip(), strict=False)
        except ValueError:
            raise InvalidArgument(
                f"policies: from {policy.from_!r} is not an IP", hop=hop
            ) from None
    protocol = _protocol(policy.proto, hop)
    dst_ports = _ports(policy.dst_port, "dst_port", hop)
    src_ports = _ports(policy.src_port, "src_port", hop)
    routes = tuple(_route(r, peer, "policies.routes", hop) for r in policy.routes)
    families = sorted({r.prefix.version for r in routes} or {a.version for a in peer})
    if source is not None:
        if routes and {r.prefix.version for r in routes} != {source.version}:
            raise InvalidArgument(f"policies: from {source} and its routes mix families", hop=hop)
        families = [source.version]
    plans = []
    for family in families:
        table = tuple(r for r in routes if r.prefix.version == family) or (
            _route(Route(prefix="0.0.0.0/0" if family == 4 else "::/0"), peer, "policies", hop),
        )
        plans.append(PolicyPlan(family, source, protocol, dst_ports, src_ports, table))
    return plans


def _protocol(text: str, hop: str | None) -> int | None:
    text = text.strip().lower()
    if not text:
        return None
    number = _PROTOCOLS.get(text, int(text) if text.isdigit() and len(text) <= 3 else -1)
    if not 0 <= number <= 255:
        raise InvalidArgument(f"policies: proto {text!r} is not an IP protocol number", hop=hop)
    return number


def _ports(text: str, field: str, hop: str | None) -> tuple[int, int] | None:
    text = text.strip()
    if not text:
        return None
    low, _, high = text.partition("-")
    if not all(p.isdigit() and len(p) <= 5 for p in (low, high or low)):
        raise InvalidArgument(f"policies: {field} {text!r} is not N or N-M", hop=hop)
    first, last = int(low), int(high or low)
    if not 0 <= first <= last <= 65535:
        raise InvalidArgument(f"policies: {field} {text!r} is outside 0..65535", hop=hop)
    return first, last
