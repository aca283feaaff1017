"""KERNEL (local) wires: a veth pair between a client's and an endpoint's network namespace.

:func:`create_kernel_wire` makes the pair in one netlink call, the client end in the client's
namespace and the peer directly in the endpoint's, both under fresh temporary names (so a taken
name is reported for the side it belongs to, atomically). Then both ends are configured at the
same time, each by a handle in its own namespace: the final name and the alias
``trionsm:<connection id>`` in one message, addresses (IPv6 with ``nodad``), link up, neighbours,
routes and policy routes. We choose both MAC addresses, so each end gets permanent neighbour
entries for the other end's addresses (no ARP or neighbour discovery on a point-to-point wire),
and the call returns only once both ends can carry traffic (see :func:`wait_until_ready`): the
first ping through a new wire is answered. If any step fails, or the caller is cancelled, the
pair is deleted (deleting one end deletes both, and addresses and routes go with it; policy rules
are removed explicitly), so nothing half-made remains. The only window where a crash could leave
an interface without our alias is between the pair's creation and its renaming, two consecutive
netlink calls.

:func:`remove_wire` deletes every interface carrying the connection's alias (and the policy rules
that pointed at them) in the given namespaces; :func:`list_wires` lists them for reconcile.
Creation runs in the ``SETUP`` lane and removal in ``TEARDOWN``, so requests never queue behind a
backlog of teardowns.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterable
from functools import partial
from typing import Any, Protocol

import attrs
import trio

from trionsm.api.connectioncontext import IpContext
from trionsm.errors import NotFound, TrionsmError

from ._handles import Handle, Lane, step
from ._linkconfig import configure_end, delete_index, random_mac, wait_until_ready
from ._netlink import Netlink, current_netlink
from ._netns import Namespace, open_namespace, resolve_namespace
from ._routes import remove_orphan_rules, remove_policies, unless
from ._wireplan import ALIAS_PREFIX, SidePlan, alias_for, plan_wire

__all__ = [
    "KernelWire",
    "WireEnd",
    "WireInterface",
    "check_wire",
    "create_kernel_wire",
    "list_wires",
    "remove_wire",
]

_ROLLBACK_GRACE = 10.0


@attrs.frozen
class WireEnd:
    """One end of a wire: its namespace, interface name and index there."""

    namespace: Namespace
    ifname: str
    index: int


@attrs.frozen
class KernelWire:
    """A wire :func:`create_kernel_wire` made."""

    connection_id: str
    client: WireEnd
    endpoint: WireEnd
    mtu: int

    @property
    def ends(self) -> tuple[WireEnd, ...]:
        """Its interfaces: the client's end, then the endpoint's."""
        return (self.client, self.endpoint)


class HasEnds(Protocol):
    """A wire of any kind, as :func:`check_wire` sees it: a connection id and its interfaces
    (a veth pair's two ends, or the single interface of a vxlan end)."""

    @property
    def connection_id(self) -> str: ...

    @property
    def ends(self) -> tuple[WireEnd, ...]: ...


@attrs.frozen
class WireInterface:
    """An interface carrying a ``trionsm:`` alias, as :func:`list_wires` finds it."""

    connection_id: str
    ifname: str
    index: int
    peer_index: int | None
    up: bool
    kind: str = ""
    """The link kind: ``veth`` or ``vxlan``."""


async def create_kernel_wire(
    connection_id: str,
    client_ns: Namespace | str,
    client_ifname: str,
    endpoint_ns: Namespace | str,
    endpoint_ifname: str,
    *,
    mtu: int = 0,
    ip_context: IpContext | None = None,
    hop: str | None = None,
    netlink: Netlink | None = None,
    owner: str = "",
) -> KernelWire:
    """Create and configure the veth pair of a KERNEL connection; see the module docstring.

    Args:
        connection_id: the connection's id; both ends get the alias ``trionsm:<owner>:<id>``
            (``trionsm:<id>`` without an ``owner``, the forwarder that makes the wire).
        client_ns, endpoint_ns: namespaces as ``inodeURL`` strings or resolved.
        client_ifname: the client end's name (``""`` means ``nsm-1``).
        endpoint_ifname: the endpoint end's name (``""`` derives one from the connection id).
        mtu: both ends' MTU; 0 keeps the kernel's default.
        ip_context: addresses, routes, neighbours and policies (NSM's IPContext).
        hop: named in every error (``forwarder@node-1``).
        netlink: the executor; this run's :func:`current_netlink` by default.

    Cancellation: at any point; what was made is removed (shielded, bounded) before
    ``Cancelled`` propagates.

    Raises:
        InvalidArgument: bad input (name too long, malformed address...), before any change.
        NotFound, PermissionDenied: a namespace is missing or not ours to enter.
        AlreadyExists: a name or an address is taken; nothing remains of the attempt.
        TrionsmError: any other kernel refusal, naming the step.
    """
    plan = plan_wire(
        connection_id,
        client_ifname,
        endpoint_ifname,
        mtu=mtu,
        ip_context=ip_context,
        hop=hop,
        owner=owner,
    )
    netlink = netlink or current_netlink()
    client = await resolve_namespace(client_ns, hop=hop)
    endpoint = await resolve_namespace(endpoint_ns, hop=hop)
    token = secrets.token_hex(6)
    temporary = (f"tc{token}", f"te{token}")
    macs = (random_mac(), random_mac())
    create = partial(
        _create_pair, names=temporary, macs=macs, mtu=plan.mtu, peer_namespace=endpoint, hop=hop
    )
    client_index, endpoint_index = await netlink.run(client, create, hop=hop)
    try:
        failures: list[TrionsmError] = []

        async def configure(
            namespace: Namespace, index: int, side: SidePlan, peer: SidePlan, peer_mac: str
        ) -> None:
            peers = tuple(a.ip for a in peer.addresses)
            job = partial(
                configure_end, index=index, side=side, alias=plan.alias, peer=(peers, peer_mac)
            )
            try:
                await netlink.run(namespace, job, hop=hop)
            except TrionsmError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(configure, client, client_index, plan.client, plan.endpoint, macs[1])
            nursery.start_soon(
                configure, endpoint, endpoint_index, plan.endpoint, plan.client, macs[0]
            )
        if failures:
            raise failures[0]
        ends = ((client, client_index, plan.client), (endpoint, endpoint_index, plan.endpoint))
        await wait_until_ready(netlink, ends, hop=hop)
    except BaseException as exc:
        with trio.move_on_after(_ROLLBACK_GRACE, shield=True):
            try:
                await _rollback(netlink, client, client_index, endpoint, endpoint_index, hop)
            except TrionsmError as failed:  # report the first failure; say what may remain
                exc.add_note(f"rolling back {plan.alias} failed, it may remain: {failed}")
        raise
    return KernelWire(
        connection_id=connection_id,
        client=WireEnd(client, plan.client.ifname, client_index),
        endpoint=WireEnd(endpoint, plan.endpoint.ifname, endpoint_index),
        mtu=plan.mtu,
    )


async def remove_wire(
    connection_id: str,
    namespaces: Iterable[Namespace | str],
    *,
    ifnames: Iterable[str] = (),
    hop: str | None = None,
    netlink: Netlink | None = None,
    owner: str = "",
) -> int:
    """Delete every interface with the alias ``alias_for(connection_id, owner)`` in
    ``namespaces``, and the policy rules pointing at them. Idempotent: a namespace that no
    longer exists holds nothing of ours. Runs the namespaces concurrently in the ``TEARDOWN``
    lane, and takes no lock a creation waits for.

    Args:
        ifnames: the wire's interface names, when known (``KernelWire.client.ifname`` and
            ``.endpoint.ifname``): only those are looked at (and deleted only if they carry the
            alias), which is cheap however many interfaces a namespace has. Without names every
            interface of each namespace is listed (reconcile).

    Returns:
        How many interfaces were deleted (a veth pair seen from both sides counts once or twice,
        depending on which side the kernel removed first).

    Raises:
        InvalidArgument, PermissionDenied: a malformed or forbidden namespace URL.
        TrionsmError: the kernel refused a deletion.
    """
    netlink = netlink or current_netlink()
    names = tuple(ifnames)
    resolved = []
    for namespace in namespaces:
        try:
            resolved.append(await resolve_namespace(namespace, hop=hop))
        except NotFound:
            continue
    removed: list[int] = []

    async def remove(namespace: Namespace) -> None:
        job = partial(_remove, alias=alias_for(connection_id, owner), ifnames=names)
        with contextlib.suppress(NotFound):  # the namespace went, and our interfaces with it
            removed.append(await netlink.run(namespace, job, lane=Lane.TEARDOWN, hop=hop))

    async with trio.open_nursery() as nursery:
        for namespace in {n.key: n for n in resolved}.values():
            nursery.start_soon(remove, namespace)
    return sum(removed)


async def check_wire(
    wire: HasEnds,
    *,
    hop: str | None = None,
    netlink: Netlink | None = None,
    alias: str | None = None,
) -> bool:
    """Whether ``wire`` (a :class:`KernelWire` or a vxlan end) is still whole: each end's
    namespace has an interface of that name and index that carries the wire's alias
    (``alias``, by default ``alias_for(wire.connection_id)``) and is up: a wire made again in
    its place is another wire. A lookup by name in each namespace, concurrently, in the
    ``PROBE`` lane. An end's namespace whose recorded path went stale (its process exited) is
    found again by its inode; one that no path names any more is gone and counts as a missing
    end.

    Raises:
        PermissionDenied, InvalidArgument: a namespace that cannot be entered.
        TrionsmError: the kernel refused the lookup.
    """
    netlink = netlink or current_netlink()
    alias = alias or alias_for(wire.connection_id)
    found: list[bool] = []

    async def probe(end: WireEnd) -> None:
        job = partial(_is_ours, ifname=end.ifname, alias=alias, index=end.index)
        try:
            found.append(await netlink.run(end.namespace, job, lane=Lane.PROBE, hop=hop))
        except NotFound:
            found.append(False)

    async with trio.open_nursery() as nursery:
        for end in wire.ends:
            nursery.start_soon(probe, end)
    return all(found)


async def list_wires(
    namespace: Namespace | str, *, hop: str | None = None, netlink: Netlink | None = None
) -> list[WireInterface]:
    """The interfaces in ``namespace`` that carry a ``trionsm:`` alias (``PROBE`` lane)."""
    netlink = netlink or current_netlink()
    resolved = await resolve_namespace(namespace, hop=hop)
    return await netlink.run(resolved, _list, lane=Lane.PROBE, hop=hop)


# --- jobs: run on a handle thread inside the namespace ---------------------------------------


def _create_pair(
    handle: Handle,
    *,
    names: tuple[str, str],
    macs: tuple[str, str],
    mtu: int,
    peer_namespace: Namespace,
    hop: str | None,
) -> tuple[int, int]:
    ipr, here = handle.ipr, handle.namespace
    extra = {"mtu": mtu} if mtu else {}
    fd = open_namespace(peer_namespace, hop=hop)
    try:
        with step(f"creating a veth pair from {here} to {peer_namespace}"):
            ipr.link(
                "add",
                ifname=names[0],
                kind="veth",
                address=macs[0],
                peer={"ifname": names[1], "net_ns_fd": fd, "address": macs[1], **extra},
                **extra,
            )
    finally:
        os.close(fd)
    try:
        with step(f"reading the new veth {names[0]} in {here}"):
            (link,) = ipr.link("get", ifname=names[0])
        return link["index"], link.get("IFLA_LINK")
    except BaseException:
        _delete_quietly(ipr, names[0])
        raise


def _remove(handle: Handle, *, alias: str, ifnames: tuple[str, ...]) -> int:
    """Delete our interfaces: those of ``ifnames`` that carry ``alias`` (a lookup each), or
    every interface carrying it when no names are given (a full listing: 130 ms at 400 links).
    Takes no lock, so it never holds up a creation in the same namespace."""
    ipr, here = handle.ipr, handle.namespace
    with step(f"looking for {alias} in {here}"):
        if ifnames:
            links = [link for name in ifnames for link in _get_link(ipr, name)]
        else:
            links = list(ipr.link("dump"))
    removed = 0
    for index in [link["index"] for link in links if link.get("ifalias") == alias]:
        remove_policies(ipr, index, here)
        with step(f"deleting interface #{index} ({alias}) in {here}"), unless(errno.ENODEV):
            ipr.link("del", index=index)  # ENODEV: its peer took it along
            removed += 1
    remove_orphan_rules(ipr, here)
    return removed


def _get_link(ipr: Any, ifname: str) -> list[Any]:
    """The link named ``ifname``, or none."""
    try:
        return list(ipr.link("get", ifname=ifname))
    except Exception as exc:
        if getattr(exc, "code", None) == errno.ENODEV:
            return []
        raise


def _is_ours(handle: Handle, *, ifname: str, alias: str, index: int) -> bool:
    with step(f"looking for {ifname} in {handle.namespace}"):
        links = _get_link(handle.ipr, ifname)
    return any(
        link.get("ifalias") == alias and link["index"] == index and link["flags"] & 1
        for link in links
    )


def _list(handle: Handle) -> list[WireInterface]:
    with step(f"listing interfaces in {handle.namespace}"):
        links = handle.ipr.link("dump")
    return [
        WireInterface(
            connection_id=alias.removeprefix(ALIAS_PREFIX),
            ifname=link.get("ifname"),
            index=link["index"],
            peer_index=link.get("IFLA_LINK"),
            up=bool(link["flags"] & 1),
            kind=link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "",
        )
        for link in links
        if (alias := link.get("ifalias") or "").startswith(ALIAS_PREFIX)
    ]


def _delete_quietly(ipr: Any, ifname: str) -> None:
    with contextlib.suppress(Exception):  # best effort on a path that is already failing
        ipr.link("del", ifname=ifname)


async def _rollback(
    netlink: Netlink,
    client: Namespace,
    client_index: int,
    endpoint: Namespace,
    endpoint_index: int,
    hop: str | None,
) -> None:
    """Delete the pair (either end takes the other along), then any rule left pointing at it."""
    try:
        await netlink.run(client, partial(delete_index, index=client_index), hop=hop)
    except TrionsmError:
        await netlink.run(endpoint, partial(delete_index, index=endpoint_index), hop=hop)
    await netlink.run(client, _sweep_rules, hop=hop)


def _sweep_rules(handle: Handle) -> None:
    remove_orphan_rules(handle.ipr, handle.namespace)
