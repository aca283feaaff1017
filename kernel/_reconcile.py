"""Reconcile: a forwarder's interfaces as the kernel has them, found, compared and removed exactly.

Every interface a forwarder makes carries the alias ``trionsm:<forwarder>:<client connection id>``
(:func:`~trionsm.kernel._wireplan.alias_for`), and the kernel keeps it after the forwarder is
gone. A restarted forwarder therefore finds its wires without any state of its own:

* :func:`scan_namespaces` lists, in every network namespace of the host (``/run/netns`` and every
  process's, deduplicated by inode) or in the ones given, the interfaces whose alias names an
  owner: the candidates a restarted forwarder keeps for a grace period, then removes unclaimed.
* :func:`inspect_wire` reads the two interfaces a KERNEL request names (by namespace and name)
  and compares them with what the request describes (:func:`compare`): the same alias, veth
  peers of each other, the MTU, up, exactly the planned addresses, our routes and policy routes,
  the permanent neighbours. A match is a :class:`~trionsm.kernel.KernelWire` to adopt as it is
  (no flap: same interfaces, same indexes); otherwise the :class:`Inspection` says why and what
  holds each name (for the caller to replace a stale end or refuse a foreign one).
* A remote connection's side is one vxlan end: ``_vxlan_reconcile``'s ``inspect_vxlan_end``
  compares it with its plan the same way (plus VNI, tunnel, underlay and MAC), on the
  :class:`Interface` read here (its :class:`VxlanTunnel`).
* :func:`remove_interfaces` deletes interfaces exactly: by namespace, index *and* alias, each
  checked just before its deletion. A name or an alias alone is not enough: after a reselect a
  new forwarder's wire has the old one's name, and the old forwarder's late Close must not touch
  it.

Listings and inspections run in the ``PROBE`` lane, removals in ``TEARDOWN``; nothing here holds
a namespace after its job (the scan lets go of the namespaces it entered as soon as it is done).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import ipaddress
import os
import socket
from collections.abc import Iterable
from functools import partial
from typing import Any

import attrs
import trio

from trionsm.errors import NotFound, TrionsmError

from ._handles import Handle, Lane, step
from ._netlink import Netlink, current_netlink
from ._netns import Namespace, _candidates, resolve_namespace
from ._routes import RTPROT_TRIONSM, remove_orphan_rules, remove_policies, unless
from ._veth import KernelWire, WireEnd
from ._wireplan import Interface as IpInterface
from ._wireplan import PolicyPlan, SidePlan, WireAlias, WirePlan, parse_alias

__all__ = [
    "Inspection",
    "Interface",
    "VxlanTunnel",
    "compare",
    "compare_end",
    "inspect_wire",
    "lookup",
    "remove_interfaces",
    "scan_namespaces",
]

_NUD_PERMANENT = 0x80
_MAIN_TABLE = 254
_VETH_DEFAULT_MTU = 1500


@attrs.frozen
class VxlanTunnel:
    """A vxlan device's tunnel as the kernel reports it.

    Attributes:
        vni, port: the VXLAN network identifier and UDP port.
        local, remote: the tunnel's addresses (``""`` when unset).
        lower_index: the interface the tunnel is bound to, an index in the tunnel's namespace.
        link_netnsid: the tunnel's namespace as the device's own namespace numbers it (None:
            the tunnel is in the device's own namespace).
        learning: whether the device learns remote addresses.
    """

    vni: int
    port: int
    local: str
    remote: str
    lower_index: int | None
    link_netnsid: int | None
    learning: bool


@attrs.frozen
class Interface:
    """An interface as the kernel has it now (what a comparison or an exact removal needs).

    ``routes`` are ours (protocol ``RTPROT_TRIONSM``) in the main table through this interface,
    ``neighbors`` its permanent neighbour entries, ``policies`` our policy routes through it
    (rule and table), each in the shape :func:`compare` builds from a plan.
    """

    namespace: Namespace
    ifname: str
    index: int
    alias: str
    kind: str = ""
    peer_index: int | None = None
    mtu: int = 0
    up: bool = False
    addresses: frozenset[str] = frozenset()
    routes: frozenset[tuple[str, str | None]] = frozenset()
    neighbors: frozenset[tuple[str, str]] = frozenset()
    mac: str = ""
    policies: tuple[tuple[Any, ...], ...] = ()
    tunnel: VxlanTunnel | None = None

    @property
    def parsed(self) -> WireAlias | None:
        """Its alias read back (None: not one of ours)."""
        return parse_alias(self.alias)

    @property
    def key(self) -> tuple[tuple[int, int], int]:
        """``(namespace key, index)``: which interface this is, host-wide."""
        return (self.namespace.key, self.index)

    def __str__(self) -> str:
        return f"{self.ifname} (#{self.index}, {self.alias or 'no alias'}) in {self.namespace}"


@attrs.frozen
class Inspection:
    """What holds a KERNEL wire's two names now, and whether it is the planned wire.

    Attributes:
        client, endpoint: the interface of each name, None where the name is free.
        wire: the wire to adopt when both ends are exactly the plan's, else None.
        difference: why it is not (empty when ``wire`` is set).
    """

    client: Interface | None
    endpoint: Interface | None
    wire: KernelWire | None
    difference: str

    @property
    def ends(self) -> list[Interface]:
        return [end for end in (self.client, self.endpoint) if end is not None]


async def scan_namespaces(
    owner: str,
    *,
    namespaces: Iterable[Namespace | str] | None = None,
    hop: str | None = None,
    netlink: Netlink | None = None,
) -> list[Interface]:
    """Every interface whose alias names ``owner``, in ``namespaces`` (default: every network
    namespace on this host). Namespaces that vanish or cannot be entered meanwhile are skipped.

    Blocks for one listing per namespace (``PROBE`` lane, as many at once as the lane allows);
    the namespaces entered are let go of afterwards. Cancellable.
    """
    netlink = netlink or current_netlink()
    if namespaces is None:
        found = await trio.to_thread.run_sync(_host_namespaces, abandon_on_cancel=True)
    else:
        found = []
        for namespace in namespaces:
            with contextlib.suppress(TrionsmError):
                found.append(await resolve_namespace(namespace, hop=hop))
    interfaces: list[Interface] = []

    async def scan(namespace: Namespace) -> None:
        job = partial(_list_owned, owner=owner)
        try:
            interfaces.extend(await netlink.run(namespace, job, lane=Lane.PROBE, hop=hop))
        except TrionsmError:  # gone meanwhile, or not ours to enter: nothing of ours to find
            return
        finally:
            netlink.forget(namespace)  # a namespace must not outlive its pod because we looked

    async with trio.open_nursery() as nursery:
        for namespace in {n.key: n for n in found}.values():
            nursery.start_soon(scan, namespace)
    return interfaces


async def lookup(
    namespace: Namespace | str,
    ifname: str,
    *,
    hop: str | None = None,
    netlink: Netlink | None = None,
) -> Interface | None:
    """The interface ``ifname`` in ``namespace`` as the kernel has it now, or None (``PROBE``).

    Raises:
        NotFound, PermissionDenied, InvalidArgument: the namespace is missing or not ours.
        TrionsmError: the kernel refused the lookup.
    """
    netlink = netlink or current_netlink()
    resolved = await resolve_namespace(namespace, hop=hop)
    job = partial(observe, ifname=ifname)
    return await netlink.run(resolved, job, lane=Lane.PROBE, hop=hop)


async def inspect_wire(
    plan: WirePlan,
    client_ns: Namespace | str,
    endpoint_ns: Namespace | str,
    *,
    hop: str | None = None,
    netlink: Netlink | None = None,
) -> Inspection:
    """Read the interfaces named by ``plan`` in the two namespaces and compare them with it.

    Two lookups at once (``PROBE`` lane); nothing is changed. A recorded :class:`Namespace`
    whose path went stale is found again by its inode (see :meth:`Netlink.run`).

    Raises:
        NotFound, PermissionDenied, InvalidArgument: a namespace is missing or cannot be entered.
        TrionsmError: the kernel refused a lookup.
    """
    client = await resolve_namespace(client_ns, hop=hop)
    endpoint = await resolve_namespace(endpoint_ns, hop=hop)
    seen: dict[str, Interface | None] = {}

    async def look(side: str, namespace: Namespace, ifname: str) -> None:
        seen[side] = await lookup(namespace, ifname, hop=hop, netlink=netlink)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(look, "client", client, plan.client.ifname)
        nursery.start_soon(look, "endpoint", endpoint, plan.endpoint.ifname)
    ends = seen["client"], seen["endpoint"]
    difference = compare(plan, *ends)
    wire = None
    if not difference:
        client_end, endpoint_end = ends
        assert client_end is not None
        assert endpoint_end is not None
        wire = KernelWire(
            connection_id=plan.connection_id,
            client=WireEnd(client, client_end.ifname, client_end.index),
            endpoint=WireEnd(endpoint, endpoint_end.ifname, endpoint_end.index),
            mtu=plan.mtu,
        )
    return Inspection(*ends, wire=wire, difference=difference)


def compare(plan: WirePlan, client: Interface | None, endpoint: Interface | None) -> str:
    """Why ``client`` and ``endpoint`` are not exactly the wire of ``plan`` ("" when they are).

    Pure. Checks: both exist with the plan's alias, are veth peers of each other, have the
    plan's MTU (the veth default when it gives none), are up, hold exactly the planned addresses
    (IPv6 link-local ones aside), and have the planned routes (ours, main table), policy routes
    and permanent neighbours (the peer's addresses at the peer's MAC, and the client's
    ``ip_neighbors``).
    """
    for name, end in (("client", client), ("endpoint", endpoint)):
        if end is None:
            return f"the {name} end is missing"
        if end.alias != plan.alias:
            return f"the {name} end {end} does not carry {plan.alias}"
    assert client is not None
    assert endpoint is not None
    if (client.kind, endpoint.kind) != ("veth", "veth"):
        return f"the ends are {client.kind or '?'} and {endpoint.kind or '?'}, not a veth pair"
    if client.peer_index != endpoint.index or endpoint.peer_index != client.index:
        return f"{client} and {endpoint} are not peers of each other"
    for end, side, peer in ((client, plan.client, endpoint), (endpoint, plan.endpoint, client)):
        peer_side = plan.endpoint if side is plan.client else plan.client
        mtu = plan.mtu or _VETH_DEFAULT_MTU
        difference = compare_end(end, side, mtu=mtu, peer=(peer_side.addresses, peer.mac))
        if difference:
            return difference
    return ""


def compare_end(
    end: Interface, side: SidePlan, *, mtu: int, peer: tuple[tuple[IpInterface, ...], str]
) -> str:
    """Why one end is not configured as ``side`` plans it ("" when it is). Pure.

    Checks the MTU, that it is up, exactly the planned addresses (IPv6 link-local ones aside),
    our routes (main table) and policy routes, and the permanent neighbours: ``peer``'s
    addresses at ``peer``'s MAC, and ``side``'s own ``ip_neighbors``.
    """
    if end.mtu != mtu:
        return f"{end} has MTU {end.mtu}, not {mtu}"
    if not end.up:
        return f"{end} is down"
    addresses = frozenset(str(a) for a in side.addresses)
    if end.addresses != addresses:
        return f"{end} has addresses {sorted(end.addresses)}, not {sorted(addresses)}"
    routes = frozenset(_route_key(r.prefix, r.gateway) for r in side.routes)
    if end.routes != routes:
        return f"{end} has routes {sorted(end.routes, key=str)}, not {sorted(routes, key=str)}"
    peer_addresses, peer_mac = peer
    wanted = {(str(a.ip), peer_mac) for a in peer_addresses}
    wanted |= {(str(ip), mac) for ip, mac in side.neighbors}
    if not wanted <= end.neighbors:
        return f"{end} lacks neighbour entries {sorted(wanted - end.neighbors)}"
    policies = tuple(sorted((_policy_key(p) for p in side.policies), key=repr))
    if end.policies != policies:
        return f"{end} has other policy routes than planned"
    return ""


async def remove_interfaces(
    interfaces: Iterable[Interface | tuple[Namespace, int, str]],
    *,
    hop: str | None = None,
    netlink: Netlink | None = None,
) -> int:
    """Delete exactly these interfaces: each by its namespace and index, and only if it still
    carries its alias (checked just before, on the same handle); the policy rules pointing at
    them go too. Idempotent: gone already (or its namespace gone) is fine. A namespace whose
    recorded path went stale (a ``/proc/<pid>`` path of a process that exited) is found again by
    its inode and its interfaces removed there; only a namespace no path names any more counts
    as gone (see :meth:`Netlink.run`). One ``TEARDOWN`` job per namespace, the namespaces
    concurrently.

    Returns:
        How many interfaces were deleted (the peer of a deleted veth goes along uncounted).

    Raises:
        TrionsmError: the kernel refused a deletion.
    """
    netlink = netlink or current_netlink()
    by_namespace: dict[tuple[int, int], tuple[Namespace, list[tuple[int, str]]]] = {}
    for item in interfaces:
        namespace, index, alias = (
            (item.namespace, item.index, item.alias) if isinstance(item, Interface) else item
        )
        by_namespace.setdefault(namespace.key, (namespace, []))[1].append((index, alias))
    removed: list[int] = []

    async def remove(namespace: Namespace, targets: list[tuple[int, str]]) -> None:
        job = partial(_remove_exact, targets=tuple(targets))
        # NotFound: no path names the namespace any more; it went, and the interfaces with it
        with contextlib.suppress(NotFound):
            removed.append(await netlink.run(namespace, job, lane=Lane.TEARDOWN, hop=hop))

    async with trio.open_nursery() as nursery:
        for namespace, targets in by_namespace.values():
            nursery.start_soon(remove, namespace, targets)
    return sum(removed)


# --- pure helpers ----------------------------------------------------------------------------


def _route_key(prefix: Any, gateway: Any) -> tuple[str, str | None]:
    return str(ipaddress.ip_network(prefix, strict=False)), (str(gateway) if gateway else None)


def _policy_key(policy: PolicyPlan) -> tuple[Any, ...]:
    source = str(policy.source) if policy.source is not None else None
    routes = tuple(sorted((_route_key(r.prefix, r.gateway) for r in policy.routes), key=str))
    return (policy.family, source, policy.protocol, policy.dst_ports, policy.src_ports, routes)


def _host_namespaces() -> list[Namespace]:
    """Every network namespace reachable on this host, once each (blocking; enters none)."""
    found: dict[tuple[int, int], Namespace] = {}
    for path in _candidates():
        try:
            stat = os.stat(path)
        except OSError:  # raced with an exiting process, or not ours to look at
            continue
        key = (stat.st_dev, stat.st_ino)
        if key not in found:
            found[key] = Namespace(url=f"file://{path}", path=path, dev=key[0], ino=key[1])
    return list(found.values())


# --- jobs: run on a handle thread inside the namespace ---------------------------------------


def _list_owned(handle: Handle, *, owner: str) -> list[Interface]:
    with step(f"listing interfaces in {handle.namespace}"):
        links = handle.ipr.link("dump")
    return [
        _interface(handle.namespace, link)
        for link in links
        if (parsed := parse_alias(link.get("ifalias"))) is not None and parsed.owner == owner
    ]


def _interface(namespace: Namespace, link: Any, **details: Any) -> Interface:
    return Interface(
        namespace=namespace,
        ifname=link.get("ifname"),
        index=link["index"],
        alias=link.get("ifalias") or "",
        kind=link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "",
        peer_index=link.get("IFLA_LINK"),
        mtu=link.get("mtu") or 0,
        up=bool(link["flags"] & 1),
        mac=(link.get("address") or "").lower(),
        tunnel=_vxlan_tunnel(link),
        **details,
    )


def _vxlan_tunnel(link: Any) -> VxlanTunnel | None:
    """The tunnel of a vxlan device's link message (None for any other kind)."""
    if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "vxlan":
        return None
    data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    if data is None:
        return None
    return VxlanTunnel(
        vni=data.get("IFLA_VXLAN_ID") or 0,
        port=data.get("IFLA_VXLAN_PORT") or 0,
        local=data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6") or "",
        remote=data.get("IFLA_VXLAN_GROUP") or data.get("IFLA_VXLAN_GROUP6") or "",
        lower_index=data.get("IFLA_VXLAN_LINK"),
        link_netnsid=link.get("IFLA_LINK_NETNSID"),
        learning=bool(data.get("IFLA_VXLAN_LEARNING")),
    )


def observe(handle: Handle, *, ifname: str) -> Interface | None:
    """The interface ``ifname`` with its addresses, our routes, neighbours and policy routes."""
    ipr, here = handle.ipr, handle.namespace
    with step(f"looking for {ifname} in {here}"):
        try:
            (link,) = ipr.link("get", ifname=ifname)
        except Exception as exc:
            if getattr(exc, "code", None) == errno.ENODEV:
                return None
            raise
    index = link["index"]
    with step(f"reading {ifname}'s addresses, routes and neighbours in {here}"):
        addresses = frozenset(
            f"{a.get('address')}/{a['prefixlen']}"
            for a in ipr.addr("dump", index=index)
            if not _kernel_made(ipaddress.ip_address(a.get("address")))
        )
        ours = [r for r in ipr.route("dump") if r.get("oif") == index]
        ours = [r for r in ours if r.get("proto") == RTPROT_TRIONSM]
        neighbors = frozenset(
            (n.get("dst"), (n.get("lladdr") or "").lower())
            for n in ipr.neigh("dump", ifindex=index)
            if n["state"] & _NUD_PERMANENT
        )
        rules = [r for r in ipr.rule("dump") if r.get("protocol") == RTPROT_TRIONSM]
    routes = frozenset(_observed_route(r) for r in ours if r.get("table") == _MAIN_TABLE)
    tables = collections.defaultdict(list)
    for route in ours:
        tables[(route["family"], route.get("table"))].append(_observed_route(route))
    policies = []
    for rule in rules:
        table = tables.get((rule["family"], rule.get("table")))
        if table is not None:
            policies.append(_observed_policy(rule, table))
    return _interface(
        here,
        link,
        addresses=addresses,
        routes=routes,
        neighbors=neighbors,
        policies=tuple(sorted(policies, key=repr)),
    )


def _kernel_made(address: Any) -> bool:
    """An IPv6 link-local address: the kernel adds one to every interface itself."""
    return bool(address.version == 6 and address.is_link_local)


def _observed_route(route: Any) -> tuple[str, str | None]:
    default = "0.0.0.0" if route["family"] == socket.AF_INET else "::"
    return _route_key(f"{route.get('dst') or default}/{route['dst_len']}", route.get("gateway"))


def _observed_policy(rule: Any, routes: list[tuple[str, str | None]]) -> tuple[Any, ...]:
    family = 4 if rule["family"] == socket.AF_INET else 6
    source = None
    if rule.get("src") is not None:
        source = str(ipaddress.ip_network(f"{rule.get('src')}/{rule['src_len']}", strict=False))
    return (
        family,
        source,
        rule.get("ip_proto"),
        _port_range(rule.get("dport_range")),
        _port_range(rule.get("sport_range")),
        tuple(sorted(routes, key=str)),
    )


def _port_range(value: Any) -> tuple[int, int] | None:
    """pyroute2 reads a port range back as ``{"start": a, "end": b}``."""
    if value is None:
        return None
    if isinstance(value, str):
        low, _, high = value.partition(":")
        return int(low), int(high or low)
    return int(value["start"]), int(value["end"])


def _remove_exact(handle: Handle, *, targets: tuple[tuple[int, str], ...]) -> int:
    ipr, here = handle.ipr, handle.namespace
    removed = 0
    for index, alias in targets:
        with step(f"looking at interface #{index} in {here}"):
            try:
                (link,) = ipr.link("get", index=index)
            except Exception as exc:
                if getattr(exc, "code", None) == errno.ENODEV:
                    continue  # gone already: its peer took it along, or someone removed it
                raise
        if link.get("ifalias") != alias:
            continue  # not the interface we recorded any more
        remove_policies(ipr, index, here)
        with step(f"deleting interface #{index} ({alias}) in {here}"), unless(errno.ENODEV):
            ipr.link("del", index=index)
            removed += 1
    remove_orphan_rules(ipr, here)
    return removed
